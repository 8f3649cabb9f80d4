"""Per-token log-probabilities and entropy from logits, a chunk of rows at a time.

``log_softmax(logits.float())`` over a whole batch materialises a second
``[rows, vocab]`` fp32 tensor; with Qwen2.5's 151,936-token vocabulary and
16 x 456 positions that is 4.4 GB. Here each chunk of rows is reduced to
``logsumexp`` and the selected logit, so the fp32 working set is
``[chunk_rows, vocab]``. For fp32 logits under autograd nothing of size
``[rows, vocab]`` is saved either: ``logsumexp`` keeps its input (a view of
the logits) and ``gather`` keeps only indices. For bf16 logits the fp32
upcast of every chunk would be saved for the backward pass (1.9 GB at the
3090 config's shape); there each chunk is checkpointed instead, so the
backward recomputes its upcast from the bf16 view.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, chunk_rows: int = 1024) -> torch.Tensor:
    """``log p(token_ids)`` under ``logits``, in fp32.

    logits: ``[..., vocab]``; token_ids: ``[...]`` (same leading shape).
    Equal to ``log_softmax(logits.float(), -1).gather(-1, ids)``.
    """
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)  # [rows, vocab]
    flat_ids = token_ids.reshape(-1, 1)  # [rows, 1]
    recompute = flat_logits.requires_grad and torch.is_grad_enabled() and flat_logits.dtype != torch.float32
    pieces = []
    for start in range(0, flat_logits.shape[0], chunk_rows):
        chunk = flat_logits[start : start + chunk_rows]  # [chunk, vocab]
        ids = flat_ids[start : start + chunk_rows]  # [chunk, 1]
        if recompute:
            pieces.append(torch.utils.checkpoint.checkpoint(_chunk_logprobs, chunk, ids, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(chunk, ids))
    if not pieces:
        return flat_logits.new_zeros(token_ids.shape, dtype=torch.float32)
    return torch.cat(pieces).view(token_ids.shape)  # [...]


def _chunk_logprobs(chunk: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[chunk]`` fp32 log-probs of ``ids`` ``[chunk, 1]`` under ``chunk`` ``[chunk, vocab]``."""
    selected = chunk.gather(-1, ids).squeeze(-1).float()  # [chunk]
    normaliser = torch.logsumexp(chunk.float(), dim=-1)  # [chunk]
    return selected - normaliser


@torch.no_grad()
def token_entropy(logits: torch.Tensor, chunk_rows: int = 1024) -> torch.Tensor:
    """Entropy of each position's next-token distribution, ``[...]``, fp32, no gradient."""
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)  # [rows, vocab]
    pieces = []
    for start in range(0, flat_logits.shape[0], chunk_rows):
        logp = torch.log_softmax(flat_logits[start : start + chunk_rows].float(), dim=-1)  # [chunk, vocab]
        pieces.append(-(logp.exp() * logp).sum(-1))  # [chunk]
    if not pieces:
        return flat_logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.cat(pieces).view(logits.shape[:-1])
