"""Peak bytes of tensors that torch allocates inside a block: deterministic, unlike the process's RSS.

Every op's output is seen through a ``TorchDispatchMode``; a storage not seen
before counts as allocated until the tensor that brought it is freed. Views
share their base's storage and count nothing; tensors that existed before the
block (``existing``) count nothing either. RSS readings depend on the
allocator's caches and on what ran earlier in the process, which made the
old measurement of this pass or fail by test order.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorBytes(TorchDispatchMode):
    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._owned: set[int] = {t.untyped_storage().data_ptr() for t in existing}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._owned or storage.nbytes() == 0:
            return
        self._owned.add(key)
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(tensor, self._free, key, storage.nbytes())

    def _free(self, key: int, nbytes: int) -> None:
        self._owned.discard(key)
        self.live -= nbytes
