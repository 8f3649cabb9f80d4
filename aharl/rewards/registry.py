"""Reward functions by name, reward sets, and user functions loaded from code.

A config lists entries in ``rewards.functions``; each is a registered name
(``correctness``), a set name that expands to several (``reference``), or a
user function given as ``package.module:function`` or
``path/to/file.py:function``. A user function has the built-ins' form,
``fn(completions: list[str], answers: list[str]) -> list[float]``, or the one
written for TRL's GRPOTrainer, ``fn(prompts, completions, answer, **kwargs)``,
unchanged (:mod:`aharl.rewards.calling`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Iterable, Sequence

from aharl.config import Config
from aharl.errors import ConfigError, describe
from aharl.rewards import arithmetic, corrected, reference
from aharl.rewards.calling import required_columns, signature_problem
from aharl.rewards.reference import RewardFn

REWARDS: dict[str, RewardFn] = {
    "xmlcount": reference.xmlcount,
    "soft_format": reference.soft_format,
    "strict_format": reference.strict_format,
    "int": reference.int_answer,
    "correctness": reference.correctness,
    "soft_format_multiline": corrected.soft_format_multiline,
    "strict_format_multiline": corrected.strict_format_multiline,
    "number": corrected.number,
    "correctness_numeric": corrected.correctness_numeric,
    "answer_number": arithmetic.answer_number,
    "answer_tags": arithmetic.answer_tags,
    "brevity": arithmetic.brevity,
}

REWARD_SETS: dict[str, list[str]] = {
    # The reference recipe, quirks included (docs/reference-recipe.md).
    "reference": ["xmlcount", "soft_format", "strict_format", "int", "correctness"],
    # The same signals with multi-line format and numeric-equivalent answers.
    "corrected": ["xmlcount", "soft_format_multiline", "strict_format_multiline", "number", "correctness_numeric"],
    # Dense partial credit for the synthetic task (the quickstart), see aharl.rewards.arithmetic.
    "arithmetic": ["answer_number", "answer_tags", "brevity"],
}

_FIX = "use a registered name ({names}), a set ({sets}), or module:function / file.py:function"


def resolve_reward_functions(entries: Sequence[str]) -> list[tuple[str, RewardFn]]:
    """Expand sets and load user code; the result keeps the config's order, without repeats."""
    resolved: dict[str, RewardFn] = {}
    for entry in entries:
        for name, fn in _resolve_entry(entry):
            resolved.setdefault(name, fn)
    return list(resolved.items())


def _resolve_entry(entry: str) -> list[tuple[str, RewardFn]]:
    if entry in REWARD_SETS:
        return [(name, REWARDS[name]) for name in REWARD_SETS[entry]]
    if entry in REWARDS:
        return [(entry, REWARDS[entry])]
    if ":" in entry:
        return [(entry, load_user_function(entry))]
    fix = _FIX.format(names=", ".join(REWARDS), sets=", ".join(REWARD_SETS))
    raise ConfigError("rewards.functions", f"entry {entry!r} is not a known reward", fix)


def load_user_function(spec: str) -> RewardFn:
    """Import ``module:function`` or ``file.py:function``; any failure is one ConfigError line."""
    target, _, attr = spec.rpartition(":")
    fix = "check the path and function name; the function takes (completions, answers), or TRL's keywords, and returns a list of floats"
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ConfigError("rewards.functions", f"entry {spec!r}: file {target} does not exist", fix)
            module_name = f"aharl_user_reward_{path.stem}_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except BaseException as exc:  # user code: a syntax error, a missing import, sys.exit(), anything
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ConfigError("rewards.functions", f"entry {spec!r} failed to import: {describe(exc)}", fix) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError("rewards.functions", f"entry {spec!r}: {target} has no function {attr!r}", fix)
    problem = signature_problem(fn)
    if problem:
        raise ConfigError(
            "rewards.functions",
            f"entry {spec!r} {problem}",
            "define it as def f(completions, answers), or as TRL does: def f(prompts, completions, **kwargs), returning one float per completion",
        )
    return fn


def check_reward_config(config: Config) -> None:
    """Fail at config load, not after the model has loaded, when a reward name or weight names nothing.

    Passed to :func:`aharl.config.load_config` as a check by the commands: it
    imports user reward code, which config loading does only once the rest of
    the config is known to be sound.
    """
    try:
        names = [name for name, _ in resolve_reward_functions(config.rewards.functions)]
    except ConfigError as exc:
        raise ConfigError("rewards.functions", exc.problem, exc.fix) from None
    for name in config.rewards.weights:
        if name not in names:
            raise ConfigError(
                f"rewards.weights.{name}", "names no configured reward function", f"use one of: {', '.join(names)}"
            )


def check_reward_columns(entries: Sequence[str], columns: Iterable[str], source: str) -> None:
    """Fail before any actor starts when a TRL-form reward needs a column the data does not have."""
    have = list(columns)
    for name, fn in resolve_reward_functions(entries):
        missing = [c for c in required_columns(fn) if c not in have]
        if missing:
            raise ConfigError(
                "rewards.functions",
                f"{name!r} needs the data column {missing[0]!r}, which {source} does not have (it has: {', '.join(have) or 'none'})",
                "give that parameter a default, or use data whose rows have the column",
            )
