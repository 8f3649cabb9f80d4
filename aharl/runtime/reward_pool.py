"""A pool of Ray actors that score completions in parallel, and survive bad reward code.

Failures never stop training; each costs the rows it touched a reward of 0
and is counted in the step's metrics (``reward/errors``), with one example
message logged per kind of failure:

- a reward function raises or returns garbage: that function scores 0 for the
  chunk, the other functions still count (handled inside the worker);
- a call runs past ``rewards.timeout_s``: the worker is killed (a stuck thread
  cannot be interrupted) and replaced, and the chunk scores 0;
- a worker process dies: it is replaced and its chunk retried once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from aharl import faults
from aharl.config import RewardsConfig
from aharl.rewards.calling import RewardBatch, RewardLogs, RewardStep
from aharl.rewards.registry import resolve_reward_functions
from aharl.rewards.scoring import RewardScores, reward_batch, split_by_group
from aharl.rewards.worker import RewardWorker
from aharl.runtime.logs import logged_actor
from aharl.types import RolloutGroup, ScoredGroup

log = logging.getLogger("aharl.rewards")

REWARD_WORKER_ENV = {"CUDA_VISIBLE_DEVICES": ""}


class RewardPool:
    """Splits a batch over ``num_workers`` actors and merges their scores in order."""

    def __init__(self, config: RewardsConfig, log_dir: Path | None = None) -> None:
        import ray

        self.config = config
        self.names = [name for name, _ in resolve_reward_functions(config.functions)]
        # No GPU for reward code: Ray leaves CUDA_VISIBLE_DEVICES unset for 0-GPU
        # actors, so a user reward that touches CUDA would land on GPU 0 beside vLLM.
        self._actor_class = ray.remote(num_cpus=0, max_restarts=0, runtime_env={"env_vars": REWARD_WORKER_ENV})(
            logged_actor(RewardWorker, log_dir / "rewards.log" if log_dir is not None else None)
        )
        self.workers = [self._spawn() for _ in range(config.num_workers)]
        self._reported: set[str] = set()

    def _spawn(self):
        return self._actor_class.remote(self.config.functions, self.config.weights)

    def score_groups(
        self, groups: Sequence[RolloutGroup], step: RewardStep = RewardStep()
    ) -> tuple[list[ScoredGroup], dict[str, float]]:
        """Rewards for every completion of every group, and the step's error counts and logged metrics."""
        scores, metrics = self.score(reward_batch(groups, step))
        return split_by_group(groups, scores), metrics

    def score(self, batch: RewardBatch) -> tuple[RewardScores, dict[str, float]]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        chunks = _split(len(batch), len(self.workers))
        refs = [w.score.remote(batch.slice(a, b)) for w, (a, b) in zip(self.workers, chunks)]
        faults.reached("driver.score")
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.config.timeout_s)
        ready_set = set(ready)
        results: list[RewardScores] = []
        failures: dict[str, int] = {}
        for i, (ref, (a, b)) in enumerate(zip(refs, chunks)):
            result = None
            if ref not in ready_set:
                self._fail(
                    failures,
                    "timeout",
                    f"reward call on {b - a} completions ran past rewards.timeout_s={self.config.timeout_s}s; worker replaced, rows scored 0",
                )
                ray.kill(self.workers[i], no_restart=True)
                self.workers[i] = self._spawn()
            else:
                try:
                    result = ray.get(ref)
                except RayActorError:
                    self.workers[i] = self._spawn()
                    try:
                        result = ray.get(self.workers[i].score.remote(batch.slice(a, b)), timeout=self.config.timeout_s)
                        self._fail(failures, "worker_restarted", "a reward worker died; replaced and its chunk retried")
                    except (RayActorError, GetTimeoutError):
                        self._fail(
                            failures, "worker_died", "a reward worker died twice on the same chunk; rows scored 0"
                        )
            if result is None:
                result = RewardScores({n: [0.0] * (b - a) for n in self.names}, [0.0] * (b - a), {})
            for name, message in result.errors.items():
                self._fail(failures, f"fn/{name}", message)
            results.append(result)
        merged = RewardScores(
            {n: [v for r in results for v in r.per_function[n]] for n in self.names},
            [v for r in results for v in r.total],
            {k: v for r in results for k, v in r.errors.items()},
            _merged_logs(results, chunks),
        )
        metrics = {f"reward_errors/{kind}": float(count) for kind, count in failures.items()}
        metrics["reward/errors"] = float(sum(failures.values()))
        for name, values in merged.logs.metrics.items():  # log_metric: the mean of what each chunk logged
            metrics[f"reward_logged/{name}"] = sum(values) / len(values)
        return merged, metrics

    def _fail(self, failures: dict[str, int], kind: str, message: str) -> None:
        failures[kind] = failures.get(kind, 0) + 1
        if kind not in self._reported:  # one example per kind, not one per step
            self._reported.add(kind)
            log.warning("reward error (%s): %s", kind, message)

    def shutdown(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker, no_restart=True)


def _merged_logs(results: Sequence[RewardScores], chunks: Sequence[tuple[int, int]]) -> RewardLogs:
    """The chunks' logs as one: metric values pooled, ``log_extra`` columns (one value per row already) joined in row order, None where a chunk logged none."""
    merged = RewardLogs()
    columns = list(dict.fromkeys(column for r in results for column in r.logs.extras))
    for result, (a, b) in zip(results, chunks):
        for name, values in result.logs.metrics.items():
            merged.metrics.setdefault(name, []).extend(values)
        for column in columns:
            merged.extras.setdefault(column, []).extend(result.logs.extras.get(column, [None] * (b - a)))
    return merged


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``range(total)`` as evenly as possible."""
    size, extra = divmod(total, parts)
    ranges, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges
