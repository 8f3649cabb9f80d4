"""A live progress bar (step, reward, ETA) on a terminal; the ETA also goes in each step's line.

On a terminal the bar sits under the per-step lines; where stdout is not a
terminal (``ray job submit``, CI, a log file) there is no bar, only the lines,
each ending with the ETA, so logs stay one line per step.
"""

from __future__ import annotations

import sys
from typing import Callable


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def eta_seconds(step_seconds: list[float], remaining_steps: int, window: int = 10) -> float | None:
    """Remaining steps times the mean of the last ``window`` step times (the first step is slow: skipped once others exist)."""
    if not step_seconds:
        return None
    recent = step_seconds[1:] if len(step_seconds) > 1 else step_seconds
    recent = recent[-window:]
    return remaining_steps * sum(recent) / len(recent)


class Progress:
    """Prints step lines; on a terminal, keeps a tqdm bar below them."""

    def __init__(
        self, total_steps: int, first_step: int, print_fn: Callable[[str], None], bar: bool | None = None
    ) -> None:
        """``bar``: None draws one when stdout is a terminal."""
        self.total = total_steps
        self.print_fn = print_fn
        self.step_seconds: list[float] = []
        use_bar = sys.stdout.isatty() if bar is None else bar
        self.bar = None
        if use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=first_step - 1, unit="step", dynamic_ncols=True, leave=False)

    def step_done(self, step: int, seconds: float, reward: float, line: str | None) -> str:
        """Record a finished step; print its line (with the ETA) when given one. Returns the ETA text."""
        self.step_seconds.append(seconds)
        eta = eta_seconds(self.step_seconds, self.total - step)
        eta_text = format_duration(eta) if eta is not None else "?"
        if line is not None:
            self.write(f"{line} | eta {eta_text}")
        if self.bar is not None:
            self.bar.set_postfix_str(f"reward {reward:.3f} eta {eta_text}")
            self.bar.update(1)
        return eta_text

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            self.print_fn(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
