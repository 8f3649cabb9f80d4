"""Fault injection points for the reliability tests: a process kills itself, or poisons a loss, on cue.

A run survives a fault only if the fault is tested where it really lands:
in the middle of generation, of an update, of a checkpoint write. Timing a
``kill`` from outside cannot hit those windows reliably on a loaded machine,
so the code names its windows (:func:`reached`) and a test arms them through
the environment, which Ray passes on to every actor it starts::

    AHARL_FAILPOINTS="driver.generate:kill@3;learner.loss:nan@2-3"

Each entry is ``point:action@calls``: the action fires on those calls of the
point in this process (``3``, ``2-3``, ``2-`` for every call from the second,
or ``2,5``). With ``AHARL_FAILPOINT_DIR`` set, each (point, call) fires once
across all processes (a marker file is written first), so an actor that is
restarted after a kill is not killed again at its own third call.

Unarmed (the variable unset, as in every real run) a point costs one dict
lookup. Actions: ``kill`` (SIGKILL this process, as the OOM killer does),
``term`` (SIGTERM to this process, as ``kill PID`` or a scheduler's
preemption does; its handler runs and the call goes on), ``exit`` (``os._exit(1)``), ``raise`` (``OSError`` ENOSPC, as a full disk
does), ``hang`` (sleep, as a deadlocked call does), and ``nan`` (:func:`reached` returns ``"nan"``; the caller poisons its
value).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "AHARL_FAILPOINTS"
MARK_DIR_ENV = "AHARL_FAILPOINT_DIR"
ACTIONS = ("kill", "term", "exit", "raise", "hang", "nan")


@dataclass(frozen=True)
class Failpoint:
    point: str
    action: str
    first: int
    last: int | None  # None: every call from ``first`` on

    def matches(self, call: int) -> bool:
        return call >= self.first and (self.last is None or call <= self.last)


def _calls_of(calls: str) -> list[tuple[int, int | None]]:
    """``3`` / ``2-3`` / ``2-`` / ``2,5`` as ``(first, last)`` ranges."""
    ranges: list[tuple[int, int | None]] = []
    for part in calls.split(","):
        lo, dash, hi = part.partition("-")
        ranges.append((int(lo), (int(hi) if hi else None) if dash else int(lo)))
    return ranges


def parse(spec: str) -> dict[str, list[Failpoint]]:
    """``AHARL_FAILPOINTS``' text as point -> its failpoints; a malformed entry is an error, not ignored."""
    points: dict[str, list[Failpoint]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        try:
            head, calls = entry.rsplit("@", 1)
            point, action = head.rsplit(":", 1)
        except ValueError:
            raise ValueError(f"{ENV} entry {entry!r} is not point:action@calls") from None
        if action not in ACTIONS:
            raise ValueError(f"{ENV} entry {entry!r}: action must be one of {', '.join(ACTIONS)}")
        points.setdefault(point, []).extend(Failpoint(point, action, first, last) for first, last in _calls_of(calls))
    return points


_armed: dict[str, list[Failpoint]] | None = None
_calls: dict[str, int] = {}


def _points() -> dict[str, list[Failpoint]]:
    global _armed
    if _armed is None:
        _armed = parse(os.environ.get(ENV, ""))
    return _armed


def _first_time(point: str, call: int) -> bool:
    """True once per (point, call) across processes when ``AHARL_FAILPOINT_DIR`` is set (always true otherwise)."""
    marks = os.environ.get(MARK_DIR_ENV)
    if not marks:
        return True
    Path(marks).mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(Path(marks) / f"{point}@{call}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def reached(point: str) -> str | None:
    """Count a call of ``point``; fire its armed action, if any. Returns ``"nan"`` for that action, else None."""
    armed = _points().get(point)
    if not armed:
        return None
    call = _calls[point] = _calls.get(point, 0) + 1
    for fp in armed:
        if fp.matches(call) and _first_time(point, call):
            return _fire(fp, call)
    return None


def _fire(fp: Failpoint, call: int) -> str | None:
    if fp.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fp.action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
        return None
    if fp.action == "exit":
        os._exit(1)
    if fp.action == "hang":  # a deadlocked engine or collective: nothing returns, nothing fails
        time.sleep(10**7)
    if fp.action == "raise":
        raise OSError(errno.ENOSPC, f"No space left on device (failpoint {fp.point}, call {call})")
    return fp.action


def reset() -> None:
    """Forget the parsed spec and the counts (tests that change the environment in-process)."""
    global _armed
    _armed = None
    _calls.clear()
