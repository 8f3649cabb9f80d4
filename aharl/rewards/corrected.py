"""Corrected variants of the reference rewards, offered under their own names.

They fix what the reference gets wrong for a user who is not reproducing it:
multi-line reasoning earns the format rewards, and a numerically equal answer
(``1,080`` = ``1080``, ``18.0`` = ``18``, ``$18`` = ``18``) counts as correct.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from aharl.rewards.reference import extract_answer, per_completion

SOFT_FORMAT_MULTILINE = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)
STRICT_FORMAT_MULTILINE = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\s*$", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")


def parse_number(text: str) -> Decimal | None:
    """The number ``text`` states, ignoring a currency sign, thousands commas and a final period.

    ``"$1,080.00"`` → 1080.00; ``"18."`` → 18; anything with other words → None.
    """
    cleaned = text.strip().replace(",", "").replace(" ", "")
    cleaned = cleaned.lstrip("$").rstrip(".").rstrip("%")
    if cleaned.startswith("-$"):
        cleaned = "-" + cleaned[2:]
    if not _NUMBER.fullmatch(cleaned):
        return None
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def numbers_equal(answer: str, gold: str) -> bool:
    """Equal as numbers when both parse, else equal as stripped strings."""
    a, g = parse_number(answer), parse_number(gold)
    if a is None or g is None:
        return answer.strip() == gold.strip()
    return a == g


@per_completion
def soft_format_multiline(text: str, gold: str) -> float:
    """0.5 when reasoning then answer tags appear from the start; bodies may span lines."""
    return 0.5 if SOFT_FORMAT_MULTILINE.match(text) else 0.0


@per_completion
def strict_format_multiline(text: str, gold: str) -> float:
    """0.5 for the exact tag layout; bodies may span lines, trailing whitespace allowed."""
    return 0.5 if STRICT_FORMAT_MULTILINE.match(text) else 0.0


@per_completion
def number(text: str, gold: str) -> float:
    """0.5 when the extracted answer is a number (negative and comma-grouped included)."""
    return 0.5 if parse_number(extract_answer(text)) is not None else 0.0


@per_completion
def correctness_numeric(text: str, gold: str) -> float:
    """2.0 when the extracted answer equals the gold answer as a number."""
    return 2.0 if numbers_equal(extract_answer(text), gold) else 0.0
