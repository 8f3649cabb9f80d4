"""One evaluation pass: generate for each question, score, judge, summarise.

The caller supplies ``generate`` and ``score``: in training they are the
rollout actor and the reward pool (the policy as it is now); in ``aharl eval``
a local vLLM or HF engine and in-process reward functions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

from aharl.config import Config
from aharl.errors import DataError
from aharl.evaluation.metrics import judge, summarise
from aharl.rewards.scoring import json_number, reward_batch, score_batch, split_by_group
from aharl.rollout.engine import SamplingSettings
from aharl.types import EvalResult, Prompt, RolloutGroup, ScoredGroup

Generate = Callable[[Sequence[Prompt], SamplingSettings], list[RolloutGroup]]
Score = Callable[[list[RolloutGroup]], list[ScoredGroup]]


@dataclass(frozen=True)
class EvalMode:
    """Greedy (one answer, temperature 0) or sampled (n answers at a temperature)."""

    name: str
    n: int = 1
    temperature: float = 0.0

    def settings(self, max_tokens: int, seed: int) -> SamplingSettings:
        return SamplingSettings(n=self.n, temperature=self.temperature, top_p=1.0, max_tokens=max_tokens, seed=seed)


GREEDY = EvalMode("greedy")


def evaluate(
    generate: Generate, score: Score, prompts: Sequence[Prompt], mode: EvalMode, *, max_tokens: int, seed: int = 0
) -> EvalResult:
    groups = generate(prompts, mode.settings(max_tokens, seed))
    scored = score(groups)
    judgements = []
    records = []
    for sg in scored:
        per_question = []
        answers = []
        for i, completion in enumerate(sg.group.completions):
            j = judge(
                completion.text, sg.group.prompt.answer, len(completion.token_ids), completion.finish_reason == "length"
            )
            per_question.append(j)
            answers.append(
                {
                    "text": completion.text,
                    **dataclasses.asdict(j),
                    "reward": sg.total[i],
                    "rewards": {name: json_number(values[i]) for name, values in sg.rewards.items()},
                }
            )
        judgements.append(per_question)
        prompt = sg.group.prompt
        records.append({"index": prompt.index, "question": prompt.question, "gold": prompt.answer, "answers": answers})
    summary = summarise(judgements)
    totals = [t for sg in scored for t in sg.total]
    summary["reward_total"] = sum(totals) / len(totals)
    return EvalResult(mode.name, summary, records)


def local_scorer(functions, weights: dict[str, float]) -> Score:
    """Score groups in this process (``aharl eval``); a failing reward scores 0 and is reported."""

    def score(groups: list[RolloutGroup]) -> list[ScoredGroup]:
        return split_by_group(groups, score_batch(reward_batch(groups), functions, weights, tolerate_errors=True))

    return score


def holdout_split(prompts: list[Prompt], num_questions: int) -> tuple[list[Prompt], list[Prompt]]:
    """Training prompts and the held-out eval set (the last ``num_questions`` prompts)."""
    if num_questions == 0:
        return prompts, []
    if num_questions >= len(prompts):
        raise DataError(
            f"eval.num_questions={num_questions} would hold out all {len(prompts)} prompts; "
            "lower eval.num_questions or give a separate eval.source"
        )
    return prompts[:-num_questions], prompts[-num_questions:]


def eval_prompt_set(config: Config, tokenizer, prompts: list[Prompt]) -> tuple[list[Prompt], list[Prompt]]:
    """(training prompts, eval prompts) as ``config.eval`` asks: a separate source, or a hold-out."""
    from aharl.data.prompts import build_prompts
    from aharl.data.sources import load_rows

    e = config.eval
    if e.num_questions == 0 or e.source is None:
        return holdout_split(prompts, e.num_questions)
    data = dataclasses.replace(config.data, source=e.source, split=e.split)
    eval_prompts, _ = build_prompts(load_rows(data), tokenizer, data)
    if not eval_prompts:
        raise DataError(
            f"eval.source={e.source} (split {e.split}) has no usable rows; check its columns match data.question_column/answer_column"
        )
    return prompts, eval_prompts[: e.num_questions]
