"""One GRPO step: sample -> score -> (fill) -> advantages -> micro-batches -> update -> sync -> metrics.

:func:`grpo_step` is the algorithm as it reads in a paper; what differs
between an in-turn and a one-step-off rollout lives in
:mod:`aharl.trainer.schedule`, and the actors behind ``ctx.cluster`` and
``ctx.rewards`` are :class:`aharl.runtime.cluster.Cluster` and
:class:`aharl.runtime.reward_pool.RewardPool` (or the fakes of
``tests/trainer/test_step.py``, which check the order of these calls).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from aharl.config import Config
from aharl.grpo.advantages import advantage_metrics, group_advantages
from aharl.grpo.batch import MicroBatch, build_micro_batches, layout_metrics
from aharl.rewards.calling import RewardStep
from aharl.tracking.metrics import rollout_metrics
from aharl.trainer.dynamic_sampling import fill_with_informative_groups
from aharl.trainer.schedule import InTurnRollout, SyncCadence, SyncReading
from aharl.types import Prompt, RolloutGroup, ScoredGroup


class PhaseTimes:
    """Seconds per phase of a step, added up when a phase runs more than once: ``with times("reward"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - began)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def metrics(self) -> dict[str, float]:
        return {f"time/{phase}": seconds for phase, seconds in self.seconds.items()}


@dataclass
class StepContext:
    """What every step of a run uses: the actors, the schedule, the cadence and the run's constants."""

    config: Config
    cluster: Any  # aharl.runtime.cluster.Cluster, or a fake with its method set
    rewards: Any  # aharl.runtime.reward_pool.RewardPool, or a fake
    rollout: InTurnRollout  # or OneStepOffRollout
    cadence: SyncCadence
    pad_id: int
    total_steps: int  # what reward functions read as trainer_state.max_steps
    draw_prompts: Callable[[], list[Prompt]] | None = None  # more prompts, for DAPO's dynamic sampling


@dataclass
class StepResult:
    metrics: dict[str, float]
    scored: list[ScoredGroup]  # the groups trained on
    sync: SyncReading  # what the sync gate judges


def grpo_step(step: int, prompts: Sequence[Prompt], ctx: StepContext) -> StepResult:
    """One GRPO step on ``prompts`` (the cluster's calls in the order of the module docstring)."""
    config, cluster, g = ctx.config, ctx.cluster, ctx.config.grpo
    times = PhaseTimes()
    rounds: list[dict[str, float]] = []  # the reward pool's counts and logged metrics, per draw
    began = time.perf_counter()

    def score(groups: list[RolloutGroup]) -> list[ScoredGroup]:
        with times("reward"):
            scored, pool_metrics = ctx.rewards.score_groups(
                groups, RewardStep(global_step=step - 1, max_steps=ctx.total_steps)
            )
        rounds.append(pool_metrics)
        return scored

    def sample_and_score(batch: Sequence[Prompt]) -> list[ScoredGroup]:
        with times("generate"):
            groups = cluster.generate(batch, ctx.rollout.settings(step))
        return score(groups)

    with times("generate"):
        groups = ctx.rollout.groups(step, prompts)
    sampled = scored = score(groups)  # the first draw is what the policy does: the reward and length metrics
    resampling: dict[str, float] = {}
    if g.dynamic_sampling_max_rounds and ctx.draw_prompts is not None:
        scored, resampling = fill_with_informative_groups(
            sampled,
            lambda: sample_and_score(ctx.draw_prompts()),
            target=len(sampled),
            group_size=config.rollout.n,
            max_rounds=g.dynamic_sampling_max_rounds,
        )

    totals = torch.tensor([r for sg in scored for r in sg.total])  # [groups * G]
    advantages = group_advantages(
        totals, config.rollout.n, scale_by_std=g.scale_advantages_by_std, stats=g.advantage_stats, eps=g.advantage_eps
    )  # [groups * G]
    micro_batches = micro_batches_of(scored, advantages, config, ctx.pad_id)
    num_tokens = float(sum(mb.completion_mask.sum().item() for mb in micro_batches))

    syncs = ctx.cadence.syncs_after(step)
    ctx.rollout.before_update(step, syncs)
    update = cluster.train_step(micro_batches, num_sequences=len(totals), num_tokens=num_tokens)
    times.add("generate", ctx.rollout.after_update())  # the wait for the next step's groups, if any
    if syncs:
        update.metrics.update(cluster.sync_weights())
    else:
        cluster.wake_rollout()
    gap_metrics, reading = ctx.rollout.sync_metrics(
        step, update.gap, groups, config.rollout.num_engines, ctx.cadence.sampled_fresh(step)
    )

    metrics = {
        **update.metrics,
        **gap_metrics,
        **rollout_metrics(sampled),
        **advantage_metrics(totals, advantages, config.rollout.n),
        **merge_reward_rounds(rounds),
        **resampling,
        **layout_metrics(micro_batches),
        **times.metrics(),
        "time/step": time.perf_counter() - began,
    }
    return StepResult(metrics, scored, reading)


def micro_batches_of(
    scored: Sequence[ScoredGroup], advantages: torch.Tensor, config: Config, pad_id: int
) -> list[MicroBatch]:
    """The step's micro-batches as ``learner.*`` lays them out (padded or packed, a token budget, per rank)."""
    lc = config.learner
    return build_micro_batches(
        scored,
        advantages,
        lc.micro_batch_prompts,
        pad_id,
        packing=lc.packing,
        max_tokens=lc.max_tokens_per_micro_batch,
        world_size=config.placement.learner_gpus,
    )


def merge_reward_rounds(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    """One step's reward-pool metrics over its draws: error counts add up, logged metrics are averaged."""
    merged: dict[str, float] = {}
    for key in dict.fromkeys(k for r in rounds for k in r):
        values = [r[key] for r in rounds if key in r]
        merged[key] = sum(values) / len(values) if key.startswith("reward_logged/") else sum(values)
    return merged
