"""Turn rows into chat prompts, dropping (and counting) the ones a run cannot use.

A prompt is a system message plus the question as the user message, rendered
by the tokenizer's own chat template with the generation prompt. Prompts over
``max_prompt_tokens`` are dropped, not truncated: a question cut in half has
no correct answer. Rows without a usable gold answer are skipped. The counts
are reported so that a user knows what the run trains on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from aharl.config import DataConfig, Demonstration
from aharl.errors import DataError
from aharl.types import Prompt

# A row's identifier, where a dataset has one: a repeated id is a row given twice.
ID_COLUMN = "id"
# A number as GSM8K writes its gold answers: ``18``, ``-3``, ``1,080``, ``$18.50``, ``75%`` (and ``3/4``).
_GOLD_NUMBER = re.compile(r"[-+]?\$?(\d[\d,]*(\.\d*)?|\.\d+)(/\d+)?%?\.?")


@dataclass
class PromptReport:
    """What happened to the rows of a data source; every row is in exactly one count."""

    rows: int
    kept: int
    too_long: int
    no_answer: int
    malformed: int
    # The gsm8k extractor found text, not a number, after ``####``.
    non_numeric: int = 0
    # The row's ``id`` repeats an earlier row's (the first one is kept).
    duplicate: int = 0

    def summary(self) -> str:
        rarer = "".join(
            f", {count} {what}"
            for count, what in (
                (self.non_numeric, "with a non-numeric gold answer"),
                (self.duplicate, "with a duplicate id"),
            )
            if count
        )
        return (
            f"{self.kept} prompts kept of {self.rows} rows "
            f"({self.too_long} over the prompt-token limit, {self.no_answer} without a gold answer, "
            f"{self.malformed} malformed{rarer})"
        )


def extract_gold(raw: Any, extractor: str) -> str | None:
    """The gold answer in an answer field, or None when there is none.

    ``gsm8k``: the text after the first ``####``, stripped (GSM8K's layout).
    ``plain``: the whole field, stripped.
    """
    if raw is None:
        return None
    text = str(raw)
    if extractor == "gsm8k":
        if "####" not in text:
            return None
        text = text.split("####", 1)[1]
    text = text.strip()
    return text or None


def chat_messages(
    question: str, system_prompt: str, demonstrations: Sequence[Demonstration] = ()
) -> list[dict[str, str]]:
    """The conversation the model answers: the system prompt, each demonstration as a user and an assistant turn, then the question."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for demo in demonstrations:
        messages += [{"role": "user", "content": demo.question}, {"role": "assistant", "content": demo.response}]
    return messages + [{"role": "user", "content": question}]


def is_gold_number(gold: str) -> bool:
    """Whether ``gold`` is a number as GSM8K writes one (commas, a sign, a currency or percent sign allowed)."""
    return _GOLD_NUMBER.fullmatch(gold.replace(" ", "")) is not None


def build_prompts(rows: Sequence[dict[str, Any]], tokenizer, config: DataConfig) -> tuple[list[Prompt], PromptReport]:
    """Render every usable row; the prompts keep the rows' order.

    Skipped, each counted in the report: rows without a question or gold
    answer, rows whose ``id`` repeats an earlier one (a duplicate would weigh
    twice and could land in both the training and the held-out eval set),
    and, with the gsm8k extractor, gold answers that are not numbers (every
    GSM8K answer is one; text there is a broken row no numeric reward can
    score). The plain extractor takes any text as the gold answer.
    """
    candidates: list[tuple[str, str, str, dict[str, Any]]] = []
    no_answer = malformed = non_numeric = duplicate = 0
    seen_ids: set[str] = set()
    for row in rows:
        question = row.get(config.question_column) if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            malformed += 1
            continue
        gold = extract_gold(row.get(config.answer_column), config.answer_extractor)
        if gold is None:
            no_answer += 1
            continue
        if config.answer_extractor == "gsm8k" and not is_gold_number(gold):
            non_numeric += 1
            continue
        row_id = row.get(ID_COLUMN)
        if row_id is not None:
            if str(row_id) in seen_ids:
                duplicate += 1
                continue
            seen_ids.add(str(row_id))
        # The answer column carries the gold answer as extracted, as the reference
        # recipe's dataset map does, so a TRL-form reward compares against it unchanged.
        columns = {**row, config.answer_column: gold}
        text = tokenizer.apply_chat_template(
            chat_messages(question, config.system_prompt, config.demonstrations),
            tokenize=False,
            add_generation_prompt=True,
        )
        candidates.append((question, gold, text, columns))
    # The template already holds the special tokens; adding them again would duplicate BOS.
    encoded = tokenizer([c[2] for c in candidates], add_special_tokens=False)["input_ids"] if candidates else []
    prompts: list[Prompt] = []
    too_long = 0
    for (question, gold, text, columns), ids in zip(candidates, encoded):
        if len(ids) > config.max_prompt_tokens:
            too_long += 1
            continue
        messages = chat_messages(question, config.system_prompt, config.demonstrations)
        prompts.append(Prompt(len(prompts), question, gold, text, list(ids), messages, columns))
    report = PromptReport(len(rows), len(prompts), too_long, no_answer, malformed, non_numeric, duplicate)
    if not prompts:
        raise DataError(
            f"data source {config.source} gave no usable prompts: {report.summary()}; check the columns, extractor and data.max_prompt_tokens"
        )
    return prompts, report
