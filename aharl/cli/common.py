"""What every command shares: loading a config with the checks that need more than the config module."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from aharl.config import Config, load_config
from aharl.rewards.registry import check_reward_config


def load_run_config(path: str | None, overrides: Sequence[str] = ()) -> Config:
    """``path`` (a file or a shipped config's name) with ``overrides``, reward names checked too."""
    return load_config(path, overrides, checks=[check_reward_config])


def out_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out
