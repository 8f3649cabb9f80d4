"""The rollout benchmark feeds every backend the same requests and counts tokens honestly."""

from __future__ import annotations

import pytest

from aharl.bench.rollout import (
    RunResult,
    Shape,
    count_completion_tokens,
    plan_requests,
    ratios,
    run_requests,
    summarise,
)
from aharl.bench.step import _trl_reward, summarise_steps
from aharl.rewards.reference import correctness
from aharl.rollout.engine import SamplingSettings
from aharl.types import Completion, Prompt, RolloutGroup

EOS = 2
PROMPTS = [Prompt(i, f"q{i}", str(i), f"t{i}", [10 + i, 11 + i]) for i in range(6)]


class RecordingEngine:
    """Returns fixed completions and remembers exactly what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[int]], SamplingSettings]] = []

    def generate(self, prompts, settings):
        self.calls.append(([p.token_ids for p in prompts], settings))
        return [RolloutGroup(p, [Completion([5, 6, EOS], "x", "stop", [0.0] * 3)] * settings.n) for p in prompts]


def test_every_backend_gets_identical_requests():
    requests = plan_requests(PROMPTS, [Shape(1, 4), Shape(4, 2)], max_tokens=16, repeats=2, seed=3, ignore_eos=False)
    vllm_like, hf_like = RecordingEngine(), RecordingEngine()
    run_requests("vllm", vllm_like, requests, EOS)
    run_requests("hf", hf_like, requests, EOS)
    assert vllm_like.calls == hf_like.calls
    assert len(vllm_like.calls) == 1 + 2 + 2  # warm-up, then repeats per shape
    settings = [s for _, s in vllm_like.calls]
    assert all((s.temperature, s.top_p, s.max_tokens) == (1.0, 1.0, 16) for s in settings)
    assert [len(ids) for ids, _ in vllm_like.calls[1:]] == [1, 1, 4, 4]
    assert len({s.seed for s in settings[1:3]}) == 2  # repeats are not replays


def test_warm_up_is_run_but_not_reported():
    requests = plan_requests(PROMPTS, [Shape(2, 3)], max_tokens=8, repeats=2, seed=0, ignore_eos=False)
    results = run_requests("hf", RecordingEngine(), requests, EOS)
    assert [r.repeat for r in results] == [0, 1]
    assert all(r.sequences == 6 and r.completion_tokens == 18 for r in results)


def test_token_count_stops_at_eos_and_excludes_padding():
    prompt = PROMPTS[0]
    groups = [
        RolloutGroup(
            prompt,
            [
                Completion([7, 8, EOS, EOS, EOS], "a", "stop", []),  # HF pads with EOS after the first one
                Completion([7, 8, 9, 9], "b", "length", []),  # no EOS: all generated tokens count
                Completion([EOS], "", "stop", []),
            ],
        )
    ]
    assert count_completion_tokens(groups, EOS) == 3 + 4 + 1
    assert count_completion_tokens(groups, EOS, ignore_eos=True) == 5 + 4 + 1


def test_summary_medians_and_ratio():
    def run(backend, shape, tps):
        return RunResult(backend, shape, 0, 1.0, 8, int(tps), tps, 8.0, 0.5)

    rows = summarise(
        [
            run("vllm", "1x8", 100),
            run("vllm", "1x8", 300),
            run("vllm", "1x8", 200),
            run("hf", "1x8", 50),
            run("hf", "1x8", 50),
        ]
    )
    vllm = next(r for r in rows if r["backend"] == "vllm")
    assert (vllm["tokens_per_s"], vllm["tokens_per_s_min"], vllm["tokens_per_s_max"]) == (200, 100, 300)
    assert ratios(rows) == {"1x8": pytest.approx(4.0)}


def test_step_summary_leaves_out_the_warm_up_step():
    steps = [{"step": 10.0, "generate": 5.0}, {"step": 4.0, "generate": 2.0}, {"step": 6.0, "generate": 3.0}]
    assert summarise_steps(steps) == {"step": 5.0, "generate": 2.5}


def test_trl_reward_adapter_passes_completion_text_and_gold():
    fn = _trl_reward("correctness", correctness)
    completions = [
        [{"role": "assistant", "content": "<answer>\n5\n</answer>"}],
        [{"role": "assistant", "content": "6"}],
    ]
    assert fn(prompts=None, completions=completions, answer=["5", "5"]) == [2.0, 0.0]
    assert fn.__name__ == "correctness"


@pytest.mark.parametrize("text", ["1x", "x8", "4*16", "0x8", "ax2"])
def test_bad_shape_is_one_line(text):
    from aharl.errors import AharlError

    with pytest.raises(AharlError, match="PROMPTSxN"):
        Shape.parse(text)


def test_step_table_compares_trainers_per_1000_completion_tokens():
    """A trainer that samples half as many tokens must not look twice as fast: the equal-work column says so."""
    from aharl.bench.step import markdown, per_1k_completion_tokens

    phases = {"generate": 1.0, "reward": 0.0, "reference": 0.0, "train": 3.0, "sync": 0.0}
    aharl = {"step": 10.0, "completion_tokens": 2000.0, "prompt_tokens": 800.0, "completion_length": 40.0, **phases}
    trl = {"step": 12.0, "completion_tokens": 1000.0, "prompt_tokens": 800.0, "completion_length": 20.0}
    assert per_1k_completion_tokens(aharl) == 5.0 and per_1k_completion_tokens(trl) == 12.0
    table = markdown(aharl, trl, steps=3)
    assert "**1.20x** per step" in table and "**2.40x** per 1,000 completion tokens" in table
    assert "| TRL GRPOTrainer | 12.0 | 12.00 | 800 | 1000 (20.0) |" in table
    with_vllm = markdown(aharl, trl, 3, trl_vllm={**trl, "step": 6.0}, not_run={})
    assert "TRL GRPOTrainer + vLLM colocate / aharl: **0.60x** per step" in with_vllm
    failed = markdown(aharl, trl, 3, not_run={"TRL GRPOTrainer + vLLM colocate": "RuntimeError: no CUDA"})
    assert failed.rstrip().endswith("TRL GRPOTrainer + vLLM colocate: not run here (RuntimeError: no CUDA)")


def test_layout_bench_times_each_layout_on_the_positions_it_computes(tmp_path, smollm2_tokenizer):
    """The layouts' position counts are those of their definitions, so the table compares what it says it compares."""
    from transformers import AutoModelForCausalLM

    from aharl.bench.layout import LAYOUTS, run_layouts, synthetic_group
    from tests.helpers.toy import build_tiny_model

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "m", smollm2_tokenizer))
    group = synthetic_group(prompt_tokens=30, completions=6, max_tokens=40)
    lengths = [len(c.token_ids) for c in group.group.completions]
    assert lengths.count(40) == 3 and all(24 <= n <= 40 for n in lengths)
    timings = {t.label: t for t in run_layouts(model, group, chunk_rows=64)}
    assert list(timings) == [label for label, _, _ in LAYOUTS]
    assert timings["padded, one group"].positions == 6 * (30 + 40)
    assert timings["shared_prefix, one group per row"].positions == 30 + sum(lengths)
    assert all(t.forward_backward_s > 0 and t.forward_s > 0 for t in timings.values())
