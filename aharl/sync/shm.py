"""Shared-memory files: the learner writes safetensors buckets, the rollout worker reads them.

The transport for CPU runs (``/dev/shm`` is RAM, so a "file" costs one copy)
and for any layout on a single node. The directory is the driver's to create
and remove (:mod:`aharl.runtime.weight_sync`).
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable, Iterator, Sequence

import torch


def shared_memory_dir() -> str:
    """``/dev/shm`` (RAM) where the system has it, else the temporary directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def send(weights: Iterable[tuple[str, torch.Tensor]], buckets: Sequence[Sequence[str]], directory: str) -> list[str]:
    """Write ``weights`` as one safetensors file per bucket of names; returns the paths in order."""
    from safetensors.torch import save_file

    by_name = dict(weights)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for index, names in enumerate(buckets):
        path = os.path.join(directory, f"bucket-{index:04d}.safetensors")
        save_file({n: by_name[n].to("cpu").contiguous() for n in names}, path)
        paths.append(path)
    return paths


def receive(paths: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in the bucket files, lazily (one bucket in memory at a time)."""
    from safetensors.torch import load_file

    for path in paths:
        yield from load_file(path).items()
