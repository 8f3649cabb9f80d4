"""Turn completions into rewards: call each function, check what it returned, weight and sum.

A function may return ``None`` for a row it does not apply to (as TRL
allows): that row's value is NaN in the function's list, left out of the
weighted total and of the function's mean, and written as ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from aharl.errors import RewardError, describe, first_line
from aharl.rewards.calling import RewardBatch, RewardLogs, RewardStep, invoke, required_columns
from aharl.rewards.reference import RewardFn
from aharl.types import RolloutGroup, ScoredGroup


@dataclass
class RewardScores:
    """Rewards for a batch of completions: one list per function and the weighted total."""

    per_function: dict[str, list[float]]  # name -> [N], NaN where the function returned None
    total: list[float]  # [N]
    # Function name -> error message, for functions that failed and scored 0.
    errors: dict[str, str] = field(default_factory=dict)
    # What the functions logged (``log_metric`` values, ``log_extra`` columns of [N]).
    logs: RewardLogs = field(default_factory=RewardLogs)


# What a reward may return instead of a list: a sequence in the completions' order.
# A string, a mapping or a set iterates, but not as one number per completion.
_NOT_A_LIST = (str, bytes, dict, set, frozenset)


def call_reward(name: str, fn: RewardFn, batch: RewardBatch, logs: RewardLogs | None = None) -> list[float]:
    """Run one reward function and check it returned one finite number (or None) per completion."""
    missing = [c for c in required_columns(fn) if c not in batch.columns]
    if missing:
        have = ", ".join(batch.columns) or "none"
        raise RewardError(
            f"reward function `{name}` needs the data column {missing[0]!r}, which the rows do not have (they have: {have}); give it a default or use a column the data has"
        )
    try:
        returned = invoke(fn, batch, logs if logs is not None else RewardLogs())
    except Exception as exc:  # user code may raise anything
        raise RewardError(f"reward function `{name}` raised {describe(exc)}") from exc
    count = len(batch)
    fix = f"return a list of {count} floats, one per completion, in order"
    if returned is None:
        raise RewardError(f"reward function `{name}` returned None (a missing return statement?); {fix}")
    if isinstance(returned, _NOT_A_LIST) or not isinstance(returned, Iterable):
        raise RewardError(
            f"reward function `{name}` returned a {type(returned).__name__} ({first_line(repr(returned), 60)}), not a list; {fix}"
        )
    values = list(returned)
    if len(values) != count:
        raise RewardError(
            f"reward function `{name}` returned {len(values)} values for {count} completions; return one float per completion"
        )
    floats = []
    for position, value in enumerate(values):
        if value is None:  # the function does not apply to this row
            floats.append(math.nan)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            shown = first_line(repr(value), 60)
            raise RewardError(
                f"reward function `{name}` returned a non-number at position {position} ({shown}); {fix}"
            ) from None
        if not math.isfinite(number):
            raise RewardError(
                f"reward function `{name}` returned {number} (NaN or infinity) at position {position}; return finite floats, or None for a row it does not apply to"
            )
        floats.append(number)
    return floats


def score_batch(
    batch: RewardBatch,
    functions: Sequence[tuple[str, RewardFn]],
    weights: Mapping[str, float] | None = None,
    *,
    tolerate_errors: bool = False,
) -> RewardScores:
    """Score a batch with every function; the total is the weighted sum over the functions that apply.

    With ``tolerate_errors`` a failing function scores 0 for the batch and its
    message is kept in ``errors`` (the training run goes on); without it, the
    first failure raises :class:`RewardError`.
    """
    weights = weights or {}
    per_function: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    logs = RewardLogs()
    if not len(batch):  # a worker's empty chunk: TRL-form code often reads prompts[0], so nothing is called
        return RewardScores({name: [] for name, _ in functions}, [], errors, logs)
    for name, fn in functions:
        try:
            per_function[name] = call_reward(name, fn, batch, logs)
        except RewardError as exc:
            if not tolerate_errors:
                raise
            errors[name] = str(exc)
            per_function[name] = [0.0] * len(batch)
    total = [
        sum(weights.get(name, 1.0) * values[i] for name, values in per_function.items() if not math.isnan(values[i]))
        for i in range(len(batch))
    ]
    # A log_extra column cut or filled with None to one value per completion (user code may log any number).
    logs.extras = {
        column: list(values[: len(batch)]) + [None] * max(0, len(batch) - len(values))
        for column, values in logs.extras.items()
    }
    return RewardScores(per_function, total, errors, logs)


def score_completions(
    completions: Sequence[str],
    answers: Sequence[str],
    functions: Sequence[tuple[str, RewardFn]],
    weights: Mapping[str, float] | None = None,
    *,
    tolerate_errors: bool = False,
) -> RewardScores:
    """:func:`score_batch` for texts and gold answers alone (no prompts, ids or columns besides ``answer``)."""
    return score_batch(RewardBatch.of_texts(completions, answers), functions, weights, tolerate_errors=tolerate_errors)


def reward_batch(groups: Sequence[RolloutGroup], step: RewardStep = RewardStep()) -> RewardBatch:
    """Every completion of every group, flat, with its prompt's messages, gold answer and dataset row beside it."""
    rows = [(g.prompt, c) for g in groups for c in g.completions]
    names = list(dict.fromkeys(name for g in groups for name in g.prompt.columns))
    return RewardBatch(
        completions=[c.text for _, c in rows],
        answers=[p.answer for p, _ in rows],
        prompts=[p.messages for p, _ in rows],
        completion_ids=[list(c.token_ids) for _, c in rows],
        columns={name: [p.columns.get(name) for p, _ in rows] for name in names},
        step=step,
    )


def split_by_group(groups: Sequence[RolloutGroup], scores: RewardScores) -> list[ScoredGroup]:
    """Cut flat scores (in :func:`reward_batch` order) back into one :class:`ScoredGroup` per group."""
    scored, offset = [], 0
    for g in groups:
        end = offset + len(g.completions)
        per = {name: values[offset:end] for name, values in scores.per_function.items()}
        extras = {column: values[offset:end] for column, values in scores.logs.extras.items()}
        scored.append(ScoredGroup(g, per, scores.total[offset:end], scores.errors, extras))
        offset = end
    return scored


def json_number(value: float) -> float | None:
    """A reward as JSON writes it: ``null`` for a row the function did not apply to."""
    return None if math.isnan(value) else value
