"""DAPO's dynamic sampling (arXiv 2503.14476, section 3.2): fill each step with groups that teach something.

A group whose completions all got the same reward has every advantage 0,
so it adds no policy gradient and only dilutes the loss's normalisation.
Such groups are dropped and further prompts are drawn, sampled and scored,
a whole step's worth per round, until the step holds ``target`` informative
groups. After ``max_rounds`` extra rounds a step still short is filled up
with dropped groups, so it always has the configured size (the counts say
how often that happened).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from aharl.grpo.advantages import informative_groups
from aharl.types import ScoredGroup


def fill_with_informative_groups(
    first: Sequence[ScoredGroup],
    resample: Callable[[], Sequence[ScoredGroup]],
    *,
    target: int,
    group_size: int,
    max_rounds: int,
) -> tuple[list[ScoredGroup], dict[str, float]]:
    """The ``target`` groups to train on, and the counts ``dynamic_sampling/*``.

    ``resample`` draws the next prompts and returns their scored groups; it
    is called at most ``max_rounds`` times. Informative groups keep the order
    they were sampled in; surplus ones from the last round are not used.
    """
    kept: list[ScoredGroup] = []
    dropped: list[ScoredGroup] = []
    batch, rounds, drawn = list(first), 0, len(first)
    while True:
        totals = torch.tensor([r for sg in batch for r in sg.total])  # [len(batch) * group_size]
        for sg, useful in zip(batch, informative_groups(totals, group_size).tolist()):
            (kept if useful else dropped).append(sg)
        if len(kept) >= target or rounds == max_rounds:
            break
        batch = list(resample())
        rounds += 1
        drawn += len(batch)
    filled = max(0, target - len(kept))
    metrics = {
        "dynamic_sampling/rounds": float(rounds),
        "dynamic_sampling/prompts_drawn": float(drawn),
        "dynamic_sampling/dropped_groups": float(len(dropped) - filled),
        "dynamic_sampling/filled_groups": float(filled),
        "dynamic_sampling/surplus_groups": float(max(0, len(kept) - target)),
    }
    return kept[:target] + dropped[:filled], metrics
