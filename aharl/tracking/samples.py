"""``samples.jsonl``: per step, which prompts were trained on and a few groups' completions.

The prompt indices make a run auditable (a resumed run can be checked to see
the same prompts in the same order); the completions are what a user reads
to see what the policy is actually writing, as TRL's completion logs do.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from aharl.tracking.jsonl import append_record
from aharl.types import ScoredGroup


def sample_rows(scored: Sequence[ScoredGroup], groups: int) -> list[dict[str, Any]]:
    """Every completion of the first ``groups`` groups, with its rewards, its dataset row and what the rewards logged.

    ``rewards`` holds each function's value (``null`` where it did not apply);
    ``columns`` the row's columns as the reward functions saw them; ``logged``
    the values reward functions added with ``log_extra``.
    """
    rows = []
    for sg in scored[:groups]:
        prompt = sg.group.prompt
        for i, completion in enumerate(sg.group.completions):
            row = {
                "question": prompt.question,
                "gold": prompt.answer,
                "completion": completion.text,
                "reward": sg.total[i],
                # NaN: the function returned None for the row (it did not apply).
                "rewards": {name: None if math.isnan(values[i]) else values[i] for name, values in sg.rewards.items()},
            }
            if prompt.columns:
                row["columns"] = prompt.columns
            if sg.extras:
                row["logged"] = {column: values[i] for column, values in sg.extras.items()}
            rows.append(row)
    return rows


class SamplesLog:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "samples.jsonl"

    def write(self, step: int, scored: Sequence[ScoredGroup], rows: list[dict[str, Any]]) -> None:
        record = {"step": step, "prompt_indices": [sg.group.prompt.index for sg in scored], "samples": rows}
        append_record(self.path, record)
