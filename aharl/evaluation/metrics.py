"""What an evaluation measures, as pure functions of (completion, gold answer).

Two accuracies, because they answer different questions:

- ``accuracy_exact`` is the reference recipe's own judge: the text inside the
  last ``<answer>`` tags (or the whole text) must equal the gold string, so
  ``1,080`` against ``1080`` is wrong. This is what the reference's
  "before / after" comparison counts.
- ``accuracy_numeric`` is what GSM8K papers report: the stated number (inside
  the answer tags if any, else the last number written that is not followed
  by an operator or "=") equals the gold number, whatever its formatting. A
  completion cut off in the middle of "2 + 1 =" is judged on what it stated
  before, not on the operand 1.

Format compliance asks whether the answer follows the prompt's layout:
``format_strict`` (the exact newline layout) and ``format_soft`` (reasoning
then answer tags). It uses the reference's regexes with ``re.DOTALL``, so
reasoning over several lines counts; the reference rewards themselves, with
their single-line quirk, are reported per answer among its rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from aharl.rewards.arithmetic import stated_answer
from aharl.rewards.corrected import SOFT_FORMAT_MULTILINE, STRICT_FORMAT_MULTILINE, numbers_equal
from aharl.rewards.reference import extract_answer


@dataclass(frozen=True)
class AnswerJudgement:
    """How one completion fares against its gold answer."""

    exact: bool
    numeric: bool
    format_strict: bool
    format_soft: bool
    tokens: int
    truncated: bool


def judge(text: str, gold: str, tokens: int, truncated: bool) -> AnswerJudgement:
    stated = stated_answer(text)
    return AnswerJudgement(
        exact=extract_answer(text) == gold,
        numeric=stated is not None and numbers_equal(stated, gold),
        format_strict=STRICT_FORMAT_MULTILINE.match(text) is not None,
        format_soft=SOFT_FORMAT_MULTILINE.match(text) is not None,
        tokens=tokens,
        truncated=truncated,
    )


def summarise(judgements: Sequence[Sequence[AnswerJudgement]]) -> dict[str, float]:
    """Means over every completion, plus pass@n (any of a question's n samples right) when n > 1.

    ``judgements[q]`` holds question ``q``'s completions (one in greedy mode).
    """
    flat = [j for per_question in judgements for j in per_question]
    if not flat:
        raise ValueError("nothing to summarise: no completions")
    count = len(flat)
    summary = {
        "questions": float(len(judgements)),
        "completions": float(count),
        "accuracy_exact": sum(j.exact for j in flat) / count,
        "accuracy_numeric": sum(j.numeric for j in flat) / count,
        "format_strict": sum(j.format_strict for j in flat) / count,
        "format_soft": sum(j.format_soft for j in flat) / count,
        "mean_length": sum(j.tokens for j in flat) / count,
        "truncated": sum(j.truncated for j in flat) / count,
    }
    samples = max(len(q) for q in judgements)
    if samples > 1:
        summary[f"pass@{samples}_numeric"] = sum(any(j.numeric for j in q) for q in judgements) / len(judgements)
        summary[f"pass@{samples}_exact"] = sum(any(j.exact for j in q) for q in judgements) / len(judgements)
    return summary
