"""Scored groups -> padded tensors for the learner, one micro-batch at a time.

Layout of a micro-batch of S sequences: prompts are left-padded to the longest
prompt P and completions right-padded to the longest completion C, so every
completion starts at column P and the model's last C + 1 logits predict
exactly the completion tokens (``logits_to_keep`` saves computing the LM head
over the prompts). Position ids count real tokens only, so a left-padded
prompt sees the same positions it had in vLLM, which pads nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from aharl.types import ScoredGroup


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [S, P + C]
    attention_mask: torch.Tensor  # [S, P + C]
    position_ids: torch.Tensor  # [S, P + C]
    completion_ids: torch.Tensor  # [S, C]
    completion_mask: torch.Tensor  # [S, C], 1 on real completion tokens
    rollout_logp: torch.Tensor  # [S, C], the sampler's log-probs (0 on padding)
    advantages: torch.Tensor  # [S]
    # [S] long: the rollout engine each sequence came from; empty when unknown (engine 0).
    engine: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @property
    def completion_len(self) -> int:
        return self.completion_ids.shape[1]

    def to(self, device: torch.device | str) -> "MicroBatch":
        return MicroBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def pad_sequences(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids, attention_mask, position_ids, completion_ids, completion_mask`` for pairs."""
    p_len = max(len(p) for p in prompt_ids)
    c_len = max(1, max(len(c) for c in completion_ids))
    s = len(prompt_ids)
    input_ids = torch.full((s, p_len + c_len), pad_id, dtype=torch.long)  # [S, P + C]
    attention = torch.zeros((s, p_len + c_len), dtype=torch.long)  # [S, P + C]
    completions = torch.full((s, c_len), pad_id, dtype=torch.long)  # [S, C]
    completion_mask = torch.zeros((s, c_len), dtype=torch.long)  # [S, C]
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[i, p_len - len(p) : p_len] = torch.tensor(p, dtype=torch.long)
        attention[i, p_len - len(p) : p_len] = 1
        if c:
            input_ids[i, p_len : p_len + len(c)] = torch.tensor(c, dtype=torch.long)
            attention[i, p_len : p_len + len(c)] = 1
            completions[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            completion_mask[i, : len(c)] = 1
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)  # [S, P + C]
    return input_ids, attention, position_ids, completions, completion_mask


def build_micro_batches(
    scored: Sequence[ScoredGroup],
    advantages: torch.Tensor,
    groups_per_micro_batch: int,
    pad_id: int,
) -> list[MicroBatch]:
    """Split the step's groups into micro-batches of whole groups.

    ``advantages`` is flat ``[num_groups * G]`` in the same order as the groups.
    """
    batches = []
    offset = 0
    for start in range(0, len(scored), groups_per_micro_batch):
        chunk = scored[start : start + groups_per_micro_batch]
        prompts, completions, logps, engines = [], [], [], []
        for sg in chunk:
            for c in sg.group.completions:
                prompts.append(sg.group.prompt.token_ids)
                completions.append(c.token_ids)
                logps.append(c.logprobs)
                engines.append(sg.group.engine)
        input_ids, attention, positions, comp_ids, comp_mask = pad_sequences(prompts, completions, pad_id)
        rollout_logp = torch.zeros(comp_ids.shape, dtype=torch.float32)  # [S, C]
        for i, lp in enumerate(logps):
            rollout_logp[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        count = len(completions)
        batches.append(
            MicroBatch(input_ids, attention, positions, comp_ids, comp_mask, rollout_logp, advantages[offset : offset + count].float(),
                       torch.tensor(engines, dtype=torch.long))
        )
        offset += count
    return batches


def rank_share(micro_batches: Sequence[MicroBatch], rank: int, world_size: int) -> list[MicroBatch]:
    """Data-parallel rank ``rank``'s contiguous, equal share of a step's micro-batches.

    The config requires the count to divide evenly; the loss of each
    micro-batch is already its share of the whole step's (the step's
    sequence and token counts go to every rank), so no rank rescales it.
    """
    if len(micro_batches) % world_size:
        raise ValueError(f"{len(micro_batches)} micro-batches do not split over {world_size} ranks")
    share = len(micro_batches) // world_size
    return list(micro_batches[rank * share : (rank + 1) * share])
