"""Bucket planning and flat packing, shared by every weight-sync transport."""

from __future__ import annotations

import torch

from aharl.sync.buckets import pack_bucket, plan_buckets, unpack_bucket


def test_buckets_respect_the_size_limit_and_keep_order():
    sizes = [("a", 40), ("b", 50), ("c", 30), ("d", 200), ("e", 10)]
    assert plan_buckets(sizes, 100) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert sum(plan_buckets(sizes, 10**9), []) == ["a", "b", "c", "d", "e"]


def test_pack_and_unpack_round_trip_mixed_dtypes():
    tensors = {
        "w": torch.randn(3, 4),
        "b": torch.randn(5).to(torch.bfloat16),
        "i": torch.arange(6, dtype=torch.int64).view(2, 3),
    }
    packed, meta = pack_bucket(tensors.items())
    assert packed.dtype == torch.uint8 and packed.numel() == 48 + 16 + 48  # bf16 x5 padded to 16 bytes
    out = dict(unpack_bucket(packed, meta))
    for name, tensor in tensors.items():
        assert out[name].dtype == tensor.dtype and torch.equal(out[name], tensor)
