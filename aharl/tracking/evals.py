"""The evaluation file: one JSON format for ``aharl eval --output`` and a run's ``eval/<label>.json``.

``{"meta": {...}, "modes": {"greedy": {"summary": {...}, "records": [...]}}}``,
so ``aharl report`` takes either kind, and a training run's before/after
files can be compared with a separate ``aharl eval`` of any other model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from aharl.errors import AharlError
from aharl.types import EvalResult


def write_eval_file(path: Path, results: Mapping[str, EvalResult], meta: Mapping[str, Any] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    modes = {name: {"summary": r.summary, "records": r.records} for name, r in results.items()}
    path.write_text(json.dumps({"meta": dict(meta or {}), "modes": modes}, indent=1))
    return path


def read_eval_file(path: Path) -> dict[str, EvalResult]:
    """The per-mode results of an evaluation file; a missing or foreign file is a one-line error."""
    if not path.is_file():
        raise AharlError(f"{path} does not exist; write it with aharl eval ... --output {path}")
    try:
        modes = json.loads(path.read_text())["modes"]
        return {name: EvalResult(name, mode["summary"], mode["records"]) for name, mode in modes.items()}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AharlError(
            f"{path} is not an aharl evaluation file ({type(exc).__name__}: {exc}); write it with aharl eval --output"
        ) from None


def run_eval_path(run_dir: Path, label: str) -> Path:
    """Where a training run keeps the evaluation labelled ``label`` (``before``, ``step 10``, ``after``)."""
    return run_dir / "eval" / f"{label.replace(' ', '-')}.json"
