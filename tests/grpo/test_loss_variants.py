"""Each loss variant against a direct transcription of its paper's formula, values and gradients, on random inputs.

The transcriptions loop over sequences and tokens in plain Python, as the
papers write the sums; aharl's vectorised loss must agree with them.
"""

from __future__ import annotations

import math

import pytest
import torch

from aharl.grpo.advantages import informative_groups
from aharl.grpo.loss import grpo_loss
from aharl.trainer.dynamic_sampling import fill_with_informative_groups
from aharl.types import Completion, Prompt, RolloutGroup, ScoredGroup

EPS_LOW, EPS_HIGH = 0.2, 0.28


def random_batch(seed: int, sequences: int = 6, length: int = 7):
    """Log-probs near an old policy's (so some ratios leave the clip range), ragged masks, mixed-sign advantages."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(sequences, length, generator=g) * 3  # [S, L]
    logp = (old + torch.randn(sequences, length, generator=g) * 0.3).requires_grad_(True)  # [S, L]
    lengths = torch.randint(1, length + 1, (sequences,), generator=g)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).int()  # [S, L]
    advantages = torch.randn(sequences, generator=g)  # [S]
    return logp, old, mask, advantages


def clip(x: float, low: float, high: float) -> float:
    return min(max(x, low), high)


def token_term(logp, old, adv) -> torch.Tensor:
    """GRPO's per-token objective min(r A, clip(r) A) for one token, r = pi / pi_old."""
    r = torch.exp(logp - old)
    return torch.minimum(r * adv, torch.clamp(r, 1 - EPS_LOW, 1 + EPS_HIGH) * adv)


def grad_of(loss: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, logp)
    return grad


def test_gspo_matches_its_sequence_level_objective():
    """GSPO (arXiv 2507.18071, eq. 5-7): J = 1/G sum_i min(s_i A_i, clip(s_i) A_i), s_i = (pi/pi_old(y_i))^(1/|y_i|)."""
    batches_with_clipping = 0
    for seed in range(8):
        logp, old, mask, adv = random_batch(seed)
        terms = []
        for i in range(len(adv)):
            n = int(mask[i].sum())
            log_s = sum(logp[i, t] - old[i, t] for t in range(n)) / n
            s = torch.exp(log_s)
            low, high = 1 - EPS_LOW, 1 + EPS_HIGH
            clipped = torch.clamp(s, low, high)
            terms.append(torch.minimum(s * adv[i], clipped * adv[i]))
        expected = -sum(terms) / len(terms)
        ours = grpo_loss(
            logp,
            adv,
            mask,
            old_logp=old,
            clip_eps_low=EPS_LOW,
            clip_eps_high=EPS_HIGH,
            ratio_level="sequence",
            aggregation="sequence",
        )
        assert ours.loss.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)
        torch.testing.assert_close(grad_of(ours.loss, logp), grad_of(expected, logp), rtol=1e-5, atol=1e-7)
        batches_with_clipping += ours.metrics["clip_fraction"] > 0
    assert batches_with_clipping > 0  # some draws leave the clip range, so the clipped branch is checked too


def test_gspo_gradient_weighs_every_token_of_a_sequence_alike_and_differs_from_grpo():
    logp, old, mask, adv = random_batch(1)
    gspo = grad_of(grpo_loss(logp, adv, mask, old_logp=old, ratio_level="sequence").loss, logp)
    grpo = grad_of(grpo_loss(logp, adv, mask, old_logp=old, ratio_level="token").loss, logp)
    unclipped = 0  # a sequence whose ratio stays inside the range: every token's gradient is s_i A_i / (G |y_i|)
    for i in range(len(adv)):
        n = int(mask[i].sum())
        row = gspo[i, :n]
        if row.abs().max() > 0:
            torch.testing.assert_close(row, row[0].expand(n))
            unclipped += 1
        assert (gspo[i, n:] == 0).all()
    assert unclipped >= 2
    assert not torch.allclose(gspo, grpo)


def test_gspo_at_ratio_one_is_the_sequence_mean_policy_gradient():
    """With one update per batch (old = current) s_i = 1 and the gradient is A_i/(G |y_i|) per token, as GRPO's sequence mean."""
    logp, _, mask, adv = random_batch(2)
    gspo = grad_of(grpo_loss(logp, adv, mask, ratio_level="sequence").loss, logp)
    grpo = grad_of(grpo_loss(logp, adv, mask, ratio_level="token").loss, logp)
    torch.testing.assert_close(gspo, grpo)


@pytest.mark.parametrize("split", [(6,), (1, 1, 1, 1, 1, 1), (2, 3, 1)])
def test_bnpo_is_the_token_mean_of_each_micro_batch_averaged_over_micro_batches(split):
    """TRL's bnpo: per micro-batch sum_t l_t / (its tokens), then divided by the step's micro-batch count."""
    logp, old, mask, adv = random_batch(3)
    bounds = [sum(split[:k]) for k in range(len(split) + 1)]
    expected = 0.0
    for a, b in zip(bounds, bounds[1:]):
        total, tokens = 0.0, 0
        for i in range(a, b):
            for t in range(int(mask[i].sum())):
                total = total - token_term(logp[i, t], old[i, t], adv[i])
                tokens += 1
        expected = expected + total / tokens
    expected = expected / len(split)
    ours = sum(
        grpo_loss(
            logp[a:b],
            adv[a:b],
            mask[a:b],
            old_logp=old[a:b],
            clip_eps_low=EPS_LOW,
            clip_eps_high=EPS_HIGH,
            aggregation="bnpo",
            num_micro_batches=len(split),
        ).loss
        for a, b in zip(bounds, bounds[1:])
    )
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)
    torch.testing.assert_close(grad_of(ours, logp), grad_of(expected, logp), rtol=1e-5, atol=1e-7)


def test_bnpo_equals_sequence_with_one_completion_per_micro_batch_and_token_with_one_micro_batch():
    logp, old, mask, adv = random_batch(4)
    kw = dict(clip_eps_low=EPS_LOW, clip_eps_high=EPS_HIGH)
    per_sequence = sum(
        grpo_loss(
            logp[i : i + 1],
            adv[i : i + 1],
            mask[i : i + 1],
            old_logp=old[i : i + 1],
            aggregation="bnpo",
            num_micro_batches=6,
            **kw,
        ).loss
        for i in range(6)
    )
    assert per_sequence.item() == pytest.approx(
        grpo_loss(logp, adv, mask, old_logp=old, aggregation="sequence", **kw).loss.item(), rel=1e-6
    )
    one = grpo_loss(logp, adv, mask, old_logp=old, aggregation="bnpo", **kw).loss
    assert one.item() == pytest.approx(
        grpo_loss(logp, adv, mask, old_logp=old, aggregation="token", **kw).loss.item(), rel=1e-6
    )


@pytest.mark.parametrize("mode", ["sequence", "token", "dr_grpo"])
def test_grpo_dapo_and_dr_grpo_aggregations_match_their_formulas(mode):
    """GRPO (DeepSeekMath eq. 3): 1/G sum_i 1/|o_i| sum_t; DAPO (eq. 8): 1/sum|o_i| sum_i sum_t; Dr. GRPO: 1/(G L_max) sum_i sum_t."""
    logp, old, mask, adv = random_batch(5)
    max_tokens = 9
    per_sequence = []
    for i in range(len(adv)):
        per_sequence.append([-token_term(logp[i, t], old[i, t], adv[i]) for t in range(int(mask[i].sum()))])
    if mode == "sequence":
        expected = sum(sum(row) / len(row) for row in per_sequence) / len(per_sequence)
    elif mode == "token":
        expected = sum(sum(row) for row in per_sequence) / sum(len(row) for row in per_sequence)
    else:
        expected = sum(sum(row) for row in per_sequence) / (len(per_sequence) * max_tokens)
    ours = grpo_loss(
        logp,
        adv,
        mask,
        old_logp=old,
        clip_eps_low=EPS_LOW,
        clip_eps_high=EPS_HIGH,
        aggregation=mode,
        max_completion_tokens=max_tokens,
    ).loss
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)
    torch.testing.assert_close(grad_of(ours, logp), grad_of(expected, logp), rtol=1e-5, atol=1e-7)


# --- DAPO's dynamic sampling ---------------------------------------------------


def scored_group(index: int, rewards: list[float]) -> ScoredGroup:
    prompt = Prompt(index, f"q{index}", "1", "t", [1])
    group = RolloutGroup(prompt, [Completion([2], "c", "stop", [0.0]) for _ in rewards])
    return ScoredGroup(group, {"r": rewards}, rewards)


def test_informative_groups_are_those_with_a_reward_spread():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 2.0, 0.0])
    assert informative_groups(rewards, 2).tolist() == [False, True, False, True]
    assert informative_groups(torch.tensor([3.0, 3.0, 3.0, 3.0, 3.0, 3.1]), 3).tolist() == [False, True]


def test_dynamic_sampling_draws_until_the_step_is_full_of_informative_groups():
    draws = iter(
        [
            [scored_group(10, [0, 0]), scored_group(11, [1, 0])],
            [scored_group(12, [1, 1]), scored_group(13, [0, 2]), scored_group(14, [3, 1])],
        ]
    )
    first = [scored_group(0, [1, 0]), scored_group(1, [1, 1]), scored_group(2, [0, 0])]
    chosen, metrics = fill_with_informative_groups(first, lambda: next(draws), target=3, group_size=2, max_rounds=5)
    assert [sg.group.prompt.index for sg in chosen] == [0, 11, 13]
    assert metrics == {
        "dynamic_sampling/rounds": 2.0,
        "dynamic_sampling/prompts_drawn": 8.0,
        "dynamic_sampling/dropped_groups": 4.0,
        "dynamic_sampling/filled_groups": 0.0,
        "dynamic_sampling/surplus_groups": 1.0,
    }


def test_dynamic_sampling_stops_at_its_cap_and_fills_the_step_with_dropped_groups():
    calls = []

    def resample():
        calls.append(1)
        return [scored_group(20 + len(calls), [1, 1])]

    first = [scored_group(0, [0, 0]), scored_group(1, [2, 0])]
    chosen, metrics = fill_with_informative_groups(first, resample, target=2, group_size=2, max_rounds=2)
    assert len(calls) == 2
    assert [sg.group.prompt.index for sg in chosen] == [1, 0]  # the informative group, then the first dropped one
    assert metrics["dynamic_sampling/filled_groups"] == 1.0 and metrics["dynamic_sampling/dropped_groups"] == 2.0
    nothing_needed, metrics = fill_with_informative_groups(
        [scored_group(0, [1, 0])], resample, target=1, group_size=2, max_rounds=2
    )
    assert len(calls) == 2 and metrics["dynamic_sampling/rounds"] == 0.0
    assert math.isclose(metrics["dynamic_sampling/prompts_drawn"], 1.0)
