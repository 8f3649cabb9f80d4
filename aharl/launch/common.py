"""What every command shares: loading a config with the checks that need more than the config module."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from aharl.config import Config, load_config
from aharl.errors import AharlError
from aharl.rewards.registry import check_reward_config


def load_run_config(path: str | None, overrides: Sequence[str] = ()) -> Config:
    """``path`` (a file or a shipped config's name) with ``overrides``, reward names checked too."""
    return load_config(path, overrides, checks=[check_reward_config])


def out_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_metrics_file(run_dir: Path) -> None:
    """Fail in one line on a ``metrics.jsonl`` the plots cannot read (not UTF-8, records without a step).

    A torn last line (a run killed mid-write) is fine: the reader skips it.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return  # the plotter names the missing file
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AharlError(
                f"{path} line {number} is not UTF-8; it is not a metrics file aharl wrote (pass a run directory, runs/NAME)"
            ) from None
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(record, dict) and (
            isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step)
        ):
            raise AharlError(
                f'{path} line {number} has no numeric "step"; it is not a metrics file aharl wrote (pass a run directory, runs/NAME)'
            )
