"""Methods added to vLLM's worker process to receive the learner's weights.

vLLM runs the model in its own worker process; ``LLM.collective_rpc(name,
args)`` calls a method of that worker. This class is passed as
``worker_extension_cls`` so the methods below exist there. Each takes
tensors from a transport's ``receive`` (:mod:`aharl.sync`, which holds both
sides of every transport) and loads them into vLLM's model:

- ``load_from_files`` (:mod:`~aharl.sync.shm`): through the model runner's
  ``reload_weights``, because on CPU vLLM repacks weights at start-up and
  plain ``load_weights`` fails afterwards.
- ``load_from_cuda_ipc`` (:mod:`~aharl.sync.cuda_ipc`, or its shared-memory
  twin on CPU).
- ``init_nccl`` / ``load_from_nccl`` (:mod:`~aharl.sync.nccl`; gloo on CPU).

``_load`` is the one place that differs between CPU and GPU.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator

import torch

from aharl.sync import cuda_ipc, nccl, shm

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
    rank: int

    def _model(self):
        return self.model_runner.model

    def _load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load ``(name, tensor)`` pairs into vLLM's model (in HF names); returns how many.

        The device call is the only difference: on CPU vLLM repacks weights
        at start-up, so a live engine takes them through the model runner's
        ``reload_weights`` (plain ``load_weights`` fails afterwards) and a tied
        LM head is re-packed; on GPU the model's ``load_weights`` copies each
        tensor into its (tensor-parallel) shard.
        """
        count = 0

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for pair in weights:
                count += 1
                yield pair

        if self.device.type == "cpu":
            _quiet_expected_reload_gaps(self._tied_lm_head())
            self.model_runner.reload_weights(weights_iterator=counted())
            self._refresh_tied_lm_head()
        else:
            self._model().load_weights(weights=counted())
            torch.cuda.synchronize(self.device)
        return count

    def load_from_files(self, paths: list[str]) -> int:
        """Load every tensor in the safetensors ``paths``; returns the tensor count."""
        return self._load(shm.receive(paths))

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

    def load_from_cuda_ipc(self, bucket: dict[str, Any], final: bool = True) -> int:
        """Map the learner's packed bucket from its handle and load its tensors; returns how many arrived.

        On CPU a reload takes the whole model at once (a layer whose HF
        tensors fall in two buckets must see both), so buckets are copied
        out of the sender's buffer, which it frees after this call, and
        loaded together with the ``final`` one.
        """
        weights = list(cuda_ipc.receive(bucket, self.device))
        if self.device.type != "cpu":
            return self._load(weights)
        staged = getattr(self, "_aharl_staged", [])
        staged.extend((name, tensor.clone()) for name, tensor in weights)
        self._aharl_staged = [] if final else staged
        if final:
            self._load(staged)
        return len(weights)

    def init_nccl(self, master_address: str, master_port: int, first_rank: int, world_size: int) -> None:
        """Join the learner's broadcast group (learner rank 0 is rank 0 there) as ``first_rank`` + this worker's rank."""
        self._aharl_group = nccl.Group(master_address, master_port, first_rank + self.rank, world_size, self.device)

    def load_from_nccl(self, meta: list[nccl.WeightMeta]) -> int:
        """Receive each ``(name, dtype, shape)`` by broadcast from rank 0 and load it, one tensor at a time."""
        return self._load(nccl.receive(self._aharl_group, meta))

    def parameter_checksum(self) -> float:
        """Sum of |w| over all parameters: a cheap fingerprint to compare across a sync."""
        with torch.no_grad():
            return float(sum(p.detach().double().abs().sum().item() for p in self._model().parameters()))
