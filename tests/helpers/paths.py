"""Paths the tests share: the checkout, and the GSM8K copy beside it (development data, never needed at run time)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
CONFIGS = REPO / "configs"  # the shipped configs (aharl/configs links here)
EMPTY_CONFIG = Path(__file__).resolve().parent / "empty.yaml"  # a valid config whose every setting comes from overrides
