"""One device and dtype policy for the learner, both rollout backends and the benchmarks.

Every part of a run asks here, so the learner and the rollout engine never
disagree about precision (a disagreement shows up as a large
``sync/logp_diff`` that no weight sync can fix).
"""

from __future__ import annotations

import torch

from aharl.config import Config

_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(config: Config) -> str:
    """``cuda`` or ``cpu``: ``placement.device``, or what this machine has for ``auto``."""
    if config.placement.device != "auto":
        return config.placement.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def training_dtype(config: Config, device: str) -> torch.dtype:
    """The learner's dtype: bf16 on a GPU, fp32 on CPU (where bf16 matmuls are ~4x slower), unless the config says."""
    precision = config.learner.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


def rollout_dtype(config: Config, device: str) -> torch.dtype:
    """The rollout engine's dtype: ``model.dtype``, or bf16 on a GPU and fp32 on CPU for ``auto``."""
    if config.model.dtype != "auto":
        return _TORCH_DTYPES[config.model.dtype]
    return torch.bfloat16 if device == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16`` (the spelling vLLM's ``dtype=`` takes)."""
    return str(dtype).removeprefix("torch.")
