"""The GRPO driver loop: prompts -> rollout -> rewards -> advantages -> update -> sync -> log.

:func:`grpo_step` is one step, stage by stage; :func:`train` runs the steps
between start-up and the end of the run. The machinery sits behind
:class:`aharl.runtime.cluster.Cluster` (the rollout and learner actors) and
:class:`aharl.runtime.reward_pool.RewardPool`; everything a run writes
(directory, resume, evaluation, checkpoints, report) is
:class:`aharl.trainer.lifecycle.RunLifecycle`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from ray.exceptions import RayActorError

from aharl.config import Config
from aharl.data.prompts import build_prompts
from aharl.data.sampler import PromptSampler
from aharl.data.sources import load_rows
from aharl.device import resolve_device
from aharl.errors import DataError, RunFault
from aharl.evaluation.run import eval_prompt_set
from aharl.grpo.advantages import advantage_metrics, group_advantages
from aharl.grpo.batch import build_micro_batches, layout_metrics
from aharl.learner import lora
from aharl.modelhub import load_tokenizer, resolve_model_path
from aharl.rewards.calling import RewardStep
from aharl.rewards.registry import check_reward_columns
from aharl.rollout.engine import SamplingSettings
from aharl.runtime.cluster import Cluster, actor_death
from aharl.runtime.logs import capture_driver_logs
from aharl.runtime.ray_session import connect_ray
from aharl.runtime.reward_pool import RewardPool
from aharl.tracking.metrics import rollout_metrics
from aharl.trainer.dynamic_sampling import fill_with_informative_groups
from aharl.trainer.lifecycle import RunLifecycle, RunResult
from aharl.trainer.stop import StopSignals
from aharl.trainer.sync_gate import SyncGate
from aharl.types import Prompt, RolloutGroup, ScoredGroup


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


@dataclass
class Prefetched:
    """The next step's groups, sampled beside this step's update (``rollout.overlap: one_step``)."""

    groups: list[RolloutGroup]
    waited_s: float  # how long the driver still waited for them once the update was done
    hidden: float  # the share of their generation's wall time that ran beside the update


def grpo_step(
    step: int,
    prompts: Sequence[Prompt],
    cluster: Cluster,
    rewards: RewardPool,
    config: Config,
    pad_id: int,
    prefetched: Prefetched | None = None,
    next_prompts: Sequence[Prompt] | None = None,
    total_steps: int = 0,
    draw_prompts: Callable[[], list[Prompt]] | None = None,
) -> tuple[dict[str, float], list[ScoredGroup], Prefetched | None]:
    """One GRPO step on ``prompts``; returns the step's metrics, its scored groups and, when overlapping, the next step's groups.

    ``prefetched``: this step's groups, already sampled during the last
    update. ``next_prompts``: sample these beside this step's update (the
    one-step-off rollout); the engines still hold the previous weights then,
    and the sync after the update waits for that generation to finish.
    ``total_steps`` is what reward functions read as ``trainer_state.max_steps``.
    ``draw_prompts``: the next prompts from the sampler, for DAPO's dynamic
    sampling (``grpo.dynamic_sampling_max_rounds``).
    """
    g = config.grpo
    settings = SamplingSettings.from_config(config.rollout, step)
    reward_step = RewardStep(global_step=step - 1, max_steps=total_steps)
    seconds = {"generate": 0.0, "reward": 0.0}  # the step's waits on generation and scoring
    reward_rounds: list[dict[str, float]] = []  # the reward pool's counts and logged metrics, per draw

    def sample_and_score(batch: Sequence[Prompt] | None, ready: list[RolloutGroup] | None = None) -> list[ScoredGroup]:
        began = time.perf_counter()
        groups = ready if ready is not None else cluster.generate(batch, settings)
        generated = time.perf_counter()
        scored, pool_metrics = rewards.score_groups(groups, reward_step)
        seconds["generate"] += generated - began
        seconds["reward"] += time.perf_counter() - generated
        reward_rounds.append(pool_metrics)
        return scored

    t0 = time.perf_counter()
    scored = sample_and_score(prompts, prefetched.groups if prefetched is not None else None)
    groups = [sg.group for sg in scored]
    sampled = scored  # the step's first draw: what the policy does, for the reward and length metrics
    resampling: dict[str, float] = {}
    if g.dynamic_sampling_max_rounds and draw_prompts is not None:
        scored, resampling = fill_with_informative_groups(
            scored,
            lambda: sample_and_score(draw_prompts()),
            target=len(scored),
            group_size=config.rollout.n,
            max_rounds=g.dynamic_sampling_max_rounds,
        )

    totals = torch.tensor([r for sg in scored for r in sg.total])  # [prompts * G]
    advantages = group_advantages(
        totals, config.rollout.n, scale_by_std=g.scale_advantages_by_std, stats=g.advantage_stats, eps=g.advantage_eps
    )  # [prompts * G]
    lc = config.learner
    micro_batches = build_micro_batches(
        scored,
        advantages,
        lc.micro_batch_prompts,
        pad_id,
        packing=lc.packing,
        max_tokens=lc.max_tokens_per_micro_batch,
        world_size=config.placement.learner_gpus,
    )
    num_tokens = float(sum(mb.completion_mask.sum().item() for mb in micro_batches))

    syncs = step % config.sync.interval_steps == 0
    upcoming = None
    if next_prompts:
        next_started = time.perf_counter()
        upcoming = cluster.start_generation(next_prompts, SamplingSettings.from_config(config.rollout, step + 1))
    else:
        cluster.sleep_rollout(keep_weights=not syncs)
    metrics = cluster.train_step(micro_batches, num_sequences=len(totals), num_tokens=num_tokens)
    following = None
    if upcoming is not None:
        update_done = time.perf_counter()
        finished_during_update = cluster.generation_done(upcoming)
        next_groups = cluster.finish_generation(upcoming)  # the engines must be idle before the sync
        collected = time.perf_counter()
        hidden = 1.0 if finished_during_update else (update_done - next_started) / max(collected - next_started, 1e-9)
        following = Prefetched(next_groups, collected - update_done, hidden)
    if syncs:
        metrics.update(cluster.sync_weights())
    else:
        cluster.wake_rollout()
    if config.rollout.overlap == "one_step":
        # The update compared the learner with samples one update old: that is the lag, not the sync.
        for key in [k for k in metrics if k.startswith("sync/logp_diff")]:
            metrics[key.replace("sync/logp_diff", "rollout/lag_logp_diff")] = metrics.pop(key)
        metrics.update(cluster.landed_sync_gap(groups))
        if prefetched is not None:
            metrics["rollout/overlap_hidden"] = prefetched.hidden

    metrics.update(rollout_metrics(sampled))
    metrics.update(advantage_metrics(totals, advantages, config.rollout.n))
    metrics.update(merge_reward_rounds(reward_rounds))
    metrics.update(resampling)
    metrics.update(layout_metrics(micro_batches))
    # The seconds this step waited on generation: its own groups when they were
    # not prefetched, and the next step's once its update was done.
    metrics["time/generate"] = seconds["generate"] + (following.waited_s if following is not None else 0.0)
    metrics["time/reward"] = seconds["reward"]
    metrics["time/step"] = time.perf_counter() - t0
    return metrics, scored, following


def merge_reward_rounds(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    """One step's reward-pool metrics over its draws: error counts add up, logged metrics are averaged."""
    merged: dict[str, float] = {}
    for key in dict.fromkeys(k for r in rounds for k in r):
        values = [r[key] for r in rounds if key in r]
        merged[key] = sum(values) / len(values) if key.startswith("reward_logged/") else sum(values)
    return merged


def _console(line: str) -> None:
    print(line, flush=True)


def train(
    config: Config,
    print_fn: Callable[[str], None] | None = None,
    progress_bar: bool | None = None,
    library_logs: bool = False,
) -> RunResult:
    """Run (or resume) GRPO training as ``config`` says; returns where the outputs are.

    ``print_fn`` receives the human-readable lines (default: stdout); the
    progress bar is drawn only on a terminal and with the default ``print_fn``.
    ``library_logs``: the libraries' output (the actors', and the driver's
    library loggers) goes to ``<run>/logs/`` instead of the console.
    """
    if print_fn is None:
        print_fn = _console
    else:
        progress_bar = False
    device = resolve_device(config)
    run = RunLifecycle(config, print_fn, progress_bar)
    try:
        return _train(config, run, device, print_fn, library_logs)
    finally:
        run.close()


def _train(
    config: Config, run: RunLifecycle, device: str, print_fn: Callable[[str], None], library_logs: bool
) -> RunResult:
    log_dir = run.run_dir / "logs" if library_logs else None
    if log_dir is not None:
        capture_driver_logs(log_dir)
        print_fn(f"library logs (Ray, vLLM, DeepSpeed): {log_dir}/")

    tokenizer = load_tokenizer(config.model.path)
    if config.model.lora.r > 0:
        lora.check_targets(resolve_model_path(config.model.path), config.model.lora)
    prompts, report = build_prompts(load_rows(config.data), tokenizer, config.data)
    print_fn(f"data: {report.summary()}")
    check_reward_columns(config.rewards.functions, prompts[0].columns, config.data.source)
    prompts, eval_prompts = eval_prompt_set(config, tokenizer, prompts)
    if eval_prompts:
        held = (
            "held out of the training data"
            if config.eval.source is None
            else f"from {config.eval.source} ({config.eval.split})"
        )
        print_fn(f"eval: {len(eval_prompts)} questions {held}")
    lc = config.learner
    if len(prompts) < lc.prompts_per_step:
        raise DataError(
            f"{len(prompts)} prompts cannot fill one step of learner.prompts_per_step={lc.prompts_per_step}"
        )
    sampler = PromptSampler(len(prompts), lc.prompts_per_step, seed=config.data.seed, shuffle=config.data.shuffle)
    total_steps = (
        lc.epochs * sampler.steps_per_epoch
        if lc.max_steps is None
        else min(lc.epochs * sampler.steps_per_epoch, lc.max_steps)
    )
    start_step = run.resume_position(sampler, total_steps)
    if start_step > total_steps:
        return run.result
    run.open_tracking()

    connect_ray(stream_actor_logs=log_dir is None)
    started = time.perf_counter()
    cluster = Cluster(config, device, total_steps, run_id=run.run_dir.name, log_dir=log_dir)
    rewards = RewardPool(config.rewards, log_dir)
    print_fn(
        f"started {plural(config.rollout.num_engines, 'rollout engine')} ({config.rollout.backend}, {device}), "
        f"{plural(config.placement.learner_gpus, 'learner rank')}, {config.rewards.num_workers} reward workers "
        f"in {time.perf_counter() - started:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in cluster.startup.items())}); "
        f"{cluster.sync_choice.line()}"
    )
    step = start_step
    try:
        run.attach(cluster, rewards, tokenizer, sampler, eval_prompts)
        gate = SyncGate(config.sync)
        with StopSignals() as stop:
            run.begin()
            prefetched = None
            overlap = config.rollout.overlap == "one_step"
            for step in range(start_step, total_steps + 1):
                batch = [prompts[i] for i in sampler.next_batch()]
                # The next batch is peeked, not taken: a checkpoint after this step
                # resumes at it (and samples it afresh, with the saved weights).
                upcoming = [prompts[i] for i in sampler.peek_batch()] if overlap and step < total_steps else None
                metrics, scored, prefetched = grpo_step(
                    step,
                    batch,
                    cluster,
                    rewards,
                    config,
                    tokenizer.pad_token_id,
                    prefetched,
                    upcoming,
                    total_steps,
                    draw_prompts=lambda: [prompts[i] for i in sampler.next_batch()],
                )
                run.after_step(step, metrics, scored)
                # The engine got the learner's weights before this step's generation:
                # at the start (initial or resumed weights) or by the last step's sync.
                gate.check(
                    step,
                    metrics["sync/logp_diff"],
                    after_sync=step == start_step or (step - 1) % config.sync.interval_steps == 0,
                )
                if stop.requested:
                    return run.stopped(step, stop.requested, stop.exit_code)
            run.finish()
    except RunFault as fault:
        hint = run.recovery_hint()  # the faults raised by the run's own bookkeeping name it already
        raise RunFault(f"step {step}: {fault}" if hint in str(fault) else f"step {step}: {fault}; {hint}") from None
    except RayActorError as exc:  # an actor died where no retry applies (an export, a sync, a checkpoint)
        raise RunFault(f"step {step}: an actor died ({actor_death(exc)}); {run.recovery_hint()}") from None
    finally:
        rewards.shutdown()
        cluster.shutdown()
    return run.result
