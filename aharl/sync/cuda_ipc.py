"""CUDA IPC: the rollout worker maps the learner's packed bucket in GPU memory, no copy between processes.

The colocated layout on one GPU: NCCL cannot pair two processes on the same
device, but a CUDA IPC handle lets the receiver open the sender's allocation.
The sender must keep the packed buffer alive until the receiver has loaded it.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from aharl.sync.buckets import pack_bucket, unpack_bucket

# Index of the device ordinal in the argument tuple that torch's
# ``reduce_tensor`` returns for a CUDA tensor (``rebuild_cuda_tensor``).
_DEVICE_ARG = 6


def send(weights: Iterable[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Pack ``weights`` into one GPU buffer ``[bucket_bytes]``; returns it (keep it alive) and its handle."""
    from torch.multiprocessing.reductions import reduce_tensor

    packed, meta = pack_bucket(weights)
    torch.cuda.synchronize()
    return packed, {"handle": reduce_tensor(packed), "meta": meta}


def receive(bucket: dict[str, Any], device_index: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Open the sender's buffer on this process's ``device_index`` and view the tensors in it."""
    rebuild, rebuild_args = bucket["handle"]
    args = list(rebuild_args)
    args[_DEVICE_ARG] = device_index
    packed = rebuild(*args)  # [bucket_bytes] uint8 on the shared GPU
    yield from unpack_bucket(packed, bucket["meta"])
