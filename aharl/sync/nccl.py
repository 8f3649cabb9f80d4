"""NCCL broadcast: learner rank 0 sends every tensor to the rollout worker(s) on their own GPUs.

Both sides join one group formed once (``connect``, same call on each side
with its own rank; the learner is rank 0). The receiver learns names,
dtypes and shapes first (``meta``), then takes the tensors in that order.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch

# (name, dtype name, shape) of each tensor, in broadcast order.
WeightMeta = tuple[str, str, list[int]]


def connect(address: str, port: int, rank: int, world_size: int, device: Any) -> Any:
    """Join the broadcast group (vLLM's stateless group: it does not touch torch.distributed's default one)."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    group = StatelessProcessGroup.create(host=address, port=port, rank=rank, world_size=world_size)
    return PyNcclCommunicator(group, device=device)


def send(communicator: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
    count = 0
    for _, tensor in weights:
        communicator.broadcast(tensor.contiguous(), src=0, stream=torch.cuda.current_stream())
        count += 1
    torch.cuda.synchronize()
    return count


def receive(communicator: Any, meta: Sequence[WeightMeta], device: Any) -> Iterator[tuple[str, torch.Tensor]]:
    for name, dtype, shape in meta:
        tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        communicator.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
        yield name, tensor
    torch.cuda.synchronize()
