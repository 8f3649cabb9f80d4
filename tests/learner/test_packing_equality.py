"""The packed, shared-prefix update and token-budget micro-batches compute today's padded update, to fp32 round-off.

A tiny random Llama (fp32) takes one step's groups through every layout;
the summed micro-batch losses and every parameter's gradient must match the
padded path's for each loss aggregation, with and without the reference
model's KL. A mask that let completions see each other, a wrong position, or
a logit read from the wrong row would each move the log-probs by far more
than the tolerance.
"""

from __future__ import annotations

import random

import pytest
import torch

from aharl.grpo.batch import build_micro_batches, layout_metrics
from aharl.grpo.loss import grpo_loss
from aharl.learner.forward import completion_logprobs
from aharl.types import Completion, Prompt, RolloutGroup, ScoredGroup

VOCAB = 97
PAD = 0


def tiny_model(attention: str, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    config._attn_implementation = attention
    return LlamaForCausalLM(config).float()


def step_groups(seed: int = 1, groups: int = 4, g: int = 4) -> tuple[list[ScoredGroup], torch.Tensor]:
    """Groups with prompts of 3-12 tokens and completions of 1-20, advantages of both signs."""
    rng = random.Random(seed)
    scored = []
    for index in range(groups):
        prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randint(3, 12))]
        completions = []
        for _ in range(g):
            tokens = [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 20))]
            completions.append(Completion(tokens, "x", "stop", [rng.uniform(-3, 0) for _ in tokens]))
        group = RolloutGroup(Prompt(index, "q", "1", "t", prompt), completions, engine=index % 2)
        scored.append(ScoredGroup(group, {"r": [0.0] * g}, [0.0] * g))
    advantages = torch.tensor([rng.uniform(-1.5, 1.5) for _ in range(groups * g)])  # [groups * G]
    return scored, advantages


LAYOUTS = {
    "padded": dict(packing="padded"),
    "shared_prefix": dict(packing="shared_prefix"),
    "shared_prefix-budget": dict(packing="shared_prefix", max_tokens=60),  # below one group: groups are split
    "padded-budget": dict(packing="padded", max_tokens=150),
    "shared_prefix-budget-2-ranks": dict(packing="shared_prefix", max_tokens=200, world_size=2),
}


def update(
    model, reference, layout: dict, aggregation: str, beta: float
) -> tuple[float, dict[str, torch.Tensor], list]:
    """Summed loss and parameter gradients of one step's update under ``layout``; also each completion's log-probs."""
    scored, advantages = step_groups()
    batches = build_micro_batches(scored, advantages, 2, PAD, **layout)
    num_sequences = len(advantages)
    num_tokens = float(sum(mb.completion_mask.sum() for mb in batches))
    model.zero_grad()
    total, per_sequence = 0.0, []
    for mb in batches:
        logp, _ = completion_logprobs(model, mb, chunk_rows=7)
        ref = completion_logprobs(reference, mb, chunk_rows=7)[0].detach() if beta > 0 else None
        out = grpo_loss(
            logp,
            mb.advantages,
            mb.completion_mask,
            ref_logp=ref,
            beta=beta,
            aggregation=aggregation,
            max_completion_tokens=20,
            num_sequences=num_sequences,
            num_tokens=num_tokens,
        )
        out.loss.backward()
        total += out.loss.item()
        for row, mask, adv in zip(logp.detach(), mb.completion_mask, mb.advantages):
            per_sequence.append((round(adv.item(), 6), row[mask.bool()].tolist()))
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return total, grads, sorted(per_sequence)


@pytest.mark.parametrize(
    "attention, aggregation, beta",
    [("sdpa", a, b) for a in ("sequence", "token", "dr_grpo") for b in (0.0, 0.04)] + [("eager", "sequence", 0.04)],
)
def test_every_layout_gives_the_padded_loss_and_gradients(attention, aggregation, beta):
    model, reference = tiny_model(attention, seed=0), tiny_model(attention, seed=5)
    base_loss, base_grads, base_logps = update(model, reference, LAYOUTS["padded"], aggregation, beta)
    assert any(g.abs().sum() > 0 for g in base_grads.values())
    for name, layout in LAYOUTS.items():
        loss, grads, logps = update(model, reference, layout, aggregation, beta)
        assert loss == pytest.approx(base_loss, rel=1e-5, abs=1e-7), name
        for (adv0, lp0), (adv1, lp1) in zip(base_logps, logps):
            assert adv0 == adv1 and torch.allclose(torch.tensor(lp0), torch.tensor(lp1), atol=2e-5), name
        for param, g in grads.items():
            assert torch.allclose(g, base_grads[param], rtol=1e-4, atol=1e-6), (
                name,
                param,
                (g - base_grads[param]).abs().max(),
            )


def test_a_completion_never_sees_another_completion_of_its_group():
    """Changing one completion's tokens leaves its siblings' log-probs as they were."""
    model = tiny_model("sdpa")
    scored, advantages = step_groups(groups=1)
    before = completion_logprobs(
        model, build_micro_batches(scored, advantages, 1, PAD, packing="shared_prefix")[0], 16
    )[0]
    first = scored[0].group.completions[0]
    first.token_ids = [(t % (VOCAB - 1)) + 1 for t in reversed(first.token_ids)]
    after = completion_logprobs(model, build_micro_batches(scored, advantages, 1, PAD, packing="shared_prefix")[0], 16)[
        0
    ]
    assert not torch.allclose(before[0], after[0])
    assert torch.equal(before[1:], after[1:])


def test_the_shared_prefix_layout_has_no_padding_and_encodes_each_prompt_once():
    scored, advantages = step_groups()
    padded = layout_metrics(build_micro_batches(scored, advantages, 2, PAD, packing="padded"))
    packed = layout_metrics(build_micro_batches(scored, advantages, 2, PAD, packing="shared_prefix"))
    prompts = sum(len(sg.group.prompt.token_ids) for sg in scored)
    completions = sum(len(c.token_ids) for sg in scored for c in sg.group.completions)
    assert packed["train/padding_fraction"] == 0.0 and padded["train/padding_fraction"] > 0.2
    assert packed["train/model_tokens"] == prompts + completions
    sequence_tokens = sum(len(sg.group.prompt.token_ids) * 4 for sg in scored) + completions
    assert packed["train/sequence_tokens"] == padded["train/sequence_tokens"] == sequence_tokens


@pytest.mark.parametrize("budget, world", [(40, 1), (60, 2), (1000, 2), (100, 3)])
def test_token_budget_micro_batches_hold_every_completion_once_within_the_budget(budget, world):
    scored, advantages = step_groups(seed=3, groups=5, g=4)
    batches = build_micro_batches(
        scored, advantages, 1, PAD, packing="shared_prefix", max_tokens=budget, world_size=world
    )
    assert len(batches) % world == 0
    seen = sorted(round(a, 6) for mb in batches for a in mb.advantages.tolist())
    assert seen == sorted(round(a, 6) for a in advantages.tolist())
    longest_unit = max(
        len(sg.group.prompt.token_ids) + max(len(c.token_ids) for c in sg.group.completions) for sg in scored
    )
    # Over the budget only where one prompt and one completion alone exceed it.
    assert all(mb.model_tokens <= max(budget, longest_unit) for mb in batches)
    if world == 1:
        sizes = [mb.model_tokens for mb in batches]
        assert sum(sizes) / len(sizes) > budget / 2  # packed, not one unit per micro-batch
