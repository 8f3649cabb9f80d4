"""Turn completions into rewards: call each function, check what it returned, weight and sum."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from aharl.errors import RewardError, first_line
from aharl.rewards.reference import RewardFn
from aharl.types import RolloutGroup, ScoredGroup


@dataclass
class RewardScores:
    """Rewards for a batch of completions: one list per function and the weighted total."""

    per_function: dict[str, list[float]]
    total: list[float]
    # Function name -> error message, for functions that failed and scored 0.
    errors: dict[str, str] = field(default_factory=dict)


# What a reward may return instead of a list: a sequence in the completions' order.
# A string, a mapping or a set iterates, but not as one number per completion.
_NOT_A_LIST = (str, bytes, dict, set, frozenset)


def call_reward(name: str, fn: RewardFn, completions: Sequence[str], answers: Sequence[str]) -> list[float]:
    """Run one reward function and check it returned one finite number per completion."""
    try:
        returned = fn(list(completions), list(answers))
    except Exception as exc:  # user code may raise anything
        raise RewardError(f"reward function `{name}` raised {type(exc).__name__}: {first_line(str(exc))}") from exc
    fix = f"return a list of {len(completions)} floats, one per completion, in order"
    if returned is None:
        raise RewardError(f"reward function `{name}` returned None (a missing return statement?); {fix}")
    if isinstance(returned, _NOT_A_LIST) or not isinstance(returned, Iterable):
        raise RewardError(f"reward function `{name}` returned a {type(returned).__name__} ({first_line(repr(returned), 60)}), not a list; {fix}")
    values = list(returned)
    if len(values) != len(completions):
        raise RewardError(f"reward function `{name}` returned {len(values)} values for {len(completions)} completions; return one float per completion")
    floats = []
    for position, value in enumerate(values):
        try:
            floats.append(float(value))
        except (TypeError, ValueError):
            shown = first_line(repr(value), 60)
            raise RewardError(f"reward function `{name}` returned a non-number at position {position} ({shown}); {fix}") from None
    bad = next((i for i, v in enumerate(floats) if not math.isfinite(v)), None)
    if bad is not None:
        raise RewardError(f"reward function `{name}` returned {floats[bad]} (NaN or infinity) at position {bad}; return finite floats")
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
