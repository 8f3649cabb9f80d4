"""Calls to a set of Ray actors under one policy: every wait has a deadline, every death names its actor and stage.

The runtime talks to its actors (the rollout engines, the learner ranks)
only through :class:`ActorGroup` and :func:`get_within`, so no call can wait
forever: a deadline that passes raises :class:`StageTimeout`, an actor that
dies raises :class:`aharl.errors.RunFault`, each in one line that says which
stage stalled or which actor died and which setting gives it longer. The
driver turns either into the run's last line, naming the checkpoint that
``resume=auto`` continues from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from aharl.errors import RunFault, first_line


class StageTimeout(RunFault):
    """An actor call that did not finish within its deadline."""


@dataclass(frozen=True)
class Deadline:
    """How long a stage may take, the config key that sets it, and what a stall usually means."""

    seconds: float
    setting: str  # e.g. "sync.timeout_s"
    cause: str = "a hung actor or collective"
    advice: str = ""  # what to do instead of the default "raise <setting> if it is really that slow"
    kind: type[StageTimeout] = StageTimeout  # the error raised (a subclass names the stage's family)

    def error(self, stage: str) -> StageTimeout:
        advice = self.advice or f"raise {self.setting} if it is really that slow"
        return self.kind(f"{stage} did not finish within {self.setting}={self.seconds:g}s ({self.cause}); {advice}")


def actor_death(exc: RayActorError) -> str:
    """The first line of Ray's account of an actor's death (the rest is a long, repeated explanation)."""
    return first_line(str(exc)) or type(exc).__name__


def get_within(refs: Any, stage: str, deadline: Deadline) -> Any:
    """``ray.get(refs)`` within ``deadline``, else :class:`StageTimeout` naming ``stage``."""
    try:
        return ray.get(refs, timeout=deadline.seconds)
    except GetTimeoutError:
        raise deadline.error(stage) from None


class ActorGroup:
    """The actors of one role, called together: ``group.call("sleep", True, stage=..., deadline=...)``.

    The members are held in a list that others may share (a weight transport
    holds the same rollout list), and a restarted member is put in place
    with ``group[i] = new_actor``.
    """

    def __init__(self, role: str, actors: list[Any]) -> None:
        self.role = role  # "rollout engine", "learner rank": how an error names a member
        self.actors = actors

    def __len__(self) -> int:
        return len(self.actors)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.actors)

    def __getitem__(self, index: int) -> Any:
        return self.actors[index]

    def __setitem__(self, index: int, actor: Any) -> None:
        self.actors[index] = actor

    def call(self, method: str, *args: Any, stage: str, deadline: Deadline) -> list[Any]:
        """``method(*args)`` on every member; their results in member order."""
        return self.gather([getattr(actor, method).remote(*args) for actor in self.actors], stage, deadline)

    def call_each(self, method: str, args: Sequence[tuple], stage: str, deadline: Deadline) -> list[Any]:
        """``method(*args[i])`` on member ``i`` (each its own share); results in member order."""
        refs = [getattr(actor, method).remote(*a) for actor, a in zip(self.actors, args, strict=True)]
        return self.gather(refs, stage, deadline)

    def gather(self, refs: list[Any], stage: str, deadline: Deadline) -> list[Any]:
        """The members' results of calls already sent, under the group's policy."""
        try:
            return get_within(refs, stage, deadline)
        except RayActorError as exc:
            member = next((i for i, ref in enumerate(refs) if _died(ref)), "?")
            raise RunFault(f"{self.role} {member} died during {stage} ({actor_death(exc)})") from None


def _died(ref: Any) -> bool:
    """Whether ``ref`` (already finished) holds an actor's death."""
    try:
        ray.get(ref, timeout=0)
    except RayActorError:
        return True
    except Exception:
        return False
    return False
