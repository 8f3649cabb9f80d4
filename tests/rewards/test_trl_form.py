"""Reward functions written for TRL's GRPOTrainer run in aharl unchanged: keywords, chat completions, columns, None, async."""

from __future__ import annotations

import json
import math
import random
import textwrap
from pathlib import Path

import pytest

from aharl.config import DataConfig, RewardsConfig
from aharl.data.prompts import build_prompts
from aharl.data.sources import load_rows
from aharl.errors import ConfigError, RewardError
from aharl.rewards.calling import RewardBatch, RewardStep, convention
from aharl.rewards.registry import check_reward_columns, load_user_function, resolve_reward_functions
from aharl.rewards.scoring import call_reward, reward_batch, score_batch, split_by_group
from aharl.tracking.samples import sample_rows
from aharl.types import Completion, Prompt, RolloutGroup
from tests.helpers.paths import SHARED_GSM8K
from tests.rewards.trl_form_reference import BUILT_IN

TRL_FILE = Path(__file__).with_name("trl_form_reference.py")


def sampled_completion(rng: random.Random, gold: str) -> str:
    """A completion as a model might write one: the format right or broken in one of many ways, the answer right or not."""
    reasoning = rng.choice(["x", "Add 3 and 4.", "First 2*3=6.\nThen 6+1=7.", "", "  spaced  "])
    answer = rng.choice(
        [gold, gold, gold.replace(",", ""), f"{gold}.0", "-3", "1,080", str(rng.randint(0, 999)), "", f"${gold}"]
    )
    layouts = [
        "<reasoning>\n{r}\n</reasoning>\n<answer>\n{a}\n</answer>\n",
        "<reasoning>\n{r}\n</reasoning>\n<answer>\n{a}\n</answer>",
        "<reasoning>{r}</reasoning> <answer>{a}</answer>",
        "<reasoning>\n{r}\n</reasoning>\n<answer>\n{a}\n</answer>\nThe answer is {a}. Hope this helps!",
        "Sure! <reasoning>\n{r}\n</reasoning>\n<answer>\n{a}\n</answer>\n",
        "{a}",
        "The answer is {a}.",
        "<answer>\n{a}\n</answer>\n<answer>\n{a}\n</answer>\n",
        "<reasoning>\n{r}\n</reasoning>\n<reasoning>\n{r}\n</reasoning>\n<answer>{a}</answer>",
        "<reasoning>\n{r}\n</reasoning>\n<answer>\n{a}",
    ]
    return rng.choice(layouts).format(r=reasoning, a=answer)


def test_trl_form_reference_rewards_equal_the_built_ins_bit_for_bit_on_all_gsm8k_rows_through_the_pool(
    ray_local, smollm2_tokenizer
):
    """The acceptance check of TRL compatibility: the recipe's rewards in TRL's form, every training row, real Ray workers."""
    from aharl.runtime.reward_pool import RewardPool

    data = DataConfig(source=str(SHARED_GSM8K / "train.jsonl"), max_prompt_tokens=1024)
    prompts, report = build_prompts(load_rows(data), smollm2_tokenizer, data)
    assert report.rows == 7473 and len(prompts) == 7473
    rng = random.Random(0)
    groups = [
        RolloutGroup(p, [Completion([1, 2], sampled_completion(rng, p.answer), "stop", [-1.0, -1.0]) for _ in range(2)])
        for p in prompts
    ]
    trl_entries = [f"{TRL_FILE}:{name}" for name in BUILT_IN]
    pool = RewardPool(RewardsConfig(functions=["reference", *trl_entries], num_workers=2, timeout_s=120))
    try:
        scored, metrics = pool.score_groups(groups, RewardStep(global_step=3, max_steps=10))
    finally:
        pool.shutdown()
    assert metrics["reward/errors"] == 0.0
    for trl_name, built_in in BUILT_IN.items():
        ours = [v for sg in scored for v in sg.rewards[built_in]]
        theirs = [v for sg in scored for v in sg.rewards[f"{TRL_FILE}:{trl_name}"]]
        assert len(ours) == 2 * 7473
        assert [v.hex() for v in theirs] == [v.hex() for v in ours], trl_name
        assert len(set(ours)) > 1, f"{built_in} takes one value on every completion: the comparison would prove nothing"
    correct = sum(v > 0 for sg in scored for v in sg.rewards["correctness"])
    assert 2000 < correct < 12000  # both outcomes are well represented


def make_prompt(index: int, gold: str, **columns) -> Prompt:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"q{index}"}]
    return Prompt(
        index, f"q{index}", gold, f"t{index}", [5, 6], messages, {"question": f"q{index}", "answer": gold, **columns}
    )


def test_keyword_form_receives_what_trl_passes():
    seen = {}

    def reward(prompts, completions, completion_ids, trainer_state, answer, unit, **kwargs):
        seen.update(
            prompts=prompts,
            completions=completions,
            ids=completion_ids,
            step=trainer_state,
            answer=answer,
            unit=unit,
            rest=sorted(kwargs),
        )
        return [1.0] * len(completions)

    groups = [
        RolloutGroup(
            make_prompt(0, "7", unit="cm"),
            [Completion([8, 9], "a", "stop", [0.0, 0.0]), Completion([10], "b", "length", [0.0])],
        )
    ]
    batch = reward_batch(groups, RewardStep(global_step=4, max_steps=9))
    assert call_reward("r", reward, batch) == [1.0, 1.0]
    assert seen["prompts"] == [groups[0].prompt.messages] * 2
    assert seen["completions"] == [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]]
    assert seen["ids"] == [[8, 9], [10]]
    assert (seen["step"].global_step, seen["step"].max_steps) == (4, 9)
    assert seen["answer"] == ["7", "7"] and seen["unit"] == ["cm", "cm"]
    assert seen["rest"] == ["log_extra", "log_metric", "question"]


def test_text_data_passes_plain_string_completions_and_a_function_without_kwargs_gets_only_its_names():
    def reward(completions, answer):  # no **kwargs: TRL's other keywords are not forced on it
        return [float(c == a) for c, a in zip(completions, answer)]

    batch = RewardBatch(["7", "8"], ["7", "7"], ["p", "p"], [[], []], {"answer": ["7", "7"]}, chat=False)
    assert convention(reward) == "lists"  # (completions, answer) binds as aharl's two lists: same values either way
    assert call_reward("r", reward, batch) == [1.0, 0.0]

    def keyword_only(*, completions, answer):
        return [float(c == a) for c, a in zip(completions, answer)]

    assert convention(keyword_only) == "keywords"
    assert call_reward("k", keyword_only, batch) == [1.0, 0.0]


@pytest.mark.parametrize(
    "source, form",
    [
        ("def f(completions, answers): return []", "lists"),
        ("def f(c, a): return []", "lists"),
        ("def f(completions, **kwargs): return []", "keywords"),
        ("def f(prompts, completions, answer): return []", "keywords"),
        ("def f(completions, trainer_state): return []", "keywords"),
        ("def f(completions): return []", "keywords"),
        ("async def f(completions, **kwargs): return []", "keywords"),
    ],
)
def test_the_form_is_read_from_the_signature(source, form):
    namespace: dict = {}
    exec(source, namespace)
    assert convention(namespace["f"]) == form


def test_none_rows_are_left_out_of_the_total_and_the_mean_and_logged_as_null():
    def half(completions, **kwargs):
        return [None if i % 2 else 1.0 for i in range(len(completions))]

    def base(completions, answers):
        return [0.5] * len(completions)

    groups = [RolloutGroup(make_prompt(0, "7"), [Completion([8], t, "stop", [0.0]) for t in "abcd"])]
    scores = score_batch(reward_batch(groups), [("half", half), ("base", base)], {"half": 2.0})
    assert scores.total == [2.5, 0.5, 2.5, 0.5]
    assert math.isnan(scores.per_function["half"][1])
    scored = split_by_group(groups, scores)
    from aharl.tracking.metrics import rollout_metrics

    assert rollout_metrics(scored)["reward/half"] == 1.0  # the mean over the rows it applied to
    rows = sample_rows(scored, 1)
    assert [r["rewards"]["half"] for r in rows] == [1.0, None, 1.0, None]
    json.dumps(rows, allow_nan=False)  # valid JSON: no NaN reaches the samples log


def test_async_functions_run_and_nan_is_still_refused():
    async def slow_ok(completions, **kwargs):
        return [0.25] * len(completions)

    batch = RewardBatch.of_texts(["a", "b"], ["1", "2"])
    assert call_reward("a", slow_ok, batch) == [0.25, 0.25]

    def nan(completions, **kwargs):
        return [float("nan")] * len(completions)

    with pytest.raises(RewardError, match="NaN or infinity"):
        call_reward("n", nan, batch)


def test_logged_metrics_and_extra_columns_reach_the_step_metrics_and_samples(ray_local, tmp_path):
    from aharl.runtime.reward_pool import RewardPool

    code = tmp_path / "logging_reward.py"
    code.write_text(
        textwrap.dedent(
            """
        def logs(completions, log_metric, log_extra, **kwargs):
            log_metric("batch_size", len(completions))
            log_extra("length", [len(c[0]["content"]) for c in completions])
            return [1.0] * len(completions)
        """
        )
    )
    groups = [
        RolloutGroup(make_prompt(g, "7"), [Completion([8], "x" * (g + i), "stop", [0.0]) for i in range(2)])
        for g in range(3)
    ]
    pool = RewardPool(RewardsConfig(functions=[f"{code}:logs"], num_workers=2))
    try:
        scored, metrics = pool.score_groups(groups)
    finally:
        pool.shutdown()
    assert metrics["reward_logged/batch_size"] == 3.0  # chunks of 4 and 2 completions, averaged
    assert [r["logged"]["length"] for r in sample_rows(scored, 3)] == [0, 1, 1, 2, 2, 3]


def test_a_missing_column_is_refused_before_training_and_named_at_scoring(tmp_path):
    code = tmp_path / "needs_unit.py"
    code.write_text("def f(completions, unit, **kwargs):\n    return [1.0] * len(completions)\n")
    entry = f"{code}:f"
    with pytest.raises(ConfigError, match="needs the data column 'unit'.*it has: question, answer"):
        check_reward_columns([entry], ["question", "answer"], "rows.jsonl")
    check_reward_columns([entry], ["question", "answer", "unit"], "rows.jsonl")
    with pytest.raises(RewardError, match="needs the data column 'unit'"):
        call_reward(entry, load_user_function(entry), RewardBatch.of_texts(["a"], ["1"]))


def test_every_data_column_travels_with_the_prompt_and_the_answer_column_holds_the_gold(tmp_path, smollm2_tokenizer):
    rows = [{"question": "What is 2+2?", "answer": "2+2=4 #### 4", "unit": "apples", "id": 7, "tags": ["easy"]}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(source=str(path))
    prompts, _ = build_prompts(load_rows(data), smollm2_tokenizer, data)
    assert prompts[0].columns == {
        "question": "What is 2+2?",
        "answer": "4",
        "unit": "apples",
        "id": 7,
        "tags": ["easy"],
    }
    assert prompts[0].messages[-1] == {"role": "user", "content": "What is 2+2?"}
    group = RolloutGroup(prompts[0], [Completion([1], "4", "stop", [0.0])])
    scored = split_by_group([group], score_batch(reward_batch([group]), resolve_reward_functions(["correctness"])))
    assert sample_rows(scored, 1)[0]["columns"]["unit"] == "apples"


def test_cli_scores_trl_form_functions_with_prompts_and_columns(tmp_path, capsys):
    from aharl.launch.main import main

    code = tmp_path / "unit_reward.py"
    code.write_text(
        "def unit_ok(prompts, completions, unit, **kwargs):\n    return [1.0 if u in c[0]['content'] else None for c, u in zip(completions, unit)]\n"
    )
    rows = tmp_path / "rows.jsonl"
    prompt = [{"role": "user", "content": "how far?"}]
    rows.write_text(
        json.dumps({"completion": "5 km", "answer": "5", "unit": "km", "prompt": prompt})
        + "\n"
        + json.dumps({"completion": "5", "answer": "5", "unit": "km", "prompt": prompt})
        + "\n"
    )
    assert (
        main(["rewards", "score", "--input", str(rows), "--rewards", f"{code}:unit_ok,{TRL_FILE}:int_reward_func"]) == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line[f"{code}:unit_ok"] for line in lines] == [1.0, None]
    assert [line["total"] for line in lines] == [1.0, 0.5]


def test_an_empty_chunk_calls_no_function():
    """A pool with more workers than rows sends empty chunks; TRL-form code such as ``prompts[0]`` must not see them."""

    def reads_first_prompt(prompts, completions, **kwargs):
        return [float(len(prompts[0]))] * len(completions)

    scores = score_batch(RewardBatch.of_texts([], []), [("first", reads_first_prompt)])
    assert scores.per_function == {"first": []} and scores.total == [] and not scores.errors
