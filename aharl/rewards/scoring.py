"""Turn completions into rewards: call each function, check what it returned, weight and sum."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from aharl.errors import RewardError
from aharl.rewards.reference import RewardFn
from aharl.types import RolloutGroup, ScoredGroup


@dataclass
class RewardScores:
    """Rewards for a batch of completions: one list per function and the weighted total."""

    per_function: dict[str, list[float]]
    total: list[float]
    # Function name -> error message, for functions that failed and scored 0.
    errors: dict[str, str] = field(default_factory=dict)


def call_reward(name: str, fn: RewardFn, completions: Sequence[str], answers: Sequence[str]) -> list[float]:
    """Run one reward function and check it returned one finite number per completion."""
    try:
        values = list(fn(list(completions), list(answers)))
    except Exception as exc:  # user code may raise anything
        raise RewardError(f"reward function `{name}` raised {type(exc).__name__}: {exc}") from exc
    if len(values) != len(completions):
        raise RewardError(f"reward function `{name}` returned {len(values)} values for {len(completions)} completions; return one float per completion")
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise RewardError(f"reward function `{name}` returned a non-number ({values[:3]!r}...); return floats") from None
    if not all(math.isfinite(v) for v in floats):
        raise RewardError(f"reward function `{name}` returned NaN or infinity; return finite floats")
    return floats


def score_completions(
    completions: Sequence[str],
    answers: Sequence[str],
    functions: Sequence[tuple[str, RewardFn]],
    weights: Mapping[str, float] | None = None,
    *,
    tolerate_errors: bool = False,
) -> RewardScores:
    """Score a batch with every function; the total is the weighted sum.

    With ``tolerate_errors`` a failing function scores 0 for the batch and its
    message is kept in ``errors`` (the training run goes on); without it, the
    first failure raises :class:`RewardError`.
    """
    weights = weights or {}
    per_function: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    for name, fn in functions:
        try:
            per_function[name] = call_reward(name, fn, completions, answers)
        except RewardError as exc:
            if not tolerate_errors:
                raise
            errors[name] = str(exc)
            per_function[name] = [0.0] * len(completions)
    total = [
        sum(weights.get(name, 1.0) * values[i] for name, values in per_function.items())
        for i in range(len(completions))
    ]
    return RewardScores(per_function, total, errors)


def completions_and_answers(groups: Sequence[RolloutGroup]) -> tuple[list[str], list[str]]:
    """Every completion of every group, flat, with its prompt's gold answer beside it."""
    completions = [c.text for g in groups for c in g.completions]
    answers = [g.prompt.answer for g in groups for _ in g.completions]
    return completions, answers


def split_by_group(groups: Sequence[RolloutGroup], scores: RewardScores) -> list[ScoredGroup]:
    """Cut flat scores (in :func:`completions_and_answers` order) back into one :class:`ScoredGroup` per group."""
    scored, offset = [], 0
    for g in groups:
        end = offset + len(g.completions)
        per = {name: values[offset:end] for name, values in scores.per_function.items()}
        scored.append(ScoredGroup(g, per, scores.total[offset:end], scores.errors))
        offset = end
    return scored
