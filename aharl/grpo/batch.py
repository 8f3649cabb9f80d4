"""Scored groups -> the learner's micro-batches, padded or packed with shared prompts.

Two layouts reach the model; the loss sees the same ``[S, C]`` completion
tensors from both, so its normalisation cannot depend on the layout.

``padded`` (one row per completion): prompts are left-padded to the longest
prompt P and completions right-padded to the longest completion C, so every
completion starts at column P and the model's last C + 1 logits predict
exactly the completion tokens (``logits_to_keep`` saves computing the LM head
over the prompts). Position ids count real tokens only, so a left-padded
prompt sees the same positions it had in vLLM, which pads nothing. Each of a
group's G completions re-encodes the prompt, and padding is paid in full.

``shared_prefix`` (one packed row per micro-batch, the shared-prefix forward
of "Prefix Grouper", arXiv 2506.05433): each unit is a prompt followed by
some of its group's completions, ``[p, c1, c2, ..., ck]``; a 4D attention mask
lets each completion token see the unit's prompt and the earlier tokens of
its own completion only, and its position ids continue from the prompt's, so
every completion is computed exactly as if it followed the prompt alone. The
prompt is encoded once per unit and nothing is padded. ``logit_index`` names
the row positions whose logits predict the completion tokens (the prompt's
last token predicts every completion's first).

Micro-batches are whole groups (``groups_per_micro_batch``) or, with a token
budget, length-sorted units packed first-fit-decreasing up to the budget (a
group longer than the budget is split, each part re-encoding its prompt); the
count is then made a multiple of the data-parallel ranks, because every rank
must run as many forward/backward passes as the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from aharl.types import ScoredGroup


@dataclass
class MicroBatch:
    """One forward/backward pass: the model's input (either layout) and the loss's ``[S, C]`` completion tensors."""

    input_ids: torch.Tensor  # padded: [S, P + C]; packed: [1, L]
    attention_mask: torch.Tensor  # padded: [S, P + C] 0/1; packed: [1, 1, L, L] bool, True where a token may attend
    position_ids: torch.Tensor  # padded: [S, P + C]; packed: [1, L]
    completion_ids: torch.Tensor  # [S, C]
    completion_mask: torch.Tensor  # [S, C], 1 on real completion tokens
    rollout_logp: torch.Tensor  # [S, C], the sampler's log-probs (0 on padding)
    advantages: torch.Tensor  # [S]
    # [S] long: the rollout engine each sequence came from; empty when unknown (engine 0).
    engine: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    # Packed only: [T] row positions whose logits predict the T completion tokens,
    # in row-major order of ``completion_mask``; empty for the padded layout.
    logit_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    # [S] each completion's prompt length (for the layout's token counts).
    prompt_lengths: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @property
    def completion_len(self) -> int:
        return self.completion_ids.shape[1]

    @property
    def packed(self) -> bool:
        return self.attention_mask.dim() == 4

    @property
    def model_tokens(self) -> int:
        """Positions the model computes, padding included."""
        return self.input_ids.numel()

    @property
    def real_tokens(self) -> int:
        """Positions holding a real token (a packed row has no padding)."""
        return self.input_ids.numel() if self.packed else int(self.attention_mask.sum().item())

    def to(self, device: torch.device | str) -> "MicroBatch":
        return MicroBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


@dataclass
class Unit:
    """A prompt and some of its group's completions: what a packed row encodes with one copy of the prompt."""

    prompt: list[int]  # [P]
    completions: list[list[int]]  # k x [len_i]
    logprobs: list[list[float]]  # k x [len_i], the sampler's
    advantages: list[float]  # [k]
    engine: int = 0

    @property
    def tokens(self) -> int:
        return len(self.prompt) + sum(len(c) for c in self.completions)

    def split(self) -> tuple["Unit", "Unit"]:
        """Two units with half the completions each (both keep the prompt)."""
        half = len(self.completions) // 2
        parts = [slice(0, half), slice(half, None)]
        return tuple(  # type: ignore[return-value]
            Unit(self.prompt, self.completions[p], self.logprobs[p], self.advantages[p], self.engine) for p in parts
        )


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


def pad_completions(
    completions: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``completion_ids, completion_mask, rollout_logp``, each ``[S, C]``, right-padded."""
    c_len = max(1, max((len(c) for c in completions), default=1))
    ids = torch.full((len(completions), c_len), pad_id, dtype=torch.long)  # [S, C]
    mask = torch.zeros((len(completions), c_len), dtype=torch.long)  # [S, C]
    logp = torch.zeros((len(completions), c_len), dtype=torch.float32)  # [S, C]
    for i, (c, lp) in enumerate(zip(completions, logprobs)):
        ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[i, : len(c)] = 1
        logp[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
    return ids, mask, logp


def padded_micro_batch(units: Sequence[Unit], pad_id: int) -> MicroBatch:
    """Today's layout: one row per completion, each with its own copy of the prompt."""
    prompts = [u.prompt for u in units for _ in u.completions]
    completions = [c for u in units for c in u.completions]
    logprobs = [lp for u in units for lp in u.logprobs]
    input_ids, attention, positions, comp_ids, comp_mask = pad_sequences(prompts, completions, pad_id)
    _, _, rollout_logp = pad_completions(completions, logprobs, pad_id)
    advantages = torch.tensor([a for u in units for a in u.advantages], dtype=torch.float32)  # [S]
    engines = torch.tensor([u.engine for u in units for _ in u.completions], dtype=torch.long)  # [S]
    prompt_lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)  # [S]
    return MicroBatch(
        input_ids,
        attention,
        positions,
        comp_ids,
        comp_mask,
        rollout_logp,
        advantages,
        engines,
        prompt_lengths=prompt_lengths,
    )


def packed_micro_batch(units: Sequence[Unit], pad_id: int) -> MicroBatch:
    """One row ``[p1, c11, c12, ..., p2, c21, ...]`` with the shared-prefix mask (module docstring)."""
    ids: list[int] = []
    positions: list[int] = []
    unit_of: list[int] = []  # which unit each position belongs to
    branch_of: list[int] = []  # 0 for a prompt token, i + 1 for completion i's
    logit_index: list[int] = []
    for u_index, unit in enumerate(units):
        start, p_len = len(ids), len(unit.prompt)
        ids += unit.prompt
        positions += range(p_len)
        unit_of += [u_index] * p_len
        branch_of += [0] * p_len
        for branch, completion in enumerate(unit.completions, start=1):
            c_start = len(ids)
            ids += completion
            positions += range(p_len, p_len + len(completion))
            unit_of += [u_index] * len(completion)
            branch_of += [branch] * len(completion)
            if completion:  # token 0 is predicted by the prompt's last token, token t by token t - 1
                logit_index += [start + p_len - 1, *range(c_start, c_start + len(completion) - 1)]
    unit = torch.tensor(unit_of)  # [L]
    branch = torch.tensor(branch_of)  # [L]
    order = torch.arange(len(ids))  # [L]
    visible = (
        (unit[:, None] == unit[None, :])
        & (order[None, :] <= order[:, None])
        & ((branch[None, :] == 0) | (branch[None, :] == branch[:, None]))
    )  # [L query, L key]
    completions = [c for u in units for c in u.completions]
    comp_ids, comp_mask, rollout_logp = pad_completions(completions, [lp for u in units for lp in u.logprobs], pad_id)
    return MicroBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),  # [1, L]
        attention_mask=visible[None, None],  # [1, 1, L, L]
        position_ids=torch.tensor([positions], dtype=torch.long),  # [1, L]
        completion_ids=comp_ids,
        completion_mask=comp_mask,
        rollout_logp=rollout_logp,
        advantages=torch.tensor([a for u in units for a in u.advantages], dtype=torch.float32),  # [S]
        engine=torch.tensor([u.engine for u in units for _ in u.completions], dtype=torch.long),  # [S]
        logit_index=torch.tensor(logit_index, dtype=torch.long),  # [T]
        prompt_lengths=torch.tensor([len(u.prompt) for u in units for _ in u.completions], dtype=torch.long),  # [S]
    )


def group_units(scored: Sequence[ScoredGroup], advantages: torch.Tensor) -> list[Unit]:
    """Each group as one unit; ``advantages`` is flat ``[num_groups * G]`` in the groups' order."""
    units, offset = [], 0
    for sg in scored:
        comps = sg.group.completions
        adv = advantages[offset : offset + len(comps)].float().tolist()
        units.append(
            Unit(
                sg.group.prompt.token_ids,
                [c.token_ids for c in comps],
                [c.logprobs for c in comps],
                adv,
                sg.group.engine,
            )
        )
        offset += len(comps)
    return units


def padded_cost(units: Sequence[Unit]) -> int:
    """Positions a padded micro-batch of these units computes: rows x (longest prompt + longest completion)."""
    rows = sum(len(u.completions) for u in units)
    return rows * (max(len(u.prompt) for u in units) + max(1, max(len(c) for u in units for c in u.completions)))


def bin_cost(units: Sequence[Unit], packing: str) -> int:
    """Positions a micro-batch of ``units`` computes in ``packing``'s layout."""
    return padded_cost(units) if packing == "padded" else sum(u.tokens for u in units)


def budget_bins(units: Sequence[Unit], budget: int, packing: str) -> list[list[Unit]]:
    """Units cut to fit ``budget`` and packed into as few micro-batches as first-fit-decreasing finds.

    Padded micro-batches take single completions sorted by length, so rows of
    like length share a micro-batch and pad little; packed ones take whole
    groups (split only when a group alone exceeds the budget).
    """
    pieces: list[Unit] = []
    for unit in units:
        if packing == "padded":
            pieces += [
                Unit(unit.prompt, [c], [lp], [a], unit.engine)
                for c, lp, a in zip(unit.completions, unit.logprobs, unit.advantages)
            ]
            continue
        stack = [unit]
        while stack:
            piece = stack.pop()
            if piece.tokens > budget and len(piece.completions) > 1:
                stack += reversed(piece.split())
            else:
                pieces.append(piece)
    bins: list[list[Unit]] = []
    for piece in sorted(pieces, key=lambda u: u.tokens, reverse=True):
        for b in bins:
            if bin_cost([*b, piece], packing) <= budget:
                b.append(piece)
                break
        else:
            bins.append([piece])
    return bins


def even_bins(bins: list[list[Unit]], world_size: int, packing: str) -> list[list[Unit]]:
    """Split the largest micro-batches until their count is a multiple of ``world_size``."""
    while len(bins) % world_size:
        splittable = [b for b in bins if len(b) > 1 or len(b[0].completions) > 1]
        if not splittable:
            raise ValueError(f"{len(bins)} single-completion micro-batches do not split over {world_size} ranks")
        largest = max(splittable, key=lambda b: bin_cost(b, packing))
        bins.remove(largest)
        if len(largest) > 1:
            bins += [largest[0::2], largest[1::2]]
        else:
            bins += [[half] for half in largest[0].split()]
    return bins


def build_micro_batches(
    scored: Sequence[ScoredGroup],
    advantages: torch.Tensor,
    groups_per_micro_batch: int,
    pad_id: int,
    *,
    packing: str = "padded",
    max_tokens: int | None = None,
    world_size: int = 1,
) -> list[MicroBatch]:
    """Split the step's groups into micro-batches (module docstring).

    ``advantages`` is flat ``[num_groups * G]`` in the same order as the
    groups. ``max_tokens``: a token budget per micro-batch instead of
    ``groups_per_micro_batch`` whole groups.
    """
    units = group_units(scored, advantages)
    if max_tokens is None:
        bins = [units[i : i + groups_per_micro_batch] for i in range(0, len(units), groups_per_micro_batch)]
    else:
        bins = even_bins(budget_bins(units, max_tokens, packing), world_size, packing)
    make = packed_micro_batch if packing == "shared_prefix" else padded_micro_batch
    return [make(b, pad_id) for b in bins]


def layout_metrics(micro_batches: Sequence[MicroBatch]) -> dict[str, float]:
    """What the update's layout cost: positions computed, their padded share, and what one-prompt-per-completion would encode.

    ``train/sequence_tokens`` counts each completion with its own copy of the
    prompt and no padding (the padded layout's real tokens); against
    ``train/model_tokens`` it shows what the shared prefix saved.
    """
    model = sum(mb.model_tokens for mb in micro_batches)
    real = sum(mb.real_tokens for mb in micro_batches)
    per_sequence = sum(int(mb.prompt_lengths.sum().item() + mb.completion_mask.sum().item()) for mb in micro_batches)
    return {
        "train/model_tokens": float(model),
        "train/sequence_tokens": float(per_sequence),
        "train/padding_fraction": 1.0 - real / model if model else 0.0,
    }


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
