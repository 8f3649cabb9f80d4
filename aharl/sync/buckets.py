"""Group tensors into buckets of bounded size and pack each into one flat buffer.

One transfer per bucket instead of one per tensor: a 0.5B model has ~290
tensors, and a round trip each would cost more than the bytes themselves.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

# (name, dtype name, shape, byte offset, byte length)
TensorMeta = tuple[str, str, list[int], int, int]

# Every tensor starts at a multiple of this, so its bytes can be viewed as any dtype.
ALIGN_BYTES = 16


def plan_buckets(sizes: Sequence[tuple[str, int]], bucket_bytes: int) -> list[list[str]]:
    """Split ``(name, nbytes)`` in order into buckets of at most ``bucket_bytes``.

    A tensor larger than the limit gets a bucket of its own.
    """
    buckets: list[list[str]] = []
    current: list[str] = []
    used = 0
    for name, nbytes in sizes:
        if current and used + nbytes > bucket_bytes:
            buckets.append(current)
            current, used = [], 0
        current.append(name)
        used += nbytes
    if current:
        buckets.append(current)
    return buckets


def pack_bucket(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, list[TensorMeta]]:
    """Concatenate tensors' bytes into one uint8 buffer on their device; meta says where each is."""
    flats, meta, offset = [], [], 0
    for name, tensor in named:
        raw = tensor.detach().contiguous().view(-1).view(torch.uint8)  # [nbytes]
        meta.append((name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), offset, raw.numel()))
        padding = -raw.numel() % ALIGN_BYTES
        flats.append(raw)
        if padding:
            flats.append(raw.new_zeros(padding))
        offset += raw.numel() + padding
    return torch.cat(flats), meta  # [bucket_bytes]


def unpack_bucket(buffer: torch.Tensor, meta: Sequence[TensorMeta]) -> Iterator[tuple[str, torch.Tensor]]:
    """Views of the packed tensors, with their names (no copies)."""
    for name, dtype, shape, offset, length in meta:
        yield name, buffer[offset : offset + length].view(getattr(torch, dtype)).view(shape)
