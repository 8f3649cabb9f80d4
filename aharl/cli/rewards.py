"""``aharl rewards score``: score completions from a JSONL file, chunk by chunk, skipping malformed rows."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from aharl.errors import AharlError

SCORE_CHUNK_ROWS = 256


def rewards_score(args: argparse.Namespace) -> int:
    from aharl.rewards.registry import resolve_reward_functions
    from aharl.rewards.scoring import score_completions

    functions = resolve_reward_functions([e.strip() for e in args.rewards.split(",") if e.strip()])
    path = Path(args.input)
    if not path.is_file():
        raise AharlError(f"input file {path} does not exist; pass a JSONL file of {{\"completion\": ..., \"answer\": ...}} rows")
    out: TextIO = open(args.output, "w") if args.output else sys.stdout
    bad = 0
    pending: list[tuple[str, str]] = []

    def flush() -> None:
        # Written chunk by chunk, so rows scored before a failing reward are kept.
        if not pending:
            return
        scores = score_completions([c for c, _ in pending], [a for _, a in pending], functions)
        for i in range(len(pending)):
            row = {name: values[i] for name, values in scores.per_function.items()}
            row["total"] = scores.total[i]
            out.write(json.dumps(row) + "\n")
        out.flush()
        pending.clear()

    try:
        with path.open() as rows:
            for number, line in enumerate(rows, start=1):
                if not line.strip():
                    continue
                problem, row = _parse_score_row(line)
                if problem:
                    bad += 1
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
        print(f"aharl: {bad} malformed row(s) skipped; each needs string fields \"completion\" and \"answer\"", file=sys.stderr)
        return 1
    return 0


def _parse_score_row(line: str) -> tuple[str | None, tuple[str, str]]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg})", ("", "")
    if not isinstance(row, dict):
        return "not a JSON object", ("", "")
    completion, answer = row.get("completion"), row.get("answer")
    if not isinstance(completion, str):
        return 'missing string field "completion"', ("", "")
    if answer is None:
        return 'missing field "answer"', ("", "")
    return None, (completion, str(answer))
