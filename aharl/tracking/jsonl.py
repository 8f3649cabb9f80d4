"""The run's JSON-lines files (metrics, samples): one reader, one writer, one rule for torn lines.

A run killed mid-write leaves a partial last line; readers skip it, and a
resumed run drops it along with the steps after its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Each whole JSON object in ``path``, in order (torn or non-object lines skipped)."""
    for _, record in _lines(path):
        if record is not None:
            yield record


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line (readable while the run goes on).

    A value JSON has no form for (a dataset column's date, say) is written as its text.
    """
    with path.open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def truncate_after(path: Path, step: int) -> int:
    """Drop the records of steps after ``step`` (logged after the checkpoint a run resumes from).

    Returns how many lines were dropped; a torn last line (a kill mid-write) goes too.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line, record in _lines(path):
        if record is not None and record.get("step", 0) <= step:
            kept.append(line)
        else:
            dropped += 1
    path.write_text("".join(line + "\n" for line in kept))
    return dropped


def _lines(path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        yield line, record if isinstance(record, dict) else None
