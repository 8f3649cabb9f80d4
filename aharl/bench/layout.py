"""``aharl bench layout``: the update's forward and backward on one group, in each micro-batch layout.

The packed layout saves positions (the prompt once, no padding) but puts a
whole group in one row, and attention over a row costs its length squared;
with long completions that can cost more than the positions saved. This
measures it on the machine at hand, for a synthetic group of the given shape
(random token ids: the cost does not depend on the text), so a user can pick
``learner.max_tokens_per_micro_batch`` from figures rather than guesses.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from aharl.grpo.batch import build_micro_batches
from aharl.types import Completion, Prompt, RolloutGroup, ScoredGroup

# (label, learner.packing, learner.max_tokens_per_micro_batch)
LAYOUTS: list[tuple[str, str, int | None]] = [
    ("padded, one group", "padded", None),
    ("shared_prefix, one group per row", "shared_prefix", None),
    ("shared_prefix, rows of <= 2048 tokens", "shared_prefix", 2048),
    ("shared_prefix, rows of <= 1024 tokens", "shared_prefix", 1024),
    ("padded, <= 1024 tokens per micro-batch", "padded", 1024),
]


@dataclass
class LayoutTiming:
    label: str
    micro_batches: int
    positions: int  # tokens the model computes (padding included)
    forward_backward_s: float  # the policy's pass in the update
    forward_s: float  # a pass without gradient (the reference model's)


def synthetic_group(prompt_tokens: int, completions: int, max_tokens: int, seed: int = 0) -> ScoredGroup:
    """A group as a policy near the reference run samples it: half the completions run to ``max_tokens``, half stop earlier."""
    rng = random.Random(seed)
    ids = lambda n: [rng.randrange(1000, 30000) for _ in range(n)]  # noqa: E731
    lengths = [
        max_tokens if i % 2 else rng.randint(max(1, int(0.6 * max_tokens)), max_tokens) for i in range(completions)
    ]
    group = RolloutGroup(
        Prompt(0, "", "", "", ids(prompt_tokens)), [Completion(ids(n), "", "stop", [0.0] * n) for n in lengths]
    )
    return ScoredGroup(group, {}, [0.0] * completions)


def time_layout(
    model: torch.nn.Module, group: ScoredGroup, label: str, packing: str, budget: int | None, chunk_rows: int
) -> LayoutTiming:
    """Seconds for the policy's forward+backward and a no-grad forward over the group's micro-batches."""
    from aharl.learner.forward import completion_logprobs

    advantages = torch.randn(len(group.total))  # [G]
    micro_batches = build_micro_batches([group], advantages, 1, 0, packing=packing, max_tokens=budget)
    started = time.perf_counter()
    for mb in micro_batches:
        logp, _ = completion_logprobs(model, mb, chunk_rows)  # [S, C]
        (logp * mb.completion_mask).sum().backward()
    forward_backward = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    with torch.no_grad():
        for mb in micro_batches:
            completion_logprobs(model, mb, chunk_rows)
    forward = time.perf_counter() - started
    return LayoutTiming(
        label, len(micro_batches), sum(mb.input_ids.numel() for mb in micro_batches), forward_backward, forward
    )


def run_layouts(model: torch.nn.Module, group: ScoredGroup, chunk_rows: int) -> list[LayoutTiming]:
    """Each layout once, after one untimed warm-up pass (the first pass pays for allocations)."""
    model.train()
    time_layout(model, group, "warm-up", "padded", None, chunk_rows)
    return [time_layout(model, group, label, packing, budget, chunk_rows) for label, packing, budget in LAYOUTS]


def markdown(timings: list[LayoutTiming]) -> str:
    base = timings[0].forward_backward_s
    lines = [
        "| layout | micro-batches | positions | forward+backward s | forward s (no grad) | speed-up over padded |",
        "|---|---|---|---|---|---|",
    ]
    for t in timings:
        lines.append(
            f"| {t.label} | {t.micro_batches} | {t.positions} | {t.forward_backward_s:.1f} | {t.forward_s:.1f} | {base / t.forward_backward_s:.2f}x |"
        )
    return "\n".join(lines) + "\n"
