"""The GRPO driver loop: prompts -> rollout -> rewards -> advantages -> update -> sync -> log.

:func:`train` starts the run and runs its steps (:func:`aharl.trainer.step.grpo_step`,
under the rollout schedule :func:`step_context` picks) until the end or a stop. The machinery sits behind
:class:`aharl.runtime.cluster.Cluster` (the rollout and learner actors) and
:class:`aharl.runtime.reward_pool.RewardPool`; everything a run writes
(directory, resume, evaluation, checkpoints, report) is
:class:`aharl.trainer.lifecycle.RunLifecycle`.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from ray.exceptions import RayActorError

from aharl.config import Config
from aharl.data.prompts import build_prompts
from aharl.data.sampler import PromptSampler
from aharl.data.sources import load_rows
from aharl.device import resolve_device
from aharl.errors import DataError, RunFault
from aharl.evaluation.run import eval_prompt_set
from aharl.learner import lora
from aharl.modelhub import load_tokenizer, resolve_model_path
from aharl.rewards.registry import check_reward_columns
from aharl.rollout.engine import SamplingSettings
from aharl.runtime.actor_group import actor_death
from aharl.runtime.cluster import Cluster
from aharl.runtime.logs import capture_driver_logs
from aharl.runtime.ray_session import connect_ray
from aharl.runtime.reward_pool import RewardPool
from aharl.trainer.lifecycle import RunLifecycle, RunResult, check_memory_plan
from aharl.trainer.schedule import InTurnRollout, OneStepOffRollout, SyncCadence
from aharl.trainer.step import StepContext, grpo_step
from aharl.trainer.stop import StopSignals
from aharl.trainer.sync_gate import SyncGate
from aharl.types import Prompt


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


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
    check_memory_plan(config)  # will it fit? before anything starts (docs/memory-plan.md)
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
        ctx = step_context(config, cluster, rewards, tokenizer.pad_token_id, prompts, sampler, start_step, total_steps)
        gate = SyncGate(config.sync)
        with StopSignals() as stop:
            run.begin()
            for step in range(start_step, total_steps + 1):
                result = grpo_step(step, [prompts[i] for i in sampler.next_batch()], ctx)
                run.after_step(step, result.metrics, result.scored)
                gate.check(step, result.sync.logp_diff, after_sync=result.sync.expected_exact)
                if stop.requested:
                    return run.stopped(step, stop.requested, stop.exit_code)
            run.finish()
    except RunFault as fault:
        hint = run.recovery_hint()  # the faults raised by the run's own bookkeeping name it already
        line = f"step {step}: {fault}" if hint in str(fault) else f"step {step}: {fault}; {hint}"
        raise type(fault)(line) from None  # the same kind (a stage's timeout stays one)
    except RayActorError as exc:  # an actor died where no retry applies (an export, a sync, a checkpoint)
        raise RunFault(f"step {step}: an actor died ({actor_death(exc)}); {run.recovery_hint()}") from None
    finally:
        rewards.shutdown()
        cluster.shutdown()
    return run.result


def step_context(
    config: Config,
    cluster: Cluster,
    rewards: RewardPool,
    pad_id: int,
    prompts: Sequence[Prompt],
    sampler: PromptSampler,
    start_step: int,
    total_steps: int,
) -> StepContext:
    """The run's step context: its rollout schedule (``rollout.overlap``), sync cadence and prompt draws."""

    def settings(step: int) -> SamplingSettings:
        return SamplingSettings.from_config(config.rollout, step)

    rollout: InTurnRollout
    if config.rollout.overlap == "one_step":
        # The next batch is peeked, not taken: a checkpoint after this step
        # resumes at it (and samples it afresh, with the saved weights).
        def peek(step: int) -> list[Prompt] | None:
            return [prompts[i] for i in sampler.peek_batch()] if step < total_steps else None

        rollout = OneStepOffRollout(cluster, settings, peek)
    else:
        rollout = InTurnRollout(cluster, settings)
    return StepContext(
        config,
        cluster,
        rewards,
        rollout,
        SyncCadence(config.sync.interval_steps, start_step),
        pad_id,
        total_steps,
        draw_prompts=lambda: [prompts[i] for i in sampler.next_batch()],
    )
