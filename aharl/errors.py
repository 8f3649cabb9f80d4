"""User-facing errors.

Every problem a user can cause (a bad config value, a missing file, a broken
reward function) is raised as an :class:`AharlError`. The command line prints
``str(error)`` as one line and exits non-zero; it never shows a traceback for
these, because the fix is in the user's input, not in aharl.
"""

from __future__ import annotations


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text`` (an exception's message may span many), cut at ``limit``; `` ...`` marks a cut."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    shown = lines[0] if lines else ""
    if len(lines) > 1 or len(shown) > limit:
        shown = shown[:limit] + " ..."
    return shown


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (the type alone when there is no message): a cause inside one line."""
    shown = first_line(str(exc), limit)
    return f"{type(exc).__name__}: {shown}" if shown else type(exc).__name__


def one_line(message: str) -> str:
    """``message`` with its lines joined by `` | ``: an error that quotes user text may hold newlines."""
    return " | ".join(line.strip() for line in message.splitlines() if line.strip())


class AharlError(Exception):
    """A problem with the user's input, described in one line with its fix."""

    exit_code = 2


class ConfigError(AharlError):
    """A config key that is unknown, has the wrong type or an impossible value."""

    def __init__(self, key: str, problem: str, fix: str, source: str = "config") -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        self.source = source
        super().__init__(f"config error in {source}: `{key}` {problem}; fix: {fix}")


class DataError(AharlError):
    """A dataset that cannot be found or read, or has no usable rows."""


class RewardError(AharlError):
    """A reward function that cannot be loaded, raised, or returned a bad value."""


class RunFault(AharlError):
    """The run could not go on (a dead learner rank, a full disk, updates that stay non-finite).

    Unlike a bad input, nothing in the command line is wrong: the message names
    the last complete checkpoint, from which ``resume=auto`` continues the run
    exactly. The command exits with :attr:`exit_code` 3.
    """

    exit_code = 3
