"""The GRPO step's order and bookkeeping against a fake cluster (tests/helpers/fake_cluster.py): milliseconds, no actors.

The end-to-end runs prove the same step with Ray, vLLM and DeepSpeed; these
pin down what those runs cannot show cheaply: which call comes when in each
rollout schedule, the sync cadence, what the sync gate is given, dynamic
sampling's rounds and how the metrics of several draws merge.
"""

from __future__ import annotations

import pytest

from aharl.config import load_config
from aharl.rollout.engine import SamplingSettings
from aharl.trainer.schedule import InTurnRollout, OneStepOffRollout, SyncCadence
from aharl.trainer.step import StepContext, grpo_step, merge_reward_rounds
from aharl.trainer.sync_gate import SyncGate, SyncMismatchError
from tests.helpers.fake_cluster import FakeCluster, FakeRewards, advantages_by_reward, fake_prompts

PROMPTS = 4
SMALL = [
    f"learner.prompts_per_step={PROMPTS}",
    "learner.micro_batch_prompts=2",
    "rollout.n=4",
    "learner.packing=padded",
]
OVERLAP = ["rollout.overlap=one_step", "placement.layout=separate", "grpo.rollout_correction=tis"]


def context(*overrides: str, steps: int = 4, uniform: frozenset = frozenset(), start_step: int = 1):
    """A step context on fakes; the sampler hands out prompts 0-3, 4-7, ... in turn."""
    config = load_config("quickstart", [*SMALL, *overrides])
    cluster = FakeCluster()
    drawn = {"next": 0}

    def draw() -> list:
        batch = fake_prompts(PROMPTS, start=drawn["next"])
        drawn["next"] += PROMPTS
        return batch

    def settings(step: int) -> SamplingSettings:
        return SamplingSettings.from_config(config.rollout, step)

    if config.rollout.overlap == "one_step":
        rollout = OneStepOffRollout(
            cluster, settings, lambda step: fake_prompts(PROMPTS, start=drawn["next"]) if step < steps else None
        )
    else:
        rollout = InTurnRollout(cluster, settings)
    ctx = StepContext(
        config,
        cluster,
        FakeRewards(cluster.events, uniform),
        rollout,
        SyncCadence(config.sync.interval_steps, start_step),
        pad_id=0,
        total_steps=steps,
        draw_prompts=draw,
    )
    return ctx, cluster, draw


def run_steps(ctx, draw, steps: int, start: int = 1) -> list:
    return [grpo_step(step, draw(), ctx) for step in range(start, start + steps)]


def test_in_turn_the_engines_sleep_through_the_update_then_take_the_weights():
    ctx, cluster, draw = context()
    result = grpo_step(1, draw(), ctx)
    assert cluster.names() == ["generate", "score", "sleep", "train_step", "sync"]
    assert cluster.events[2] == ("sleep", False)  # the sync refills the weights: they need not be kept
    assert result.metrics["sync/logp_diff"] == 0.0 and result.sync.logp_diff == 0.0 and result.sync.expected_exact
    assert result.metrics["time/sync"] == 0.0 and "rollout/lag_logp_diff" not in result.metrics
    # The next step samples with the synced weights: still no gap.
    assert grpo_step(2, draw(), ctx).sync.logp_diff == 0.0


def test_the_update_trains_toward_the_higher_reward():
    ctx, cluster, draw = context()
    grpo_step(1, draw(), ctx)
    pairs = advantages_by_reward(cluster)
    assert len(pairs) == PROMPTS * ctx.config.rollout.n
    assert all((adv > 0) == (reward > 0) for reward, adv in pairs), pairs


def test_one_step_off_samples_the_next_prompts_beside_the_update_and_judges_the_landed_sync():
    ctx, cluster, draw = context(*OVERLAP, steps=3)
    results = run_steps(ctx, draw, 3)
    steps, current = [], []
    for name in cluster.names():
        current.append(name)
        if name == "landed_sync_gap":
            steps.append(current)
            current = []
    assert steps == [
        ["generate", "score", "start_generation", "train_step", "finish_generation", "sync", "landed_sync_gap"],
        ["score", "start_generation", "train_step", "finish_generation", "sync", "landed_sync_gap"],
        ["score", "sleep", "train_step", "sync", "landed_sync_gap"],  # the last step has no next prompts
    ]
    # The next step's prompts are the ones the sampler hands out next.
    started = [e for e in cluster.events if e[0] == "start_generation"]
    assert started[0][1] == [4, 5, 6, 7] and started[1][1] == [8, 9, 10, 11]
    # Steps 2 and 3 trained on samples one update old: that is the lag, not the sync.
    assert results[0].metrics["rollout/lag_logp_diff"] == 0.0
    assert [r.metrics["rollout/lag_logp_diff"] for r in results[1:]] == pytest.approx([0.1, 0.1])
    # The gate reads the landed sync, which is exact; the lag would have stopped a gated run.
    assert all(r.sync.logp_diff == 0.0 and r.metrics["sync/logp_diff"] == 0.0 for r in results)
    assert "rollout/overlap_hidden" not in results[0].metrics
    assert [r.metrics["rollout/overlap_hidden"] for r in results[1:]] == [1.0, 1.0]


def test_sync_every_second_step_wakes_in_between_and_the_gate_judges_only_fresh_samples():
    ctx, cluster, draw = context("sync.interval_steps=2", "sync.logp_diff_warn=0.05", "sync.mismatch_steps=1")
    gate = SyncGate(ctx.config.sync)
    results = run_steps(ctx, draw, 4)
    after_update = [e for e in cluster.events if e[0] in ("sleep", "sync", "wake")]
    assert after_update == [
        ("sleep", True), ("wake",),
        ("sleep", False), ("sync",),
        ("sleep", True), ("wake",),
        ("sleep", False), ("sync",),
    ]  # fmt: skip
    # Steps 2 and 4 sampled with weights one update old (no sync after steps 1 and 3).
    assert [r.sync.logp_diff for r in results] == pytest.approx([0.0, 0.1, 0.0, 0.1])
    assert [r.sync.expected_exact for r in results] == [True, False, True, False]
    for step, r in enumerate(results, start=1):
        gate.check(step, r.sync.logp_diff, after_sync=r.sync.expected_exact)  # by design: no stop
    # A resumed run starts with the engines synced to the checkpoint: its first step is judged.
    assert SyncCadence(2, start_step=6).sampled_fresh(6) and not SyncCadence(2, start_step=5).sampled_fresh(6)


def test_the_gate_stops_a_run_whose_syncs_do_not_land():
    ctx, cluster, draw = context("sync.logp_diff_warn=0.05", "sync.mismatch_steps=2")
    cluster.sync_weights = lambda: cluster.events.append(("sync",)) or {"time/sync": 0.0}  # weights never arrive
    gate = SyncGate(ctx.config.sync)
    with pytest.raises(SyncMismatchError, match="weight sync is not landing"):
        for step, r in enumerate(run_steps(ctx, draw, 4), start=1):
            gate.check(step, r.sync.logp_diff, after_sync=r.sync.expected_exact)


def test_dynamic_sampling_draws_more_prompts_until_the_step_is_informative():
    # Prompts 0, 1 and 4-7 score the same on every completion; 2, 3 and 8+ teach something.
    ctx, cluster, draw = context("grpo.dynamic_sampling_max_rounds=3", uniform=frozenset({0, 1, 4, 5, 6, 7}))
    result = grpo_step(1, draw(), ctx)
    assert [e for e in cluster.events if e[0] == "generate"] == [
        ("generate", [0, 1, 2, 3]),
        ("generate", [4, 5, 6, 7]),
        ("generate", [8, 9, 10, 11]),
    ]
    assert [sg.group.prompt.index for sg in result.scored] == [2, 3, 8, 9]
    m = result.metrics
    assert (m["dynamic_sampling/rounds"], m["dynamic_sampling/prompts_drawn"]) == (2.0, 12.0)
    assert (m["dynamic_sampling/dropped_groups"], m["dynamic_sampling/surplus_groups"]) == (6.0, 2.0)
    assert cluster.events[-3:] == [("sleep", False), ("train_step", PROMPTS * 4), ("sync",)]
    # The reward pool's counts add up over the three draws, its logged metrics are averaged.
    assert m["reward_errors/parity"] == 3.0 and m["reward_logged/mean_len"] == 4.0


def test_reward_rounds_merge_counts_by_sum_and_logged_metrics_by_mean():
    merged = merge_reward_rounds([{"reward_errors/a": 1.0, "reward_logged/x": 2.0}, {"reward_logged/x": 4.0}])
    assert merged == {"reward_errors/a": 1.0, "reward_logged/x": 3.0}


def test_a_step_reports_its_phases_and_the_update_metrics():
    ctx, cluster, draw = context()
    m = grpo_step(1, draw(), ctx).metrics
    assert {"time/generate", "time/reward", "time/step", "time/sync", "time/train"} <= set(m)
    assert m["time/step"] >= m["time/generate"] + m["time/reward"]
    assert (m["loss"], m["grad_norm"]) == (0.5, 1.0)
