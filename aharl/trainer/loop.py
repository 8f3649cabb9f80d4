"""The GRPO driver loop: prompts -> rollout -> rewards -> advantages -> update -> sync -> log.

It reads top to bottom as the algorithm; the machinery (Ray actors, vLLM,
DeepSpeed) sits behind :class:`aharl.launch.cluster.Cluster` and
:class:`aharl.rewards.pool.RewardPool`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aharl.config import Config, dump_config
from aharl.data.prompts import build_prompts
from aharl.data.sampler import PromptSampler
from aharl.data.sources import load_rows
from aharl.errors import DataError
from aharl.modelhub import load_tokenizer
from aharl.rollout.engine import SamplingSettings
from aharl.trainer.advantages import advantage_metrics, group_advantages
from aharl.trainer.batch import build_micro_batches
from aharl.trainer.learner import resolve_device
from aharl.trainer.metrics import MetricsLog, format_step, rollout_metrics

log = logging.getLogger("aharl")


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)


def run_directory(config: Config) -> Path:
    name = config.logging.run_name or time.strftime("run-%Y%m%d-%H%M%S")
    return Path(config.logging.output_dir) / name


def prepare_run_directory(run_dir: Path) -> None:
    """Create ``run_dir``; an earlier run's files there move to ``previous-<time>/``, never overwritten."""
    run_dir.mkdir(parents=True, exist_ok=True)
    earlier = [p for p in run_dir.iterdir() if not p.name.startswith("previous-")]
    if not earlier:
        return
    started = max(p.stat().st_mtime for p in earlier)
    keep = run_dir / time.strftime("previous-%Y%m%d-%H%M%S", time.localtime(started))
    keep.mkdir(exist_ok=True)
    for path in earlier:
        path.rename(keep / path.name)


def train(config: Config, print_fn=print) -> RunResult:
    from aharl.launch.cluster import Cluster, connect_ray
    from aharl.rewards.pool import RewardPool

    device = resolve_device(config)
    run_dir = run_directory(config)
    prepare_run_directory(run_dir)
    (run_dir / "config.yaml").write_text(dump_config(config))

    # config -> prompts
    tokenizer = load_tokenizer(config.model.path)
    prompts, report = build_prompts(load_rows(config.data), tokenizer, config.data)
    print_fn(f"data: {report.summary()}")
    lc = config.learner
    if len(prompts) < lc.prompts_per_step:
        raise DataError(f"{len(prompts)} prompts cannot fill one step of learner.prompts_per_step={lc.prompts_per_step}")
    sampler = PromptSampler(len(prompts), lc.prompts_per_step, seed=config.data.seed, shuffle=config.data.shuffle)
    total_steps = lc.epochs * sampler.steps_per_epoch
    if lc.max_steps is not None:
        total_steps = min(total_steps, lc.max_steps)

    connect_ray()
    started = time.perf_counter()
    cluster = Cluster(config, device, total_steps, run_id=run_dir.name)
    rewards = RewardPool(config.rewards)
    print_fn(f"started rollout ({config.rollout.backend}, {device}), learner, {config.rewards.num_workers} reward workers in {time.perf_counter() - started:.0f}s; sync: {cluster.sync.method}")
    metrics_log = MetricsLog(run_dir)
    result = RunResult(run_dir)
    group_size = config.rollout.n
    try:
        for step in range(1, total_steps + 1):
            batch = [prompts[i] for i in sampler.next_batch()]

            t0 = time.perf_counter()
            groups = cluster.generate(batch, SamplingSettings.from_config(config.rollout, step))
            t1 = time.perf_counter()
            scored, reward_errors = rewards.score_groups(groups)
            t2 = time.perf_counter()

            totals = torch.tensor([r for sg in scored for r in sg.total])  # [prompts * G]
            advantages = group_advantages(
                totals, group_size, scale_by_std=lc.scale_advantages_by_std, stats=lc.advantage_stats, eps=lc.advantage_eps
            )  # [prompts * G]
            micro_batches = build_micro_batches(scored, advantages, lc.micro_batch_prompts, tokenizer.pad_token_id)
            num_tokens = float(sum(mb.completion_mask.sum().item() for mb in micro_batches))

            cluster.sleep_rollout()
            metrics = cluster.train_step(micro_batches, num_sequences=len(totals), num_tokens=num_tokens)
            if step % config.sync.interval_steps == 0:
                metrics.update(cluster.sync_weights())
            else:
                cluster.wake_rollout()

            metrics.update(rollout_metrics(scored))
            metrics.update(advantage_metrics(totals, advantages, group_size))
            metrics.update(reward_errors)
            metrics["time/generate"] = t1 - t0
            metrics["time/reward"] = t2 - t1
            metrics["time/step"] = time.perf_counter() - t0
            if metrics["sync/logp_diff"] > config.sync.logp_diff_warn:
                log.warning(
                    "sync/logp_diff %.4f > sync.logp_diff_warn %.4f at step %d: the rollout engine's log-probs "
                    "differ from the learner's; it may be sampling with stale weights",
                    metrics["sync/logp_diff"], config.sync.logp_diff_warn, step,
                )
            metrics_log.write(step, metrics)
            result.history.append(metrics)
            if step % config.logging.every_steps == 0 or step == total_steps:
                print_fn(format_step(step, total_steps, metrics))
        # The trained policy, loadable by transformers and vLLM.
        final = cluster.export_policy(str(run_dir / "final"))
        tokenizer.save_pretrained(final)
        print_fn(f"policy saved to {final}")
    finally:
        rewards.shutdown()
        cluster.shutdown()
    return result
