"""A cluster and a reward pool with the real method sets and no actors: the step's order, checked in milliseconds.

Weights are a version number. The learner's goes up by one per update, an
engine takes the learner's at a sync, and every sampled token carries the
log-prob ``-1 - 0.1 * version`` of the weights that drew it. The learner
scores the same token ``-1 - 0.1 * learner_version``, so the update's sync
gap is 0.1 per token for each update the sampler is behind, as a real stale
sampler would show (``sync/logp_diff``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from aharl.learner.learner import UpdateOutcome
from aharl.rewards.calling import RewardStep
from aharl.rollout.engine import SamplingSettings
from aharl.types import Completion, Prompt, RolloutGroup, ScoredGroup, SyncGap

COMPLETION_TOKENS = 3


def logprob_of(version: int) -> float:
    return -1.0 - 0.1 * version


def fake_prompts(count: int, start: int = 0) -> list[Prompt]:
    return [Prompt(i, f"q{i}", str(i), f"q{i}?", [1, 2, 3 + i]) for i in range(start, start + count)]


@dataclass
class FakePending:
    prompts: list[Prompt]
    settings: SamplingSettings
    version: int  # the engine weights the generation runs with


@dataclass
class FakeCluster:
    """:class:`aharl.runtime.cluster.Cluster`'s step-time methods; ``events`` records each call in order."""

    events: list[tuple] = field(default_factory=list)
    learner_version: int = 0
    engine_version: int = 0
    trained_on: list[list] = field(default_factory=list)  # each update's micro-batches

    def _groups(self, prompts: Sequence[Prompt], settings: SamplingSettings, version: int) -> list[RolloutGroup]:
        logp = logprob_of(version)
        return [
            RolloutGroup(
                p,
                [
                    Completion([10 + c] * COMPLETION_TOKENS, f"{p.index}:{c}", "stop", [logp] * COMPLETION_TOKENS)
                    for c in range(settings.n)
                ],
            )
            for p in prompts
        ]

    def generate(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> list[RolloutGroup]:
        self.events.append(("generate", [p.index for p in prompts]))
        return self._groups(prompts, settings, self.engine_version)

    def start_generation(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> FakePending:
        self.events.append(("start_generation", [p.index for p in prompts]))
        return FakePending(list(prompts), settings, self.engine_version)

    def generation_done(self, pending: FakePending) -> bool:
        return True

    def finish_generation(self, pending: FakePending) -> list[RolloutGroup]:
        self.events.append(("finish_generation", [p.index for p in pending.prompts]))
        return self._groups(pending.prompts, pending.settings, pending.version)

    def sleep_rollout(self, keep_weights: bool = True) -> None:
        self.events.append(("sleep", keep_weights))

    def train_step(self, micro_batches: Sequence, num_sequences: int, num_tokens: float) -> UpdateOutcome:
        self.events.append(("train_step", num_sequences))
        self.trained_on.append(list(micro_batches))
        gap = SyncGap()
        learner_logp = logprob_of(self.learner_version)
        for mb in micro_batches:
            mask = mb.completion_mask
            gap.add(0, float(((mb.rollout_logp - learner_logp).abs() * mask).sum()), float(mask.sum()))
        self.learner_version += 1
        return UpdateOutcome({"loss": 0.5, "grad_norm": 1.0, "time/train": 0.0}, gap)

    def sync_weights(self) -> dict[str, float]:
        self.events.append(("sync",))
        self.engine_version = self.learner_version
        return {"time/sync": 0.0, "sync/tensors": 1.0}

    def wake_rollout(self) -> None:
        self.events.append(("wake",))

    def landed_sync_gap(self, groups: Sequence[RolloutGroup], per_engine: int = 2) -> SyncGap:
        self.events.append(("landed_sync_gap",))
        tokens = float(per_engine * COMPLETION_TOKENS)
        return SyncGap({0: 0.1 * abs(self.learner_version - self.engine_version) * tokens}, {0: tokens})

    def names(self) -> list[str]:
        return [event[0] for event in self.events]


class FakeRewards:
    """:class:`aharl.runtime.reward_pool.RewardPool.score_groups`: completion ``c`` scores ``c % 2``.

    Prompts whose index is in ``uniform`` score 1 on every completion (a group
    with nothing to teach, which dynamic sampling drops).
    """

    def __init__(self, events: list[tuple], uniform: set[int] = frozenset()) -> None:
        self.events = events
        self.uniform = set(uniform)

    def score_groups(
        self, groups: Sequence[RolloutGroup], step: RewardStep = RewardStep()
    ) -> tuple[list[ScoredGroup], dict[str, float]]:
        self.events.append(("score", [g.prompt.index for g in groups]))
        scored = []
        for g in groups:
            totals = [1.0 if g.prompt.index in self.uniform else float(c % 2) for c in range(len(g.completions))]
            scored.append(ScoredGroup(g, {"parity": totals}, totals))
        return scored, {"reward_errors/parity": 1.0, "reward_logged/mean_len": float(len(groups))}


def advantages_by_reward(cluster: FakeCluster, update: int = 0) -> list[tuple[float, float]]:
    """(sampled token id parity as the reward, advantage) of every sequence one update trained on."""
    pairs = []
    for mb in cluster.trained_on[update]:
        for ids, adv in zip(mb.completion_ids, mb.advantages):
            pairs.append((float((int(ids[0]) - 10) % 2), float(adv)))
    return pairs


def all_close(values: Sequence[float], target: float) -> bool:
    return bool(torch.allclose(torch.tensor(values, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)))
