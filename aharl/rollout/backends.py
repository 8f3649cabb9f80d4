"""The rollout backends by name (``rollout.backend``): the one module that imports them.

:mod:`aharl.rollout.engine` holds the interface and the sampling settings
that both backends import; keeping the choice here leaves no import cycle
inside ``rollout/``. Each backend is imported only when chosen: vLLM is heavy.
"""

from __future__ import annotations

from aharl.config import Config
from aharl.rollout.engine import RolloutEngine


def engine_class(backend: str) -> type:
    """The class for ``rollout.backend`` (imported lazily: vLLM is heavy and optional)."""
    if backend == "vllm":
        from aharl.rollout.vllm_engine import VLLMEngine

        return VLLMEngine
    if backend == "hf":
        from aharl.rollout.hf_engine import HFEngine

        return HFEngine
    raise ValueError(f"unknown rollout backend {backend!r}")  # config validation admits only the two


def build_rollout_engine(config: Config, device: str, backend: str | None = None) -> RolloutEngine:
    """A rollout engine for ``config`` on ``device`` (``backend`` overrides ``rollout.backend``)."""
    return engine_class(backend or config.rollout.backend)(config, device)
