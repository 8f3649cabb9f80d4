"""``aharl rewards score``: score completions from a JSONL file, chunk by chunk, skipping malformed rows.

A row holds ``completion`` and ``answer``; a ``prompt`` (chat messages, or a
string for text data) and any other fields travel to TRL-form reward
functions as ``prompts`` and keyword columns. Completions reach those
functions as chat messages unless the rows' prompts are strings, as TRL
passes them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from aharl.errors import AharlError, ConfigError

SCORE_CHUNK_ROWS = 256
# Malformed rows named one by one; the rest are only counted, so a wrong file does not flood the terminal.
SHOWN_BAD_ROWS = 5


def rewards_score(args: argparse.Namespace) -> int:
    from aharl.rewards.registry import resolve_reward_functions
    from aharl.rewards.scoring import json_number, score_batch

    try:
        functions = resolve_reward_functions([e.strip() for e in args.rewards.split(",") if e.strip()])
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.problem, exc.fix, "--rewards") from None
    path = Path(args.input)
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "does not exist"
        raise AharlError(f'input file {path} {state}; pass a JSONL file of {{"completion": ..., "answer": ...}} rows')
    try:
        out: TextIO = open(args.output, "w") if args.output else sys.stdout
    except OSError as exc:
        raise AharlError(
            f"cannot write --output {args.output} ({exc.strerror or type(exc).__name__}); pass a file in an existing directory"
        ) from None
    bad = 0
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        # Written chunk by chunk, so rows scored before a failing reward are kept.
        if not pending:
            return
        scores = score_batch(file_batch(pending), functions)
        for i in range(len(pending)):
            row: dict[str, Any] = {name: json_number(values[i]) for name, values in scores.per_function.items()}
            row["total"] = scores.total[i]
            out.write(json.dumps(row) + "\n")
        out.flush()
        pending.clear()

    try:
        with path.open("rb") as rows:  # bytes: one line that is not UTF-8 is skipped, not the whole file
            for number, raw in enumerate(rows, start=1):
                if not raw.strip():
                    continue
                problem, row = _parse_score_row(raw)
                if problem:
                    bad += 1
                    if bad <= SHOWN_BAD_ROWS:
                        print(f"aharl: {path}:{number}: {problem}; skipped", file=sys.stderr)
                    continue
                pending.append(row)
                if len(pending) >= SCORE_CHUNK_ROWS:
                    flush()
        flush()
    finally:
        if out is not sys.stdout:
            out.close()
    if bad:
        more = f" (the first {SHOWN_BAD_ROWS} shown above)" if bad > SHOWN_BAD_ROWS else ""
        print(
            f'aharl: {bad} malformed row(s) skipped{more}; each needs string fields "completion" and "answer" on a UTF-8 JSON line',
            file=sys.stderr,
        )
        return 1
    return 0


def file_batch(rows: list[dict[str, Any]]):
    """A :class:`RewardBatch` of parsed rows: the ``answer`` field is both the gold answer and a column, as in training."""
    from aharl.rewards.calling import RewardBatch

    names = list(dict.fromkeys(k for row in rows for k in row if k not in ("completion", "prompt")))
    prompts = [row.get("prompt", []) for row in rows]
    answers = [str(row["answer"]) for row in rows]
    columns = {name: [row.get(name) for row in rows] for name in names}
    columns["answer"] = answers  # a string, as the gold answer is in training
    return RewardBatch(
        completions=[row["completion"] for row in rows],
        answers=answers,
        prompts=prompts,
        completion_ids=[[] for _ in rows],
        columns=columns,
        chat=not any(isinstance(p, str) for p in prompts),
    )


def _parse_score_row(raw: bytes) -> tuple[str | None, dict[str, Any]]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})", {}
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg})", {}
    if not isinstance(row, dict):
        return "not a JSON object", {}
    completion, answer = row.get("completion"), row.get("answer")
    if not isinstance(completion, str):
        return 'missing string field "completion"', {}
    if answer is None:
        return 'missing field "answer"', {}
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str) and not _is_messages(prompt):
        return 'field "prompt" is neither a string nor a list of {"role": ..., "content": ...} messages', {}
    return None, row


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
