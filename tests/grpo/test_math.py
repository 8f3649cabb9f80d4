"""GRPO math on small tensors: advantages, loss values by hand, gradients, log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from aharl.grpo.advantages import advantage_metrics, group_advantages, zero_spread_fraction
from aharl.grpo.logprobs import token_entropy, token_logprobs
from aharl.grpo.loss import grpo_loss, k3_kl
from tests.helpers.memory import PeakTensorBytes

# --- advantages --------------------------------------------------------------


def test_group_advantages_match_the_reference_formula():
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0])
    adv = group_advantages(rewards, 3)
    # group 1: mean 2, unbiased std 1 -> (-1, 0, 1) / (1 + 1e-4)
    assert adv[:3].tolist() == pytest.approx([-1 / 1.0001, 0.0, 1 / 1.0001])
    # group 2: mean 4/3, unbiased std sqrt(((4/3)^2*2 + (8/3)^2)/2) = sqrt(16/3)
    std = math.sqrt(16 / 3)
    assert adv[3:].tolist() == pytest.approx([(-4 / 3) / (std + 1e-4)] * 2 + [(8 / 3) / (std + 1e-4)])


def test_advantage_options_dr_grpo_and_batch_std():
    rewards = torch.tensor([1.0, 3.0, 10.0, 30.0])
    assert group_advantages(rewards, 2, scale_by_std=False).tolist() == pytest.approx([-1, 1, -10, 10])
    batch_std = rewards.std().item()
    assert group_advantages(rewards, 2, stats="batch").tolist() == pytest.approx(
        [v / (batch_std + 1e-4) for v in (-1, 1, -10, 10)]
    )


def test_zero_spread_groups_get_zero_advantage_and_are_counted():
    rewards = torch.tensor([0.5, 0.5, 0.5, 0.0, 2.0, 0.0])
    adv = group_advantages(rewards, 3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert zero_spread_fraction(rewards, 3) == pytest.approx(0.5)
    assert advantage_metrics(rewards, adv, 3)["reward/zero_spread_groups"] == pytest.approx(0.5)


def test_advantages_reject_ragged_batches():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), 2)


# --- loss values by hand -------------------------------------------------------

MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])  # 2 tokens, then 3 tokens
ADV = torch.tensor([2.0, -1.0])


def _logp(value: float = -1.0) -> torch.Tensor:
    return torch.full((2, 3), value, requires_grad=True)


@pytest.mark.parametrize(
    "mode, expected",
    [
        # ratio 1, beta 0: per-token term is -A: seq 0 -> -2 (x2), seq 1 -> +1 (x3)
        ("sequence", (-2.0 + 1.0) / 2),  # mean per sequence, then mean
        ("token", (-2 * 2 + 1 * 3) / 5),  # over all 5 tokens
        ("dr_grpo", (-2 * 2 + 1 * 3) / (2 * 4)),  # sequences x max_completion_tokens (4)
    ],
)
def test_loss_by_hand_each_aggregation(mode, expected):
    out = grpo_loss(_logp(), ADV, MASK, aggregation=mode, max_completion_tokens=4)
    assert out.loss.item() == pytest.approx(expected)


def test_loss_with_kl_by_hand():
    # ref - logp = ln 2 everywhere: k3 = 2 - ln 2 - 1 per token.
    logp = _logp(-1.0)
    ref = torch.full((2, 3), -1.0 + math.log(2))
    kl = 1 - math.log(2)
    out = grpo_loss(logp, ADV, MASK, ref_logp=ref, beta=0.5)
    assert out.loss.item() == pytest.approx((-2.0 + 1.0) / 2 + 0.5 * kl)
    assert out.metrics["kl"] == pytest.approx(kl)
    assert k3_kl(torch.tensor([0.3]), torch.tensor([0.3])).item() == 0.0


def test_clipping_and_clip_higher_by_hand():
    logp = torch.full((2, 1), math.log(1.5), requires_grad=True)
    old = torch.zeros(2, 1)  # ratio 1.5 for both
    mask = torch.ones(2, 1)
    adv = torch.tensor([1.0, -1.0])
    out = grpo_loss(logp, adv, mask, old_logp=old, clip_eps_low=0.2, clip_eps_high=0.2)
    # A>0: min(1.5, 1.2) = 1.2 -> -1.2 (clipped); A<0: min(-1.5, -1.2) = -1.5 -> +1.5 (not clipped)
    assert out.loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert out.metrics["clip_fraction"] == pytest.approx(0.5)
    higher = grpo_loss(logp, adv, mask, old_logp=old, clip_eps_low=0.2, clip_eps_high=0.28)
    assert higher.loss.item() == pytest.approx((-1.28 + 1.5) / 2)
    out.loss.backward()
    assert logp.grad[0].item() == 0.0  # the clipped token carries no gradient
    assert logp.grad[1].item() != 0.0


def test_micro_batch_losses_add_up_to_the_full_batch_loss():
    torch.manual_seed(0)
    logp = torch.randn(4, 5)
    mask = (torch.rand(4, 5) > 0.3).int()
    mask[:, 0] = 1
    adv = torch.randn(4)
    for mode in ("sequence", "token", "dr_grpo"):
        full = grpo_loss(logp, adv, mask, aggregation=mode, max_completion_tokens=5).loss
        parts = sum(
            grpo_loss(
                logp[i : i + 2],
                adv[i : i + 2],
                mask[i : i + 2],
                aggregation=mode,
                max_completion_tokens=5,
                num_sequences=4,
                num_tokens=mask.sum().item(),
            ).loss
            for i in (0, 2)
        )
        assert parts.item() == pytest.approx(full.item(), abs=1e-6)


# --- gradients ---------------------------------------------------------------


def test_zero_advantage_groups_give_zero_policy_gradient():
    logp = torch.randn(3, 4, requires_grad=True)
    out = grpo_loss(logp, torch.zeros(3), torch.ones(3, 4))
    out.loss.backward()
    assert torch.count_nonzero(logp.grad) == 0


def test_ratio_one_beta_zero_loss_is_zero_but_gradient_is_not():
    rewards = torch.tensor([0.0, 1.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4)
    logp = torch.randn(4, 3, requires_grad=True)
    out = grpo_loss(logp, adv, torch.ones(4, 3))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)
    out.loss.backward()
    assert logp.grad.abs().sum() > 0
    # The gradient raises the log-prob of better-than-average completions.
    assert (logp.grad[adv > 0] < 0).all() and (logp.grad[adv < 0] > 0).all()


def test_padding_tokens_get_no_gradient():
    logp = torch.randn(2, 3, requires_grad=True)
    grpo_loss(logp, ADV, MASK, aggregation="token").loss.backward()
    assert logp.grad[0, 2].item() == 0.0


# --- log-probs ---------------------------------------------------------------


def test_token_logprobs_match_log_softmax_gather():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50) * 4
    ids = torch.randint(0, 50, (3, 7))
    expected = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    for chunk in (1, 5, 1024):
        assert torch.allclose(token_logprobs(logits, ids, chunk_rows=chunk), expected, atol=1e-5)
    bf16 = logits.bfloat16()
    expected_bf16 = torch.log_softmax(bf16.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(bf16, ids, chunk_rows=4), expected_bf16, atol=1e-5)


def test_token_logprobs_gradient_matches_log_softmax():
    logits = torch.randn(2, 4, 30, requires_grad=True)
    ids = torch.randint(0, 30, (2, 4))
    token_logprobs(logits, ids, chunk_rows=3).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).sum().backward()
    assert torch.allclose(ours, logits.grad, atol=1e-6)


def test_token_entropy_matches_definition():
    logits = torch.randn(2, 3, 11)
    p = torch.softmax(logits, -1)
    assert torch.allclose(token_entropy(logits, chunk_rows=2), -(p * p.log()).sum(-1), atol=1e-5)


def _peak_extra_bytes(method: str) -> int:
    torch.manual_seed(0)
    logits = torch.randn(4096, 32000)  # 524 MB, fp32, a large vocabulary
    ids = torch.randint(0, 32000, (4096,))
    with torch.no_grad(), PeakTensorBytes(existing=[logits, ids]) as memory:
        if method == "chunked":
            token_logprobs(logits, ids, chunk_rows=256)
        else:
            torch.log_softmax(logits.float(), -1).gather(-1, ids[:, None]).squeeze(-1)
    return memory.peak


def test_token_logprobs_use_less_memory_than_a_full_log_softmax():
    full = _peak_extra_bytes("full")
    chunked = _peak_extra_bytes("chunked")
    assert full > 400e6  # the [4096, 32000] fp32 log-softmax
    assert chunked < full / 4


def test_bf16_logprobs_keep_no_fp32_copy_for_the_backward_and_give_the_same_gradient():
    """The fp32 upcast of each bf16 chunk is recomputed in the backward, not held (1.9 GB at the 3090 shape)."""
    torch.manual_seed(0)
    logits = torch.randn(1024, 32000).to(torch.bfloat16).requires_grad_()  # 65 MB
    ids = torch.randint(0, 32000, (1024,))
    with PeakTensorBytes(existing=[logits, ids]) as memory:
        out = token_logprobs(logits, ids, chunk_rows=256)
        held = memory.live  # what the autograd graph keeps until backward
    fp32_chunk = 256 * 32000 * 4
    assert held < fp32_chunk / 100  # before: all four fp32 chunks, 4 x 32.8 MB
    out.sum().backward()
    reference = logits.detach().float().requires_grad_()
    torch.log_softmax(reference, -1).gather(-1, ids[:, None]).sum().backward()
    assert torch.allclose(logits.grad.float(), reference.grad, atol=2e-3)


# --- rollout correction (TIS / MIS) -------------------------------------------------


def _correction_case(seed: int = 0):
    torch.manual_seed(seed)
    logp = (torch.randn(4, 6) - 2).requires_grad_()  # [S, L]
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0])
    return logp, mask, adv


def test_rollout_correction_none_leaves_the_loss_bit_identical():
    from aharl.grpo.loss import rollout_correction_weights

    logp, mask, adv = _correction_case()
    rollout = logp.detach() + 0.3 * torch.randn(4, 6)
    weights, metrics = rollout_correction_weights(logp.detach(), rollout, mask, "none", 2.0)
    assert weights is None and metrics == {}
    plain = grpo_loss(logp, adv, mask, aggregation="token").loss
    corrected = grpo_loss(logp, adv, mask, aggregation="token", is_weights=weights).loss
    assert torch.equal(plain, corrected)


@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_rollout_correction_is_the_identity_when_the_engines_agree(mode):
    from aharl.grpo.loss import rollout_correction_weights

    logp, mask, adv = _correction_case()
    weights, _ = rollout_correction_weights(logp.detach(), logp.detach().clone(), mask, mode, 2.0)
    assert torch.equal(weights, mask)
    for aggregation in ("sequence", "token", "dr_grpo"):
        plain = grpo_loss(logp, adv, mask, aggregation=aggregation, max_completion_tokens=6)
        corrected = grpo_loss(logp, adv, mask, aggregation=aggregation, max_completion_tokens=6, is_weights=weights)
        assert torch.equal(plain.loss, corrected.loss)


def test_tis_truncates_the_ratio_and_mis_drops_whole_sequences():
    from aharl.grpo.loss import rollout_correction_weights

    logp, mask, adv = _correction_case()
    rollout = logp.detach().clone()
    rollout[0, 2] -= 3.0  # the engine found this token far less likely: rho = e^3, truncated to the cap
    rollout[2] += 1.0  # the whole of sequence 2 likelier in the engine: rho = e^-1 everywhere, below 1/cap
    tis, tis_metrics = rollout_correction_weights(logp.detach(), rollout, mask, "tis", 2.0)
    assert tis[0, 2].item() == 2.0 and tis[0, 1].item() == 1.0
    assert torch.allclose(tis[2], torch.full((6,), math.exp(-1.0)))
    assert tis_metrics["rollout_correction/truncated_fraction"] == pytest.approx(1 / mask.sum().item())
    mis, mis_metrics = rollout_correction_weights(logp.detach(), rollout, mask, "mis", 2.0)
    assert mis[2].sum().item() == 0.0  # mean log-ratio -1 < -log 2: dropped
    assert mis[0].sum().item() == 6.0  # mean log-ratio 0.5 <= log 2: kept whole, unweighted
    assert mis_metrics["rollout_correction/masked_fraction"] == 0.25
    grpo_loss(logp, adv, mask, aggregation="token", is_weights=mis).loss.backward()
    assert logp.grad[2].abs().sum().item() == 0.0 and logp.grad[0].abs().sum().item() > 0


def test_tis_recovers_the_policy_gradient_from_another_policys_samples():
    """Tokens drawn from the engine's q, weighted by p/q, estimate E_p[A grad log p]: the weight points the right way."""
    from aharl.grpo.loss import rollout_correction_weights

    torch.manual_seed(0)
    theta = torch.tensor([0.5, -0.3, 0.1, 0.8, -1.0], requires_grad=True)  # the learner's policy over 5 tokens
    q_logits = torch.tensor([0.2, 0.4, -0.2, 0.3, 0.1])  # the engine's (mismatched) policy
    reward = torch.tensor([1.0, -1.0, 0.5, 2.0, -0.5])  # per token, as the advantage
    exact = torch.autograd.grad((torch.softmax(theta, 0) * reward).sum(), theta)[0]  # grad E_p[A]

    draws = torch.distributions.Categorical(logits=q_logits).sample((200_000,))  # [S]
    logp = torch.log_softmax(theta, 0)[draws].unsqueeze(1)  # [S, 1]
    rollout = torch.log_softmax(q_logits, 0)[draws].unsqueeze(1)  # [S, 1]
    mask = torch.ones_like(logp)
    for mode, cap, close in (("tis", 100.0, True), ("none", 2.0, False)):
        weights, _ = rollout_correction_weights(logp.detach(), rollout, mask, mode, cap)
        loss = grpo_loss(logp, reward[draws], mask, aggregation="token", is_weights=weights).loss
        estimate = -torch.autograd.grad(loss, theta, retain_graph=True)[0]
        assert torch.allclose(estimate, exact, atol=0.02) == close, (mode, estimate, exact)
