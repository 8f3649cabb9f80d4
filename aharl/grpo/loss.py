"""The GRPO objective: clipped surrogate, k3 KL to a reference, and loss aggregation.

All tensors are per completion token, ``[num_sequences, max_completion_len]``,
with ``mask`` marking real tokens (up to and including the first EOS) and
zeros on padding.

Aggregation decides what each token's term is divided by:

- ``sequence`` (the reference recipe, TRL 0.14): mean over each sequence's
  tokens, then mean over sequences. A long completion's tokens each weigh
  less than a short one's.
- ``token`` (DAPO): sum over all tokens / number of tokens in the step. Every
  token weighs the same.
- ``dr_grpo`` (Dr. GRPO): sum over all tokens / (sequences x max completion
  tokens), a constant, so length carries no bias.
- ``bnpo`` (TRL's ``loss_type="bnpo"``): token mean over each micro-batch,
  then mean over the step's micro-batches. The one aggregation that depends
  on how the step is split: with one sequence per micro-batch it is
  ``sequence``, with one micro-batch it is ``token``.

The divisors are the counts for the *whole optimizer step* (pass
``num_sequences`` / ``num_tokens`` / ``num_micro_batches`` when the step is
split into micro-batches or across data-parallel ranks): then the
micro-batch losses add up to the loss of the full batch, however it is split
(``bnpo`` aside).

The importance ratio is per token (GRPO) or per sequence (GSPO,
``ratio_level="sequence"``): the geometric mean of a completion's token
ratios, ``s_i = exp(mean_t log(pi / pi_old))``, one ratio clipped for the
whole completion, which matches a reward given to the whole completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Aggregation = Literal["sequence", "token", "dr_grpo", "bnpo"]
RatioLevel = Literal["token", "sequence"]
RolloutCorrection = Literal["none", "tis", "mis"]


def rollout_correction_weights(
    old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, mode: RolloutCorrection, cap: float
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Importance weights ``[S, L]`` (no gradient) for tokens sampled by a policy other than the one the loss assumes.

    The surrogate's ratio is taken against ``old_logp``, the learner's own
    log-probs of the sampling policy's weights. The tokens were drawn by the
    rollout engine, whose log-probs ``rollout_logp`` differ by numerics
    (bf16 kernels, another attention) and, with a one-step-off rollout, by a
    step of training. ``rho = exp(old_logp - rollout_logp)`` per token
    corrects the expectation back to ``old_logp``'s policy:

    - ``tis`` (truncated importance sampling): each token's term is weighted
      by ``min(rho, cap)``; the truncation bounds the variance a rare token
      with a tiny rollout probability would bring, at a small bias.
    - ``mis`` (masked importance sampling, per sequence): a completion whose
      geometric-mean ratio ``exp(mean_t log rho)`` leaves ``[1/cap, cap]`` is
      left out (weight 0), the rest keep weight 1: an outlier sequence is
      dropped rather than shrunk.

    ``none`` returns ``None`` (the loss is then exactly the uncorrected one).
    """
    if mode == "none":
        return None, {}
    with torch.no_grad():
        m = mask.to(torch.float32)
        log_rho = (old_logp.float() - rollout_logp.float()) * m  # [S, L]
        n = m.sum().clamp(min=1)
        if mode == "tis":
            rho = torch.exp(log_rho)  # [S, L]
            weights = rho.clamp(max=cap) * m
            metrics = {"rollout_correction/truncated_fraction": (((rho > cap).float() * m).sum() / n).item()}
        elif mode == "mis":
            seq_log_rho = log_rho.sum(dim=1) / m.sum(dim=1).clamp(min=1)  # [S]
            keep = (seq_log_rho.abs() <= torch.log(torch.tensor(cap))).float()  # [S]
            weights = keep.unsqueeze(1) * m  # [S, L]
            metrics = {"rollout_correction/masked_fraction": 1.0 - keep.mean().item()}
        else:
            raise ValueError(f"unknown rollout correction {mode!r}")
        metrics["rollout_correction/weight_mean"] = (weights.sum() / n).item()
    return weights, metrics


@dataclass
class GRPOLoss:
    """The scalar to back-propagate, and what it was made of."""

    loss: torch.Tensor
    metrics: dict[str, float]


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token ``exp(ref - logp) - (ref - logp) - 1``: non-negative, unbiased for KL(pi || ref)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation,
    *,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    max_completion_tokens: int | None = None,
    num_micro_batches: int = 1,
) -> torch.Tensor:
    """Reduce ``[num_sequences, len]`` terms to a scalar by the rule of ``mode`` (module docstring)."""
    mask = mask.to(per_token.dtype)
    n_seq = num_sequences if num_sequences is not None else per_token.shape[0]
    if mode == "sequence":
        lengths = mask.sum(dim=1).clamp(min=1)  # [num_sequences]
        return ((per_token * mask).sum(dim=1) / lengths).sum() / n_seq
    if mode == "token":
        n_tok = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
        return (per_token * mask).sum() / n_tok
    if mode == "dr_grpo":
        if max_completion_tokens is None:
            raise ValueError("dr_grpo aggregation needs max_completion_tokens")
        return (per_token * mask).sum() / (n_seq * max_completion_tokens)
    if mode == "bnpo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1) / num_micro_batches
    raise ValueError(f"unknown loss aggregation {mode!r}")


def grpo_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    aggregation: Aggregation = "sequence",
    max_completion_tokens: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    entropy: torch.Tensor | None = None,
    is_weights: torch.Tensor | None = None,
    ratio_level: RatioLevel = "token",
    num_micro_batches: int = 1,
) -> GRPOLoss:
    """Per-token ``-(min(r A, clip(r) A) - beta KL)``, aggregated.

    logp: ``[S, L]`` current policy, with gradient. advantages: ``[S]``.
    old_logp: ``[S, L]`` the policy that sampled (None: one update per batch,
    so the ratio is exactly 1 but still carries the gradient of logp).
    ref_logp: ``[S, L]`` frozen reference, needed when beta > 0.
    is_weights: ``[S, L]`` rollout-correction weights on the policy-gradient
    term (:func:`rollout_correction_weights`); None leaves the loss as it is.
    ratio_level: ``token`` (GRPO) or ``sequence`` (GSPO: one ratio per
    completion, broadcast over its tokens).
    """
    if old_logp is None:
        old_logp = logp.detach()
    if ratio_level == "sequence":
        m = mask.to(logp.dtype)
        log_ratio = ((logp - old_logp) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)  # [S]
        ratio = torch.exp(log_ratio).unsqueeze(1).expand_as(logp)  # [S, L]
    elif ratio_level == "token":
        ratio = torch.exp(logp - old_logp)  # [S, L]
    else:
        raise ValueError(f"unknown ratio level {ratio_level!r}")
    adv = advantages.to(logp.dtype).unsqueeze(1)  # [S, 1]
    unclipped = ratio * adv  # [S, L]
    clipped = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * adv  # [S, L]
    surrogate = torch.minimum(unclipped, clipped)  # [S, L]
    if is_weights is not None:
        surrogate = surrogate * is_weights.to(surrogate.dtype)
    per_token = -surrogate
    kl = None
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp)  # [S, L]
        per_token = per_token + beta * kl
    loss = aggregate(
        per_token,
        mask,
        aggregation,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
        max_completion_tokens=max_completion_tokens,
        num_micro_batches=num_micro_batches,
    )

    with torch.no_grad():
        m = mask.to(torch.float32)
        n = m.sum().clamp(min=1)
        # A token is clipped when the clipped branch is the smaller one, i.e.
        # the ratio left the trust region in the direction the advantage pushes.
        is_clipped = ((ratio < 1 - clip_eps_low) & (adv < 0)) | ((ratio > 1 + clip_eps_high) & (adv > 0))
        metrics = {
            "loss": loss.item(),
            "clip_fraction": ((is_clipped.float() * m).sum() / n).item(),
            "ratio/mean": ((ratio.float() * m).sum() / n).item(),
            "kl": ((kl.float() * m).sum() / n).item() if kl is not None else 0.0,
            "tokens": m.sum().item(),
        }
        if entropy is not None:
            metrics["entropy"] = ((entropy.float() * m).sum() / n).item()
    return GRPOLoss(loss, metrics)


@dataclass(frozen=True)
class LossSettings:
    """The loss's fixed choices for a run (built once from ``grpo.*``); a call adds one micro-batch's tensors.

    Splits :func:`grpo_loss`'s keywords into what the config decides (here)
    and what each micro-batch brings (the call's arguments), so the learner's
    micro-step passes only the latter.
    """

    beta: float = 0.0
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    aggregation: Aggregation = "sequence"
    max_completion_tokens: int | None = None
    ratio_level: RatioLevel = "token"
    rollout_correction: RolloutCorrection = "none"
    rollout_correction_cap: float = 2.0

    def correction(
        self, sampler_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """:func:`rollout_correction_weights` under this run's ``grpo.rollout_correction``."""
        return rollout_correction_weights(
            sampler_logp, rollout_logp, mask, self.rollout_correction, self.rollout_correction_cap
        )

    def __call__(
        self,
        logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        *,
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
        entropy: torch.Tensor | None,
        is_weights: torch.Tensor | None,
        counts: "BatchCounts",
    ) -> GRPOLoss:
        """:func:`grpo_loss` of one micro-batch (shapes as there) with this run's settings."""
        return grpo_loss(
            logp,
            advantages,
            mask,
            old_logp=old_logp,
            ref_logp=ref_logp,
            beta=self.beta,
            clip_eps_low=self.clip_eps_low,
            clip_eps_high=self.clip_eps_high,
            aggregation=self.aggregation,
            max_completion_tokens=self.max_completion_tokens,
            num_sequences=counts.num_sequences,
            num_tokens=counts.num_tokens,
            entropy=entropy,
            is_weights=is_weights,
            ratio_level=self.ratio_level,
            num_micro_batches=counts.num_micro_batches,
        )


@dataclass(frozen=True)
class BatchCounts:
    """The whole optimizer step's size on all ranks: what makes each micro-batch's loss its exact share."""

    num_sequences: int
    num_tokens: float
    num_micro_batches: int
