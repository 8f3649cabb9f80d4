"""The GRPO driver loop: prompts -> rollout -> rewards -> advantages -> update -> sync -> log.

It reads top to bottom as the algorithm; the machinery (Ray actors, vLLM,
DeepSpeed) sits behind :class:`aharl.launch.cluster.Cluster` and
:class:`aharl.rewards.pool.RewardPool`. Around the steps: resuming from a
checkpoint, evaluation before / during / after training, checkpoints, and
the outputs a user watches (metrics, samples, wandb, plots, the report).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from aharl.config import Config, dump_config
from aharl.data.prompts import build_prompts
from aharl.data.sampler import PromptSampler
from aharl.data.sources import load_rows
from aharl.errors import AharlError, DataError
from aharl.evaluation.report import write_report
from aharl.evaluation.run import GREEDY, EvalResult, eval_prompt_set, evaluate
from aharl.modelhub import load_tokenizer
from aharl.rollout.engine import SamplingSettings
from aharl.tracking.progress import Progress, format_duration
from aharl.tracking.samples import SamplesLog, sample_rows
from aharl.tracking.wandb_run import WandbRun
from aharl.trainer import checkpoint as ckpt
from aharl.trainer.advantages import advantage_metrics, group_advantages
from aharl.trainer.batch import build_micro_batches
from aharl.trainer.learner import resolve_device
from aharl.trainer.metrics import MetricsLog, format_step, rollout_metrics, truncate_after
from aharl.trainer.stop import StopSignals

log = logging.getLogger("aharl")


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    last_step: int = 0
    # The signal that stopped the run early (a checkpoint was written), else None.
    stopped_by: str | None = None
    exit_code: int = 0
    checkpoint: Path | None = None


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


def _console(line: str) -> None:
    print(line, flush=True)


def train(config: Config, print_fn: Callable[[str], None] | None = None, progress_bar: bool | None = None) -> RunResult:
    """Run (or resume) GRPO training as ``config`` says; returns where the outputs are.

    ``print_fn`` receives the human-readable lines (default: stdout); the
    progress bar is drawn only on a terminal and with the default ``print_fn``.
    """
    from aharl.launch.cluster import Cluster, connect_ray
    from aharl.rewards.pool import RewardPool

    if print_fn is None:
        print_fn = _console
    else:
        progress_bar = False
    device = resolve_device(config)
    run_dir = run_directory(config)
    resume_from = ckpt.resolve_resume(config.resume, run_dir)
    # A checkpoint of another run directory starts this one afresh (its logs
    # begin at the checkpoint's next step, its wandb run is a new one).
    continues_run_dir = resume_from is not None and resume_from.resolve().parent.parent == run_dir.resolve()
    if resume_from is None and config.resume == "auto":
        print_fn(f"resume=auto: no checkpoint in {run_dir / 'checkpoints'}; starting at step 1")
    if not continues_run_dir:
        prepare_run_directory(run_dir)
    (run_dir / "config.yaml").write_text(dump_config(config))

    # config -> prompts
    tokenizer = load_tokenizer(config.model.path)
    prompts, report = build_prompts(load_rows(config.data), tokenizer, config.data)
    print_fn(f"data: {report.summary()}")
    prompts, eval_prompts = eval_prompt_set(config, tokenizer, prompts)
    if eval_prompts:
        held = "held out of the training data" if config.eval.source is None else f"from {config.eval.source} ({config.eval.split})"
        print_fn(f"eval: {len(eval_prompts)} questions {held}")
    lc = config.learner
    if len(prompts) < lc.prompts_per_step:
        raise DataError(f"{len(prompts)} prompts cannot fill one step of learner.prompts_per_step={lc.prompts_per_step}")
    sampler = PromptSampler(len(prompts), lc.prompts_per_step, seed=config.data.seed, shuffle=config.data.shuffle)
    total_steps = lc.epochs * sampler.steps_per_epoch
    if lc.max_steps is not None:
        total_steps = min(total_steps, lc.max_steps)

    # A checkpoint's data position and bookkeeping (the learner's state loads once the actors exist).
    state = None
    if resume_from is not None:
        state = ckpt.read_checkpoint(resume_from)
        try:
            sampler.load_state_dict(state.sampler)
        except ValueError as exc:
            raise AharlError(f"cannot resume from {resume_from}: {exc}; resume with the data settings the run started with") from None
        if state.total_steps != total_steps:
            print_fn(f"note: the checkpoint's run had {state.total_steps} steps, this config gives {total_steps}; the LR schedule follows the new count")
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_after(run_dir / name, state.step)
    start_step = state.step + 1 if state else 1
    if start_step > total_steps:
        print_fn(f"{resume_from} is step {state.step} of {total_steps}: the run is complete (raise learner.max_steps or learner.epochs to train on)")
        return RunResult(run_dir, last_step=state.step, checkpoint=resume_from)

    wandb = WandbRun(config, run_dir, state.wandb_run_id if state and continues_run_dir else None)
    connect_ray()
    started = time.perf_counter()
    cluster = Cluster(config, device, total_steps, run_id=run_dir.name)
    rewards = RewardPool(config.rewards)
    print_fn(f"started rollout ({config.rollout.backend}, {device}), learner, {config.rewards.num_workers} reward workers in {time.perf_counter() - started:.0f}s; sync: {cluster.sync.method}")
    metrics_log = MetricsLog(run_dir)
    samples_log = SamplesLog(run_dir)
    result = RunResult(run_dir, last_step=start_step - 1)
    group_size = config.rollout.n
    elapsed_before = state.elapsed_s if state else 0.0
    loop_started = time.perf_counter()

    def run_eval(label: str) -> EvalResult:
        evaluation = evaluate(
            cluster.generate, lambda groups: rewards.score_groups(groups)[0], eval_prompts, GREEDY,
            max_tokens=config.rollout.max_tokens, seed=config.rollout.seed,
        )
        save_eval(run_dir, label, evaluation)
        s = evaluation.summary
        print_fn(
            f"eval {label}: accuracy {s['accuracy_numeric']:.3f} numeric, {s['accuracy_exact']:.3f} exact | format strict "
            f"{s['format_strict']:.3f} soft {s['format_soft']:.3f} | len {s['mean_length']:.0f} | reward {s['reward_total']:.3f}"
        )
        return evaluation

    def save_checkpoint(step: int) -> Path:
        began = time.perf_counter()

        def fill(staging: Path) -> None:
            cluster.save_learner_state(str(staging / ckpt.LEARNER_DIR))
            export_policy(cluster, tokenizer, staging / "hf")
            (staging / "config.yaml").write_text(dump_config(config))

        trainer_state = ckpt.TrainerState(
            step=step, total_steps=total_steps, sampler=sampler.state_dict(),
            elapsed_s=elapsed_before + time.perf_counter() - loop_started, wandb_run_id=wandb.run_id,
        )
        path = ckpt.write_checkpoint(run_dir / "checkpoints", step, fill, trainer_state, config.checkpoint.keep_last)
        progress.write(f"checkpoint: {path} ({time.perf_counter() - began:.1f}s)")
        return path

    progress = Progress(total_steps, start_step, print_fn, bar=progress_bar)
    try:
        with StopSignals() as stop:
            if state is not None:
                # The rollout engine starts from the initial weights: give it the checkpoint's first.
                cluster.load_learner_state(str(resume_from / ckpt.LEARNER_DIR))
                synced = cluster.sync_weights()
                print_fn(f"resumed from {resume_from}: step {start_step} next, learner state loaded, weights synced to the rollout engine ({synced['time/sync']:.1f}s)")
            elif eval_prompts:
                metrics_log.write(0, eval_metrics(run_eval("before")))

            for step in range(start_step, total_steps + 1):
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
                if eval_prompts and config.eval.every_steps and step % config.eval.every_steps == 0 and step < total_steps:
                    began = time.perf_counter()
                    metrics.update(eval_metrics(run_eval(f"step {step}")))
                    metrics["time/eval"] = time.perf_counter() - began

                rows = sample_rows(scored, config.logging.samples_per_step)
                metrics_log.write(step, metrics)
                samples_log.write(step, scored, rows)
                wandb.log(step, metrics, rows)
                result.history.append(metrics)
                result.last_step = step
                shown = step % config.logging.every_steps == 0 or step == total_steps
                progress.step_done(step, metrics["time/step"], metrics["reward/total"], format_step(step, total_steps, metrics) if shown else None)

                if step % config.checkpoint.every_steps == 0 or step == total_steps or stop.requested:
                    result.checkpoint = save_checkpoint(step)
                if stop.requested:
                    result.stopped_by, result.exit_code = stop.requested, stop.exit_code
                    progress.write(f"stopped by {stop.requested} after step {step}; continue with: aharl train <config> resume=auto")
                    return result

            progress.close()
            finish_run(config, run_dir, total_steps, cluster, tokenizer, eval_prompts, run_eval, metrics_log, wandb, print_fn)
            total = elapsed_before + time.perf_counter() - loop_started
            print_fn(f"trained {total_steps} step{'s' if total_steps != 1 else ''} in {format_duration(total)}")
    finally:
        progress.close()
        wandb.finish()
        rewards.shutdown()
        cluster.shutdown()
    return result


def finish_run(
    config, run_dir: Path, last_step: int, cluster, tokenizer, eval_prompts, run_eval, metrics_log: MetricsLog, wandb: WandbRun, print_fn
) -> None:
    """The outputs of a finished run: the HF policy, the final evaluation and report, the plots."""
    final = export_policy(cluster, tokenizer, run_dir / "final")
    print_fn(f"policy saved to {final}")
    if eval_prompts:
        after = run_eval("after")
        final_metrics = eval_metrics(after)
        metrics_log.write(last_step, final_metrics)  # an eval-only row, as the one of step 0
        wandb.log(last_step, final_metrics)
        before = load_eval(run_dir, "before")
        if before is not None:
            md, page = write_report(run_dir, f"{run_dir.name}: before and after training", before, after, config.eval.report_questions)
            print_fn(f"before/after report: {md} and {page}")
    if config.logging.plots:
        try:
            from aharl.tracking.plots import plot_run

            paths = plot_run(run_dir)
        except ImportError:
            print_fn("plots skipped: matplotlib is not installed (pip install 'aharl[track]'; then aharl plot RUN_DIR)")
        else:
            print_fn(f"plots: {paths[0].parent}/ ({', '.join(p.name for p in paths)})")


def export_policy(cluster, tokenizer, directory: Path) -> Path:
    """The policy with its tokenizer as a Hugging Face directory (transformers and vLLM load it)."""
    cluster.export_policy(str(directory))
    tokenizer.save_pretrained(directory)
    return directory


def eval_metrics(evaluation: EvalResult) -> dict[str, float]:
    """An evaluation's summary under the ``eval/`` prefix, as metrics rows and wandb hold it."""
    return {f"eval/{k}": v for k, v in evaluation.summary.items()}


def _eval_path(run_dir: Path, label: str) -> Path:
    return run_dir / "eval" / f"{label.replace(' ', '-')}.json"


def save_eval(run_dir: Path, label: str, evaluation: EvalResult) -> Path:
    path = _eval_path(run_dir, label)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(asdict(evaluation), indent=1))
    return path


def load_eval(run_dir: Path, label: str) -> EvalResult | None:
    path = _eval_path(run_dir, label)
    if not path.is_file():
        return None
    return EvalResult(**json.loads(path.read_text()))
