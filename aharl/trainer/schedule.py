"""When the rollout engines sample and when they take new weights, around each update.

Two rollout schedules share one small interface, so that :func:`aharl.trainer.step.grpo_step`
reads the same in both:

- :class:`InTurnRollout` (``rollout.overlap: off``): a step samples its own
  prompts, the engines sleep through the update (on a shared GPU that frees
  their memory), then take the new weights.
- :class:`OneStepOffRollout` (``rollout.overlap: one_step``): while the
  learner updates on step ``s``'s groups, the engines already sample step
  ``s + 1``'s prompts with the weights of step ``s - 1``; the sync waits for
  that generation to finish. The update's log-prob gap then measures the lag,
  so the sync is judged on a few completions re-scored right after it.

:class:`SyncCadence` says which steps sync (``sync.interval_steps``) and which
steps sampled with the learner's own weights (the ones the sync gate judges).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from aharl.rollout.engine import SamplingSettings
from aharl.types import Prompt, RolloutGroup, SyncGap


@dataclass(frozen=True)
class SyncCadence:
    """The weights go to the engines after every ``interval``-th update (``sync.interval_steps``)."""

    interval: int
    start_step: int  # the run's (or the resumed run's) first step: its engines hold the learner's weights

    def syncs_after(self, step: int) -> bool:
        return step % self.interval == 0

    def sampled_fresh(self, step: int) -> bool:
        """Whether ``step``'s groups were sampled with the learner's weights (the start, or right after a sync)."""
        return step == self.start_step or self.syncs_after(step - 1)


@dataclass
class SyncReading:
    """What the sync gate judges for a step: the gap, and whether the engines were meant to match the learner."""

    logp_diff: float
    expected_exact: bool


class RolloutCluster(Protocol):
    """The part of :class:`aharl.runtime.cluster.Cluster` a schedule drives (a fake one in the step tests)."""

    def generate(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> list[RolloutGroup]: ...
    def start_generation(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> Any: ...
    def generation_done(self, pending: Any) -> bool: ...
    def finish_generation(self, pending: Any) -> list[RolloutGroup]: ...
    def sleep_rollout(self, keep_weights: bool = True) -> None: ...
    def landed_sync_gap(self, groups: Sequence[RolloutGroup], per_engine: int = 2) -> SyncGap: ...


class InTurnRollout:
    """Sample, then update while the engines sleep: the sampler is never behind the learner."""

    def __init__(self, cluster: RolloutCluster, settings: Callable[[int], SamplingSettings]) -> None:
        self.cluster = cluster
        self.settings = settings  # step -> its sampling settings

    def groups(self, step: int, prompts: Sequence[Prompt]) -> list[RolloutGroup]:
        """This step's groups."""
        return self.cluster.generate(prompts, self.settings(step))

    def before_update(self, step: int, syncs: bool) -> None:
        """Put the engines to sleep; their weights may go too when a sync refills them."""
        self.cluster.sleep_rollout(keep_weights=not syncs)

    def after_update(self) -> float:
        """Seconds the driver waited on generation after the update: none here."""
        return 0.0

    def sync_metrics(
        self, step: int, update_gap: SyncGap, groups: Sequence[RolloutGroup], num_engines: int, fresh: bool
    ) -> tuple[dict[str, float], SyncReading]:
        """The update's gap is the sync's: the engines sampled with the weights the learner held before it."""
        return update_gap.metrics(num_engines), SyncReading(update_gap.worst(), fresh)


class OneStepOffRollout(InTurnRollout):
    """Sample the next step's prompts beside this step's update (``next_prompts(step)``; None on the last step)."""

    def __init__(
        self,
        cluster: RolloutCluster,
        settings: Callable[[int], SamplingSettings],
        next_prompts: Callable[[int], Sequence[Prompt] | None],
    ) -> None:
        super().__init__(cluster, settings)
        self.next_prompts = next_prompts
        self.pending: Any = None  # the generation running beside the update, and when it started
        self.started = 0.0
        self.prefetched: list[RolloutGroup] | None = None  # the next step's groups, once collected
        self.prefetched_hidden = 0.0  # the share of their generation's wall time that ran beside the update
        self.hidden: float | None = None  # the same for this step's groups (None: sampled in turn)

    def groups(self, step: int, prompts: Sequence[Prompt]) -> list[RolloutGroup]:
        """The groups sampled during the last update, or (the first step) sampled now."""
        if self.prefetched is None:
            self.hidden = None
            return super().groups(step, prompts)
        groups, self.prefetched, self.hidden = self.prefetched, None, self.prefetched_hidden
        return groups

    def before_update(self, step: int, syncs: bool) -> None:
        """Start the next step's generation with the weights the engines hold; on the last step, sleep as in turn."""
        upcoming = self.next_prompts(step)
        if not upcoming:
            super().before_update(step, syncs)
            return
        self.started = time.perf_counter()
        self.pending = self.cluster.start_generation(upcoming, self.settings(step + 1))

    def after_update(self) -> float:
        """Collect the next step's groups (the engines must be idle before the sync); returns the seconds waited."""
        if self.pending is None:
            return 0.0
        update_done = time.perf_counter()
        finished_during_update = self.cluster.generation_done(self.pending)
        self.prefetched = self.cluster.finish_generation(self.pending)
        self.pending = None
        collected = time.perf_counter()
        ran_beside = (update_done - self.started) / max(collected - self.started, 1e-9)
        self.prefetched_hidden = 1.0 if finished_during_update else ran_beside
        return collected - update_done

    def sync_metrics(
        self, step: int, update_gap: SyncGap, groups: Sequence[RolloutGroup], num_engines: int, fresh: bool
    ) -> tuple[dict[str, float], SyncReading]:
        """The update compared the learner with samples one update old: that is the lag (``rollout/lag_logp_diff``).

        The sync is judged on ``sync/logp_diff`` re-measured right after it
        (``sync.interval_steps`` is 1 with this schedule, so every step syncs).
        """
        landed = self.cluster.landed_sync_gap(groups)
        metrics = {**update_gap.metrics(num_engines, "rollout/lag_logp_diff"), **landed.metrics(num_engines)}
        if self.hidden is not None:
            metrics["rollout/overlap_hidden"] = self.hidden
        return metrics, SyncReading(landed.worst(), True)
