"""Group-relative advantages: how much better each completion did than its siblings.

Rewards arrive flat, ``[num_prompts * group_size]``, with the completions of
one prompt next to each other (the order rollout returns them in).
"""

from __future__ import annotations

from typing import Literal

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale_by_std: bool = True,
    stats: Literal["group", "batch"] = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Advantage of each completion, ``[num_prompts * group_size]``.

    ``A_i = (r_i - mean(group)) / (std + eps)`` with the unbiased std (the
    reference recipe, TRL 0.14). The mean is always the group's: a prompt's
    difficulty must not leak into its completions' advantages.

    - ``scale_by_std=False`` is Dr. GRPO: dividing by a small group std
      over-weights prompts that are nearly always solved or failed.
    - ``stats="batch"`` divides by the std of every reward in the batch
      instead of the group's, a steadier scale when groups are small.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be flat with a multiple of {group_size} entries, got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.float().view(-1, group_size)  # [num_prompts, group_size]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [num_prompts, group_size]
    if scale_by_std:
        if stats == "group":
            std = grouped.std(dim=1, keepdim=True)  # [num_prompts, 1], unbiased
        else:
            std = rewards.float().std()  # scalar, unbiased over the batch
        centred = centred / (std + eps)
    return centred.reshape(-1)  # [num_prompts * group_size]


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[num_prompts]`` bool: the groups whose rewards are not all equal.

    A group of equal rewards has every advantage 0 (whatever the scaling), so
    it adds no policy gradient; DAPO's dynamic sampling drops such groups.
    """
    grouped = rewards.view(-1, group_size)  # [num_prompts, group_size]
    return ~(grouped == grouped[:, :1]).all(dim=1)  # [num_prompts]


def zero_spread_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Share of groups whose completions all got the same reward (they teach nothing)."""
    return (~informative_groups(rewards, group_size)).float().mean().item()


def advantage_metrics(rewards: torch.Tensor, advantages: torch.Tensor, group_size: int) -> dict[str, float]:
    """What the advantages looked like this step, for the log."""
    return {
        "advantage/mean": advantages.mean().item(),
        "advantage/std": advantages.std().item() if advantages.numel() > 1 else 0.0,
        "advantage/min": advantages.min().item(),
        "advantage/max": advantages.max().item(),
        "reward/zero_spread_groups": zero_spread_fraction(rewards, group_size),
    }
