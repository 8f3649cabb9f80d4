"""Dense rewards for the synthetic arithmetic task, so that a tiny model has a signal.

An untrained SmolLM2-135M never writes the reference's XML tags, so the five
reference rewards are 0 for every sample and GRPO has nothing to compare.
These give partial credit a small model can climb: the right number (inside
``<answer>`` tags if there are any, else the last number written that is not
an operand of a sum) and a short
answer that states a number.
"""

from __future__ import annotations

import re

from aharl.rewards.corrected import numbers_equal
from aharl.rewards.reference import per_completion

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# A number followed by an operator or "=" is an operand, never the answer: the
# text "The answer is 3. Jack has 2 + 1 =" (cut off at max_tokens) states 3, not 1.
_STATED_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?![\d,.]*\s*(?:[-+*/\u00d7\u00f7=]|x(?![a-zA-Z])))")
# Full brevity credit up to FULL_CREDIT_CHARS, none past ZERO_CREDIT_CHARS.
FULL_CREDIT_CHARS = 100
ZERO_CREDIT_CHARS = 200


def stated_answer(text: str) -> str | None:
    """The number inside the last ``<answer>`` tags, else the last number in the text that is not an operand."""
    if "<answer>" in text:
        inside = text.split("<answer>")[-1].split("</answer>")[0]
        found = _NUMBER.findall(inside)
        if found:
            return found[-1]
    found = _STATED_NUMBER.findall(text)
    return found[-1] if found else None


@per_completion
def answer_number(text: str, gold: str) -> float:
    """1.0 when the stated answer equals the gold number."""
    answer = stated_answer(text)
    return 1.0 if answer is not None and numbers_equal(answer, gold) else 0.0


@per_completion
def brevity(text: str, gold: str) -> float:
    """0.25 for an answer that states a number within 100 characters, falling to 0 at 200.

    Two guards against reward hacking, both seen in the quickstart: without
    the number condition the policy learns to emit EOS at once; with a bonus
    that keeps growing as text shrinks, it collapses to a bare guessed number
    and stops reasoning. Flat below 100 characters, only correctness can
    improve a short worked answer ("3 + 4 = 7").
    """
    if stated_answer(text) is None:
        return 0.0
    excess = max(0, len(text) - FULL_CREDIT_CHARS) / (ZERO_CREDIT_CHARS - FULL_CREDIT_CHARS)
    return 0.25 * max(0.0, 1.0 - excess)


@per_completion
def answer_tags(text: str, gold: str) -> float:
    """0.25 each for an opening and a closing answer tag."""
    return 0.25 * ("<answer>" in text) + 0.25 * ("</answer>" in text)
