"""The objects that travel between stages (and Ray actors), defined once.

config -> :class:`Prompt` -> rollout -> :class:`RolloutGroup` -> rewards ->
:class:`ScoredGroup` -> advantages/loss in the learner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prompt:
    """One question, rendered with the model's chat template."""

    index: int  # position in the prompt set (stable across runs with the same data)
    question: str
    answer: str  # the gold answer the rewards compare against
    text: str  # chat-template output, ends with the generation prompt
    token_ids: list[int]  # [prompt_len]
    # The chat messages ``text`` renders (what TRL-form rewards receive as ``prompts``).
    messages: list[dict[str, str]] = field(default_factory=list)
    # The dataset row's columns, the answer column holding the extracted gold answer:
    # they reach the reward functions as keywords and the samples log.
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass
class Completion:
    """One sampled answer to a prompt."""

    token_ids: list[int]  # [completion_len], up to and including EOS when it was sampled
    text: str  # decoded without special tokens: what the rewards read
    finish_reason: str  # "stop" (EOS) or "length" (hit max_tokens)
    logprobs: list[float]  # [completion_len] sampling log-probs from the rollout engine


@dataclass
class RolloutGroup:
    """The G completions sampled for one prompt."""

    prompt: Prompt
    completions: list[Completion]
    engine: int = 0  # which rollout engine sampled it (per-engine sync checks)


@dataclass
class ScoredGroup:
    """A group with each completion's rewards, per function and weighted total."""

    group: RolloutGroup
    rewards: dict[str, list[float]]  # name -> [G], NaN where a function returned None
    total: list[float]  # [G]
    reward_errors: dict[str, str] = field(default_factory=dict)
    # Columns the reward functions logged with ``log_extra``: name -> [G].
    extras: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class EvalResult:
    """One evaluation mode's outcome: the summary figures and, per question, every answer judged."""

    mode: str  # "greedy" or "sampled"
    summary: dict[str, float]
    # One per question: question, gold, and each answer with its judgement and rewards.
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SyncGap:
    """How far the learner's log-probs are from a rollout engine's on the same tokens: summed per engine.

    Sums, not means, so that learner ranks (each scoring its share of the
    step's tokens) pool exactly by adding; :meth:`metrics` turns them into the
    per-token means that are logged and judged (``sync/logp_diff``).
    """

    diff_sum: dict[int, float] = field(default_factory=dict)  # engine -> sum over tokens of |learner - rollout|
    tokens: dict[int, float] = field(default_factory=dict)  # engine -> tokens compared

    def add(self, engine: int, diff_sum: float, tokens: float) -> None:
        self.diff_sum[engine] = self.diff_sum.get(engine, 0.0) + diff_sum
        self.tokens[engine] = self.tokens.get(engine, 0.0) + tokens

    @staticmethod
    def pooled(gaps: list["SyncGap"]) -> "SyncGap":
        total = SyncGap()
        for gap in gaps:
            for engine in gap.diff_sum:
                total.add(engine, gap.diff_sum[engine], gap.tokens[engine])
        return total

    def worst(self) -> float:
        """The worst engine's mean |learner - rollout| per token (0 when nothing was compared)."""
        return max(self.means().values(), default=0.0)

    def means(self) -> dict[int, float]:
        return {engine: self.diff_sum[engine] / max(self.tokens[engine], 1.0) for engine in sorted(self.diff_sum)}

    def metrics(self, num_engines: int, name: str = "sync/logp_diff") -> dict[str, float]:
        """``name``: the worst engine's mean; with several engines also ``name/engine{e}`` for each."""
        metrics = {name: self.worst()}
        if num_engines > 1:
            metrics.update({f"{name}/engine{engine}": mean for engine, mean in self.means().items()})
        return metrics
