"""The body of a reward worker: scores chunks of completions in its own process.

:class:`aharl.runtime.reward_pool.RewardPool` runs several as Ray actors and
replaces one that dies or hangs; nothing here knows of Ray.
"""

from __future__ import annotations

from aharl import faults
from aharl.rewards.calling import RewardBatch
from aharl.rewards.registry import resolve_reward_functions
from aharl.rewards.scoring import RewardScores, score_batch


class RewardWorker:
    """One scoring process (a Ray actor); resolves the reward functions once."""

    def __init__(self, functions: list[str], weights: dict[str, float]) -> None:
        self.functions = resolve_reward_functions(functions)
        self.weights = weights

    def score(self, batch: RewardBatch) -> RewardScores:
        faults.reached("reward.score")
        return score_batch(batch, self.functions, self.weights, tolerate_errors=True)
