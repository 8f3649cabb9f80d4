"""The policy's (or reference's) log-probs of a micro-batch's completion tokens, for either layout.

Both layouts return ``[S, C]`` tensors aligned with ``completion_mask``, so
the loss, the sync check and the metrics never see which one ran. For the
packed layout the model's LM head runs only at ``logit_index`` (``T`` rows,
one per completion token), and the ``[T]`` results are laid back into
``[S, C]`` in row-major order of the mask.
"""

from __future__ import annotations

import torch

from aharl.grpo.batch import MicroBatch
from aharl.grpo.logprobs import token_entropy, token_logprobs

# Attention implementations that take an arbitrary 4D mask as it is given.
BOOL_MASK_ATTENTION = ("sdpa", "flex_attention")
ADDITIVE_MASK_ATTENTION = ("eager",)


def supports_shared_prefix(model: torch.nn.Module) -> bool:
    """Whether ``model``'s attention accepts the packed layout's 4D mask (flash attention takes none)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "eager") or "eager"
    return impl in BOOL_MASK_ATTENTION + ADDITIVE_MASK_ATTENTION


def model_mask(mask: torch.Tensor, model: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The packed layout's ``[1, 1, L, L]`` bool mask in the form the attention wants: bool for SDPA, additive for eager."""
    impl = getattr(model.config, "_attn_implementation", "eager") or "eager"
    if impl in ADDITIVE_MASK_ATTENTION:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def unflatten(values: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """``[T]`` per-token values -> ``[S, C]`` (zeros on padding), keeping the gradient."""
    out = values.new_zeros(completion_mask.shape)  # [S, C]
    out[completion_mask.bool()] = values
    return out


def completion_logprobs(
    model: torch.nn.Module, mb: MicroBatch, chunk_rows: int, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logp, entropy)``: ``[S, C]`` fp32 log-probs of the completion tokens (with gradient when enabled) and, if asked, each position's entropy (no gradient)."""
    if mb.packed:
        inner = getattr(model, "module", model)  # a DeepSpeed engine wraps the HF model
        dtype = next(inner.parameters()).dtype
        logits = model(
            input_ids=mb.input_ids,
            attention_mask=model_mask(mb.attention_mask, inner, dtype),
            position_ids=mb.position_ids,
            logits_to_keep=mb.logit_index,
        ).logits[0]  # [T, V]
        targets = mb.completion_ids[mb.completion_mask.bool()]  # [T]
        logp = unflatten(token_logprobs(logits, targets, chunk_rows), mb.completion_mask)  # [S, C]
        ent = unflatten(token_entropy(logits.detach(), chunk_rows), mb.completion_mask) if entropy else None
        return logp, ent
    logits = model(
        input_ids=mb.input_ids,
        attention_mask=mb.attention_mask,
        position_ids=mb.position_ids,
        logits_to_keep=mb.completion_len + 1,
    ).logits[:, :-1]  # [S, C, V]: position P-1+t predicts completion token t
    logp = token_logprobs(logits, mb.completion_ids, chunk_rows)  # [S, C]
    return logp, token_entropy(logits.detach(), chunk_rows) if entropy else None
