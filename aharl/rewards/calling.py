"""How a reward function is called: aharl's two-list form, or TRL's keyword form, unchanged.

aharl's own functions take ``fn(completions, answers)``: the decoded texts and
each one's gold answer. A function written for TRL's ``GRPOTrainer`` takes
keywords instead::

    def correctness(prompts, completions, answer, **kwargs): ...

and receives what TRL passes: ``prompts`` (each completion's chat messages),
``completions`` (for chat data a one-message list ``[{"role": "assistant",
"content": text}]`` per completion, for text data the string),
``completion_ids``, every dataset column under its own name (one value per
completion), ``trainer_state`` (``global_step``, ``max_steps``), and the
callbacks ``log_metric(name, value)`` and ``log_extra(column, values)``. It
may return ``None`` for a row it does not apply to, and may be ``async``.

Which form a function has is read from its signature, once, at load:
keyword form when it takes ``**kwargs`` or names ``prompts``,
``completion_ids`` or ``trainer_state``, or when it cannot be called as
``fn(completions, answers)``; aharl's form otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

Convention = Literal["lists", "keywords"]

# The keywords TRL passes besides the dataset's columns; a column of the same name is not passed.
TRL_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state", "log_metric", "log_extra")
# Columns TRL leaves out of the keywords (it passes them in other forms).
TRL_SKIPPED_COLUMNS = ("prompt", "completion", "completion_ids")
_KEYWORD_MARKERS = {"prompts", "completion_ids", "trainer_state"}


@dataclass(frozen=True)
class RewardStep:
    """The step a batch is scored at, named as TRL's ``TrainerState`` names it.

    ``global_step`` counts updates already made (0 while scoring the first
    step's completions), as in TRL.
    """

    global_step: int = 0
    max_steps: int = 0


@dataclass
class RewardBatch:
    """Everything a reward function may read about N completions; every list is [N], in completion order."""

    completions: list[str]  # decoded without special tokens
    answers: list[str]  # the gold answer of each completion's prompt
    prompts: list[Any] = field(default_factory=list)  # each completion's prompt: chat messages (or text, for text data)
    completion_ids: list[list[int]] = field(default_factory=list)
    columns: dict[str, list[Any]] = field(default_factory=dict)  # column -> [N] values of each completion's row
    step: RewardStep = RewardStep()
    # Whether the prompts are chat messages (completions then reach keyword-form functions as messages).
    chat: bool = True

    @classmethod
    def of_texts(cls, completions: Sequence[str], answers: Sequence[str]) -> RewardBatch:
        """Completions and gold answers alone (no prompts or ids; ``answer`` the only column)."""
        return cls(
            list(completions),
            list(answers),
            [[] for _ in completions],
            [[] for _ in completions],
            {"answer": list(answers)},
        )

    def __len__(self) -> int:
        return len(self.completions)

    def slice(self, start: int, end: int) -> RewardBatch:
        """Rows ``start:end`` (a chunk for one reward worker)."""
        return RewardBatch(
            self.completions[start:end],
            self.answers[start:end],
            self.prompts[start:end],
            self.completion_ids[start:end],
            {name: values[start:end] for name, values in self.columns.items()},
            self.step,
            self.chat,
        )


@dataclass
class RewardLogs:
    """What keyword-form functions logged through ``log_metric`` and ``log_extra`` during one call."""

    metrics: dict[str, list[float]] = field(default_factory=dict)  # name -> values, averaged per step
    extras: dict[str, list[Any]] = field(default_factory=dict)  # column -> [N] values for the samples log

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(str(name), []).append(float(value))

    def log_extra(self, column: str, values: list[Any]) -> None:
        self.extras.setdefault(str(column), []).extend(values)


def convention(fn: Callable[..., Any]) -> Convention:
    """``keywords`` for a TRL-form function, ``lists`` for aharl's ``fn(completions, answers)``."""
    signature = _signature(fn)
    if signature is None:  # a builtin or C extension: nothing to read, call it as aharl does
        return "lists"
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters) or _KEYWORD_MARKERS & set(signature.parameters):
        return "keywords"
    try:
        signature.bind([], [])
    except TypeError:
        return "keywords"
    return "lists"


def signature_problem(fn: Callable[..., Any]) -> str | None:
    """Why ``fn`` can be called in neither form, or None; checked at load, before any model loads."""
    signature = _signature(fn)
    if signature is None or convention(fn) == "lists":
        return None
    names = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in names.values())
    if "completions" not in names and not takes_any:
        return f"takes neither (completions, answers) nor a `completions` keyword: its signature is {signature}"
    positional_only = [
        n for n, p in names.items() if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty
    ]
    if positional_only:
        return f"has positional-only parameters ({', '.join(positional_only)}) that keywords cannot fill: its signature is {signature}"
    return None


def required_columns(fn: Callable[..., Any]) -> list[str]:
    """The dataset columns a keyword-form function needs (parameters without a default that TRL does not pass itself)."""
    signature = _signature(fn)
    if signature is None or convention(fn) == "lists":
        return []
    return [
        name
        for name, p in signature.parameters.items()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in TRL_KEYWORDS
    ]


def invoke(fn: Callable[..., Any], batch: RewardBatch, logs: RewardLogs) -> Any:
    """Call ``fn`` on ``batch`` in its own form; an ``async`` function runs to completion here."""
    if convention(fn) == "lists":
        returned = fn(list(batch.completions), list(batch.answers))
    else:
        returned = fn(**keyword_arguments(fn, batch, logs))
    if inspect.isawaitable(returned):
        returned = asyncio.run(_awaited(returned))
    return returned


def keyword_arguments(fn: Callable[..., Any], batch: RewardBatch, logs: RewardLogs) -> dict[str, Any]:
    """TRL's keywords for ``batch``; a function without ``**kwargs`` gets only those it names."""
    completions: list[Any] = (
        [[{"role": "assistant", "content": text}] for text in batch.completions]
        if batch.chat
        else list(batch.completions)
    )
    arguments: dict[str, Any] = {
        name: list(values)
        for name, values in batch.columns.items()
        if name not in TRL_SKIPPED_COLUMNS and name not in TRL_KEYWORDS
    }
    arguments.update(
        prompts=[list(p) if isinstance(p, list) else p for p in batch.prompts],
        completions=completions,
        completion_ids=[list(ids) for ids in batch.completion_ids],
        trainer_state=batch.step,
        log_metric=logs.log_metric,
        log_extra=logs.log_extra,
    )
    signature = _signature(fn)
    if signature is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return arguments
    return {name: value for name, value in arguments.items() if name in signature.parameters}


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


@functools.lru_cache(maxsize=256)
def _cached_signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return _cached_signature(fn)
    except TypeError:  # an unhashable callable: read it each time
        try:
            return inspect.signature(fn)
        except (TypeError, ValueError):
            return None
