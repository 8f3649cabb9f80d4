"""CUDA IPC: the rollout worker maps the learner's packed bucket in GPU memory, no copy between processes.

The colocated layout on one GPU: NCCL cannot pair two processes on the same
device, but a CUDA IPC handle lets the receiver open the sender's allocation.
The sender must keep the packed buffer alive until the receiver has loaded it.

The handle travels through vLLM's ``collective_rpc``, whose msgpack encoder
refuses functions, classes and dtypes (without the insecure pickle fallback).
torch's ``reduce_tensor`` gives exactly those (``rebuild_cuda_tensor`` and
its arguments), so the handle goes as plain values (:func:`to_wire`) and the
receiver rebuilds it (:func:`from_wire`), resolving classes from an allow-list.

On CPU the same choreography runs with a CPU twin of the device call: the
packed bucket lives in a shared-memory file (``/dev/shm``) that the receiver
maps, and its handle (path, size) takes the same trip through
``collective_rpc``. So packing, the handle's passage through vLLM's channel,
the per-bucket release and the worker-side load all run in the CPU suite.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Iterable, Iterator

import torch

from aharl.sync.buckets import pack_bucket, unpack_bucket

# Positions in the arguments of torch's ``rebuild_cuda_tensor`` (what
# ``reduce_tensor`` returns for a CUDA tensor): tensor_cls, tensor_size,
# tensor_stride, tensor_offset, storage_cls, dtype, storage_device, ...
_TENSOR_CLS, _SIZE, _STRIDE, _STORAGE_CLS, _DTYPE, _DEVICE = 0, 1, 2, 4, 5, 6
_CLASSES: dict[str, type] = {
    f"{cls.__module__}.{cls.__qualname__}": cls
    for cls in (torch.Tensor, torch.nn.Parameter, torch.storage.TypedStorage, torch.storage.UntypedStorage)
}


def to_wire(rebuild_args: tuple) -> list[Any]:
    """``rebuild_cuda_tensor``'s arguments as msgpack-safe values: classes and dtype by name, sizes as lists."""
    wire = list(rebuild_args)
    for index in (_TENSOR_CLS, _STORAGE_CLS):
        cls = wire[index]
        wire[index] = f"{cls.__module__}.{cls.__qualname__}"
    wire[_SIZE], wire[_STRIDE] = list(wire[_SIZE]), list(wire[_STRIDE])
    wire[_DTYPE] = str(wire[_DTYPE]).removeprefix("torch.")
    return wire


def from_wire(wire: list[Any], device_index: int) -> tuple:
    """The arguments back, for ``rebuild_cuda_tensor`` in this process, on ``device_index``."""
    args = list(wire)
    for index in (_TENSOR_CLS, _STORAGE_CLS):
        if args[index] not in _CLASSES:
            raise ValueError(
                f"a CUDA IPC handle names class {args[index]!r}, which is not one torch rebuilds tensors from"
            )
        args[index] = _CLASSES[args[index]]
    args[_SIZE], args[_STRIDE] = torch.Size(args[_SIZE]), tuple(args[_STRIDE])
    args[_DTYPE] = getattr(torch, args[_DTYPE])
    args[_DEVICE] = device_index
    return tuple(args)


class SharedCpuBuffer:
    """The CPU twin's packed bucket: a file in shared memory that both processes map; :meth:`release` removes it."""

    def __init__(self, packed: torch.Tensor, directory: str) -> None:
        self.path = os.path.join(directory, f"aharl-ipc-{uuid.uuid4().hex}")
        self.nbytes = packed.numel()
        self.mapped = torch.from_file(self.path, shared=True, size=self.nbytes, dtype=torch.uint8)  # [bucket_bytes]
        self.mapped.copy_(packed)

    def release(self) -> None:
        self.mapped = None
        if os.path.exists(self.path):
            os.remove(self.path)


def send(weights: Iterable[tuple[str, torch.Tensor]], cpu_directory: str) -> tuple[Any, dict[str, Any]]:
    """Pack ``weights`` into one buffer ``[bucket_bytes]``; returns it (keep it until :func:`release`) and its handle.

    The buffer is on the weights' GPU, or in a shared-memory file under ``cpu_directory`` for CPU weights.
    """
    packed, meta = pack_bucket(weights)
    if not packed.is_cuda:
        shared = SharedCpuBuffer(packed, cpu_directory)
        return shared, {"shared_file": shared.path, "nbytes": shared.nbytes, "meta": meta}
    from torch.multiprocessing.reductions import reduce_tensor

    torch.cuda.synchronize()
    _, rebuild_args = reduce_tensor(packed)
    return packed, {"handle": to_wire(rebuild_args), "meta": meta}


def release(buffers: Iterable[Any]) -> None:
    """Free what :func:`send` returned, once the receiver has loaded it."""
    for buffer in buffers:
        if isinstance(buffer, SharedCpuBuffer):
            buffer.release()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def receive(bucket: dict[str, Any], device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Open the sender's buffer from this process, on ``device``, and view the tensors in it (no copies)."""
    if "shared_file" in bucket:
        packed = torch.from_file(bucket["shared_file"], shared=False, size=bucket["nbytes"], dtype=torch.uint8)
    else:
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        index = device.index if device.index is not None else torch.cuda.current_device()
        packed = rebuild_cuda_tensor(*from_wire(bucket["handle"], index))  # [bucket_bytes] uint8 on the shared GPU
    yield from unpack_bucket(packed, bucket["meta"])
