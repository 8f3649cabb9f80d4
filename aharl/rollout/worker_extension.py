"""Methods added to vLLM's worker process to receive the learner's weights.

vLLM runs the model in its own worker process; ``LLM.collective_rpc(name,
args)`` calls a method of that worker. This class is passed as
``worker_extension_cls`` so the methods below exist there. Three transports:

- ``load_from_files``: safetensors files (in /dev/shm on CPU). Uses the model
  runner's ``reload_weights``, because on CPU vLLM repacks weights at start-up
  and plain ``load_weights`` fails afterwards.
- ``load_from_cuda_ipc``: CUDA IPC handles of a packed bucket in the learner's
  GPU memory (colocated on one GPU, where NCCL cannot pair two processes).
- ``init_nccl`` / ``load_from_nccl``: a broadcast from learner rank 0 when the
  rollout has its own GPUs.

Only the worker side lives here; :mod:`aharl.sync` is the learner side.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch

# vLLM's layer-wise reload warns "<Layer>: Failed to load weights" for every
# layer that got no tensor in a reload. For these that is expected on every
# sync: rotary embeddings hold a computed cache, not weights, and a tied LM
# head is refreshed from the embedding by ``_refresh_tied_lm_head``. Any other
# layer's warning still shows (a real gap in what the learner sent).
_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class ExpectedReloadGaps(logging.Filter):
    """Drops vLLM's "failed to load" warning for the named layer classes only."""

    def __init__(self, layers: frozenset[str]) -> None:
        super().__init__()
        self.layers = layers

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == "%s: Failed to load weights" and args and args[0] in self.layers)


def _quiet_expected_reload_gaps(tied_lm_head: bool) -> None:
    logger = logging.getLogger(_RELOAD_LOGGER)
    if not any(isinstance(f, ExpectedReloadGaps) for f in logger.filters):
        layers = {"RotaryEmbedding"} | ({"ParallelLMHead"} if tied_lm_head else set())
        logger.addFilter(ExpectedReloadGaps(frozenset(layers)))


class WeightSyncExtension:
    """Mixed into vLLM's worker class (it provides ``model_runner`` and ``device``)."""

    model_runner: Any
    device: Any

    def _model(self):
        return self.model_runner.model

    def load_from_files(self, paths: list[str]) -> int:
        """Load every tensor in the safetensors ``paths``; returns the tensor count."""
        from safetensors.torch import load_file

        count = 0

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for path in paths:
                for name, tensor in load_file(path).items():
                    count += 1
                    yield name, tensor

        _quiet_expected_reload_gaps(self._tied_lm_head())
        self.model_runner.reload_weights(weights_iterator=weights())
        self._refresh_tied_lm_head()
        return count

    def _tied_lm_head(self) -> bool:
        model = self._model()
        return bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False)) and hasattr(model, "lm_head")

    def _refresh_tied_lm_head(self) -> None:
        """Re-pack a tied LM head from the freshly loaded embedding.

        On CPU vLLM pre-packs every linear weight (oneDNN / SGL kernels) at
        load time. A tied ``lm_head`` receives no tensor of its own in a reload
        (loaders skip ``lm_head.*`` when embeddings are tied), so its packed
        copy would keep the old weights and every logit would be stale.
        """
        model = self._model()
        lm_head = getattr(model, "lm_head", None)
        config = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
        inner = getattr(model, "model", None)
        embed = getattr(inner, "embed_tokens", None)
        if lm_head is None or embed is None or not config:
            return
        lm_head.weight = embed.weight
        method = getattr(lm_head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(lm_head)

    def load_from_cuda_ipc(self, bucket: dict[str, Any]) -> int:
        """Rebuild the learner's packed bucket from its IPC handle and load its tensors."""
        from aharl.sync.buckets import unpack_bucket

        rebuild, rebuild_args = bucket["handle"]
        args = list(rebuild_args)
        args[6] = self.device.index if self.device.index is not None else torch.cuda.current_device()  # this process's device
        packed = rebuild(*args)  # [bucket_bytes] uint8 on the shared GPU
        weights = list(unpack_bucket(packed, bucket["meta"]))
        self._model().load_weights(weights=weights)
        torch.cuda.synchronize()
        return len(weights)

    def init_nccl(self, master_address: str, master_port: int, rank: int, world_size: int) -> None:
        """Join the learner's broadcast group (learner rank 0 is rank 0 there)."""
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(host=master_address, port=master_port, rank=rank, world_size=world_size)
        self._aharl_nccl = PyNcclCommunicator(group, device=self.device)

    def load_from_nccl(self, meta: list[tuple[str, str, list[int]]]) -> int:
        """Receive each ``(name, dtype, shape)`` by broadcast from rank 0 and load it."""
        model = self._model()
        for name, dtype, shape in meta:
            tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self._aharl_nccl.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
            model.load_weights(weights=[(name, tensor)])
        torch.cuda.synchronize()
        return len(meta)

    def parameter_checksum(self) -> float:
        """Sum of |w| over all parameters: a cheap fingerprint to compare across a sync."""
        with torch.no_grad():
            return float(sum(p.detach().double().abs().sum().item() for p in self._model().parameters()))
