"""The five rule rewards of the reference recipe, exactly as specified.

See docs/reference-recipe.md. The quirks are deliberate and tested: the format
regexes run without ``re.DOTALL`` (so multi-line reasoning never matches),
``re.match`` anchors at the start, and correctness is an exact string compare
(``1080`` vs gold ``1,080`` scores 0). Corrected behaviour lives in
:mod:`aharl.rewards.corrected` under other names; nothing here may change.

Every reward takes the batch (``completions``, ``answers``) and returns one
float per completion, so a Ray worker scores a whole batch in one call.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]

SOFT_FORMAT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")
STRICT_FORMAT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")


def extract_answer(text: str) -> str:
    """What follows the last ``<answer>``, cut at the first ``</answer>``, stripped.

    Without the tag this is the whole text, stripped: the reference behaviour.
    """
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def per_completion(score: Callable[[str, str], float]) -> RewardFn:
    """Lift ``score(text, gold)`` to a batch reward with the same name and docstring."""

    def batch(completions: Sequence[str], answers: Sequence[str]) -> list[float]:
        return [score(text, gold) for text, gold in zip(completions, answers, strict=True)]

    batch.__name__ = score.__name__
    batch.__doc__ = score.__doc__
    return batch


def _text_after_last(text: str, marker: str) -> str:
    return text.split(marker)[-1]


@per_completion
def xmlcount(text: str, gold: str) -> float:
    """0.125 per tag that occurs exactly once, minus a length penalty on trailing text."""
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= 0.001 * len(_text_after_last(text, "\n</answer>\n"))
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= 0.001 * (len(_text_after_last(text, "\n</answer>")) - 1)
    return score


@per_completion
def soft_format(text: str, gold: str) -> float:
    """0.5 when reasoning then answer tags match from the start (single-line bodies only)."""
    return 0.5 if SOFT_FORMAT.match(text) else 0.0


@per_completion
def strict_format(text: str, gold: str) -> float:
    """0.5 for the exact newline layout ending in a newline (single-line bodies only)."""
    return 0.5 if STRICT_FORMAT.match(text) else 0.0


@per_completion
def int_answer(text: str, gold: str) -> float:
    """0.5 when the extracted answer is all digits (so ``-3`` and ``1,080`` score 0)."""
    return 0.5 if extract_answer(text).isdigit() else 0.0


int_answer.__name__ = "int"


@per_completion
def correctness(text: str, gold: str) -> float:
    """2.0 when the extracted answer equals the gold answer as a string."""
    return 2.0 if extract_answer(text) == gold else 0.0
