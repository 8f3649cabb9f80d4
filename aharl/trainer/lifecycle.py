"""The run around the steps: its directory, resume, evaluation, checkpoints, logs, export, report and plots.

:func:`aharl.trainer.loop.train` owns the step order; this object owns
everything a run leaves on disk and on the console between and after the
steps, so the loop reads as the algorithm.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from aharl import faults
from aharl.config import Config, dump_config, load_config
from aharl.data.sampler import PromptSampler
from aharl.errors import AharlError, RunFault
from aharl.evaluation.report import write_report
from aharl.evaluation.run import GREEDY, evaluate
from aharl.rewards.calling import RewardStep
from aharl.tracking import checkpoints as ckpt
from aharl.tracking.evals import read_eval_file, run_eval_path, write_eval_file
from aharl.tracking.jsonl import truncate_after
from aharl.tracking.metrics import MetricsLog, format_step
from aharl.tracking.progress import Progress, format_duration
from aharl.tracking.samples import SamplesLog, sample_rows
from aharl.tracking.wandb_run import WandbRun
from aharl.trainer.resume_rules import config_changes, describe
from aharl.types import EvalResult, Prompt, ScoredGroup

PrintFn = Callable[[str], None]


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    last_step: int = 0
    # The signal that stopped the run early (a checkpoint was written), else None.
    stopped_by: str | None = None
    exit_code: int = 0
    checkpoint: Path | None = None


def check_memory_plan(config: Config) -> None:
    """Refuse, in one line, a config whose memory plan does not fit this machine's GPU.

    Runs only when the run is on CUDA and the driver sees a GPU (or
    ``placement.gpu_memory_gib`` says its size): a driver on a CPU-only head
    node of a Ray cluster cannot know the workers' GPUs, so there the check
    is skipped (``aharl plan --gpu-memory-gib N`` answers it by hand).
    """
    import torch

    from aharl.device import resolve_device
    from aharl.planning.memory import model_shape, plan_with_fix, refusal

    if resolve_device(config) != "cuda":
        return
    gpu_gib = config.placement.gpu_memory_gib
    if gpu_gib is None:
        if not torch.cuda.is_available():
            return
        gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    try:
        model_shape(config.model.path)
    except AharlError as exc:  # a hub model outside the built-in table: the hub loads it; the plan cannot size it
        logging.getLogger("aharl.trainer").warning("memory plan skipped: %s", exc)
        return
    plan = plan_with_fix(config, gpu_gib, lambda extra: load_config(None, [*config_overrides(config), *extra]))
    if not plan.fits:
        raise AharlError(refusal(plan))


def config_overrides(config: Config) -> list[str]:
    """``config`` as dotted ``key=value`` overrides (JSON values), so a candidate change can be re-checked on top of it."""
    import json

    def walk(prefix: str, node: Any) -> list[str]:
        if isinstance(node, dict) and node:
            return [item for key, value in node.items() for item in walk(f"{prefix}{key}.", value)]
        return [f"{prefix[:-1]}={json.dumps(node)}"]

    return walk("", config.to_dict())


def run_directory(config: Config) -> Path:
    name = config.logging.run_name or time.strftime("run-%Y%m%d-%H%M%S")
    return Path(config.logging.output_dir) / name


LOCK_FILE = ".aharl.lock"


def lock_run_directory(run_dir: Path) -> int:
    """Take the run directory for this process, or refuse: two runs writing one directory interleave its files.

    An advisory ``flock`` on ``<run>/.aharl.lock``, held until the process
    ends; the kernel drops it when the process dies (a SIGKILL included), so
    a killed run never leaves a stale lock behind. Returns the open descriptor.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = path.read_text().strip() or "another process"
        os.close(fd)
        raise AharlError(
            f"run directory {run_dir} is in use by another aharl run ({holder}); wait for it to end, stop it, "
            "or give this run another logging.run_name"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    return fd


def prepare_run_directory(run_dir: Path) -> None:
    """Create ``run_dir``; an earlier run's files there move to ``previous-<time>/``, never overwritten."""
    run_dir.mkdir(parents=True, exist_ok=True)
    earlier = [p for p in run_dir.iterdir() if not p.name.startswith("previous-") and p.name != LOCK_FILE]
    if not earlier:
        return
    started = max(p.stat().st_mtime for p in earlier)
    name = time.strftime("previous-%Y%m%d-%H%M%S", time.localtime(started))
    keep, n = run_dir / name, 1
    while keep.exists():  # two earlier runs within one second: never merge them
        n += 1
        keep = run_dir / f"{name}-{n}"
    keep.mkdir()
    for path in earlier:
        path.rename(keep / path.name)


def write_failure(exc: BaseException) -> str:
    """The line of a failed write that names the cause (Ray prefixes an actor's error with its whole traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "No space left" in line or "Errno" in line or "Error" in line:
            return line[:300]
    return lines[-1][:300] if lines else type(exc).__name__


def eval_metrics(evaluation: EvalResult) -> dict[str, float]:
    """An evaluation's summary under the ``eval/`` prefix, as metrics rows and wandb hold it."""
    return {f"eval/{k}": v for k, v in evaluation.summary.items()}


# The order a run goes through; each method names the phase it needs (:meth:`RunLifecycle._enter`).
PHASES = ("opened", "positioned", "tracking", "attached", "running", "ended")


class RunLifecycle:
    """One run's bookkeeping, from its directory to its report.

    The order of use, enforced (a call out of order raises ``RuntimeError``):
    construct (run directory, resume target), :meth:`resume_position`,
    :meth:`open_tracking`, :meth:`attach` (once the actors exist),
    :meth:`begin`, :meth:`after_step` per step, then :meth:`finish` or
    :meth:`stopped`; :meth:`close` at any point. The memory plan is checked
    before construction (:func:`check_memory_plan`).
    """

    def __init__(self, config: Config, print_fn: PrintFn, progress_bar: bool | None) -> None:
        self.config = config
        self.print = print_fn
        self.progress_bar = progress_bar
        self.run_dir = run_directory(config)
        self.wandb: WandbRun | None = None
        self.progress: Progress | None = None
        self._lock: int | None = None
        self._phase = "new"
        # Born with the actors (attach): the cluster, the reward pool and what evaluation needs.
        self.cluster: Any = None
        self.rewards: Any = None
        self.tokenizer: Any = None
        self.sampler: PromptSampler | None = None
        self.eval_prompts: list[Prompt] = []
        # Read-only checks first: a bad resume target creates no directory.
        self.resume_from = ckpt.resolve_resume(config.resume, self.run_dir)
        if self.resume_from is not None:
            self.check_resumed_config()  # before this run's config.yaml replaces the last one
        self._lock = lock_run_directory(self.run_dir)
        try:
            self._open_directory()
        except BaseException:
            self.close()
            raise
        self._phase = "opened"

    def _enter(self, phase: str, method: str) -> None:
        """Move to ``phase`` from the one before it; any other order is a bug in the caller."""
        before = PHASES[PHASES.index(phase) - 1]
        if self._phase != before:
            raise RuntimeError(
                f"RunLifecycle.{method} needs phase '{before}' but the run is '{self._phase}' (order: {' -> '.join(PHASES)})"
            )
        self._phase = phase

    def _require(self, phase: str, method: str) -> None:
        if self._phase != phase:
            raise RuntimeError(f"RunLifecycle.{method} needs phase '{phase}' but the run is '{self._phase}'")

    def _open_directory(self) -> None:
        config, print_fn = self.config, self.print
        # A checkpoint of another run directory starts this one afresh (its logs
        # begin at the checkpoint's next step, its wandb run is a new one).
        self.continues_run_dir = (
            self.resume_from is not None and self.resume_from.resolve().parent.parent == self.run_dir.resolve()
        )
        if self.resume_from is None and config.resume == "auto":
            print_fn(f"resume=auto: no checkpoint in {self.run_dir / 'checkpoints'}; starting at step 1")
        if not self.continues_run_dir:
            prepare_run_directory(self.run_dir)
        (self.run_dir / "config.yaml").write_text(dump_config(config))
        self.state: ckpt.TrainerState | None = None
        self.result = RunResult(self.run_dir)
        self.total_steps = 0
        self.metrics_log = MetricsLog(self.run_dir)
        self.samples_log = SamplesLog(self.run_dir)
        self.skipped_steps = 0  # updates skipped for a non-finite loss or gradient norm, all runs of this directory
        self.skipped_in_a_row = 0
        self.checkpointed_step: int | None = None  # the step of the last checkpoint this process wrote

    # -- before the actors start -------------------------------------------

    def resume_position(self, sampler: PromptSampler, total_steps: int) -> int:
        """The first step to run: 1, or the step after the checkpoint (whose data position the sampler takes)."""
        self._enter("positioned", "resume_position")
        self.total_steps = total_steps
        if self.resume_from is not None:
            self.state = state = ckpt.read_checkpoint(self.resume_from)
            self.skipped_steps = state.skipped_steps
            try:
                sampler.load_state_dict(state.sampler)
            except ValueError as exc:
                raise AharlError(
                    f"cannot resume from {self.resume_from}: {exc}; resume with the data settings the run started with"
                ) from None
            if state.total_steps != total_steps:
                self.print(
                    f"note: the checkpoint's run had {state.total_steps} steps, this config gives {total_steps}; the LR schedule follows the new count"
                )
            for name in ("metrics.jsonl", "samples.jsonl"):
                truncate_after(self.run_dir / name, state.step)
        start_step = self.state.step + 1 if self.state else 1
        self.result.last_step = start_step - 1
        if start_step > total_steps:
            self.print(
                f"{self.resume_from} is step {start_step - 1} of {total_steps}: the run is complete (raise learner.max_steps or learner.epochs to train on)"
            )
            self.result.checkpoint = self.resume_from
        return start_step

    def check_resumed_config(self) -> None:
        """Refuse a resume whose config changes what is trained (one line naming the key); note harmless changes."""
        saved = self.resume_from / "config.yaml"
        if not saved.is_file():
            self.print(f"note: {self.resume_from} has no config.yaml (an older checkpoint); the config is not compared")
            return
        text = saved.read_text()
        current = self.config.to_dict()
        allowed, refused = config_changes(text, current)
        if refused:
            raise AharlError(
                f"cannot resume from {self.resume_from} with a changed {describe(refused[0], text, current)}"
                + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else "")
                + ": it changes what the run trains; resume with the checkpoint's value, or start a new run"
            )
        if allowed:
            self.print(f"note: resuming with changed {', '.join(describe(k, text, current) for k in allowed)}")

    def open_tracking(self) -> None:
        """wandb (a resumed run of this directory continues its wandb run); before the actors, so a missing wandb fails fast."""
        self._enter("tracking", "open_tracking")
        same_run = self.state is not None and self.continues_run_dir
        self.wandb = WandbRun(self.config, self.run_dir, self.state.wandb_run_id if same_run else None)
        self._elapsed_before = self.state.elapsed_s if self.state else 0.0

    # -- with the actors -----------------------------------------------------

    def attach(
        self, cluster: Any, rewards: Any, tokenizer: Any, sampler: PromptSampler, eval_prompts: Sequence[Prompt]
    ) -> None:
        self._enter("attached", "attach")
        self.cluster, self.rewards, self.tokenizer = cluster, rewards, tokenizer
        self.sampler, self.eval_prompts = sampler, list(eval_prompts)
        self._loop_started = time.perf_counter()
        self.progress = Progress(self.total_steps, self.result.last_step + 1, self.print, bar=self.progress_bar)

    def begin(self) -> None:
        """A resumed run puts the checkpoint's weights into the rollout engine; a new one evaluates the initial policy."""
        self._enter("running", "begin")
        if self.state is not None:
            # The rollout engine starts from the initial weights: give it the checkpoint's first.
            self.cluster.load_learner_state(str(self.resume_from / ckpt.LEARNER_DIR))
            synced = self.cluster.sync_weights()
            self.print(
                f"resumed from {self.resume_from}: step {self.result.last_step + 1} next, learner state loaded, "
                f"weights synced to the rollout engine ({synced['time/sync']:.1f}s)"
            )
        elif self.eval_prompts:
            self.metrics_log.write(0, eval_metrics(self.run_eval("before", updates=0)))

    def after_step(self, step: int, metrics: dict[str, float], scored: Sequence[ScoredGroup]) -> None:
        """Periodic evaluation, the step's logs and console line, and a checkpoint when one is due."""
        self._require("running", "after_step")
        c = self.config
        if self.eval_prompts and c.eval.every_steps and step % c.eval.every_steps == 0 and step < self.total_steps:
            began = time.perf_counter()
            metrics.update(eval_metrics(self.run_eval(f"step {step}", updates=step)))
            metrics["time/eval"] = time.perf_counter() - began
        self.count_skipped_update(step, metrics, scored)
        rows = sample_rows(scored, c.logging.samples_per_step)
        try:
            faults.reached("driver.log")
            self.metrics_log.write(step, metrics)
            self.samples_log.write(step, scored, rows)
        except OSError as exc:
            raise RunFault(
                f"could not write step {step}'s metrics and samples in {self.run_dir} ({exc}); {self.recovery_hint()}"
            ) from None
        self.wandb.log(step, metrics, rows)
        self.result.history.append(metrics)
        self.result.last_step = step
        shown = step % c.logging.every_steps == 0 or step == self.total_steps
        line = format_step(step, self.total_steps, metrics) if shown else None
        self.progress.step_done(step, metrics["time/step"], metrics["reward/total"], line)
        if step % c.checkpoint.every_steps == 0 or step == self.total_steps:
            self.save_checkpoint(step)
        if self.skipped_in_a_row >= c.learner.max_skipped_in_a_row:
            raise RunFault(
                f"{self.skipped_in_a_row} updates in a row (steps {step - self.skipped_in_a_row + 1}-{step}) were skipped for a non-finite "
                f"loss or gradient norm; the weights are those of step {step - self.skipped_in_a_row}; lower learner.lr or check the "
                f"reward functions, then continue: {self.recovery_hint()}"
            )

    def count_skipped_update(self, step: int, metrics: dict[str, float], scored: Sequence[ScoredGroup]) -> None:
        """``train/skipped_steps``: the learner left the weights unchanged because the loss or gradient norm was not finite."""
        if metrics.get("train/update_skipped", 0.0) > 0:
            self.skipped_steps += 1
            self.skipped_in_a_row += 1
            prompts = [sg.group.prompt.index for sg in scored]
            self.progress.write(
                f"step {step}: update skipped, non-finite loss {metrics.get('loss')} or gradient norm {metrics.get('grad_norm')} "
                f"(prompts {prompts}); {self.skipped_in_a_row} in a row, the run stops at {self.config.learner.max_skipped_in_a_row}"
            )
        else:
            self.skipped_in_a_row = 0
        metrics["train/skipped_steps"] = float(self.skipped_steps)

    def recovery_hint(self) -> str:
        """Where the run can continue from: its last complete checkpoint, named."""
        last = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        if last is None:
            return "no checkpoint was written yet, so the run starts over (checkpoint.every_steps sets how often one is written)"
        return f"the last complete checkpoint is {last} (continue with: aharl train <config> resume=auto)"

    def stopped(self, step: int, signal_name: str, exit_code: int) -> RunResult:
        """A stop after ``step``: that step's checkpoint (unless it has one already), then the result.

        Decided here, after the step's bookkeeping, and not inside it: a signal
        that lands while :meth:`after_step` runs (its console line already out)
        still gets the checkpoint that ``resume=auto`` continues from.
        """
        self._enter("ended", "stopped")
        if self.checkpointed_step != step:
            self.save_checkpoint(step)
        self.result.stopped_by, self.result.exit_code = signal_name, exit_code
        self.progress.write(
            f"stopped by {signal_name} after step {step}; continue with: aharl train <config> resume=auto"
        )
        return self.result

    def finish(self) -> None:
        """The outputs of a finished run: the HF policy, the final evaluation and report, the plots."""
        self._enter("ended", "finish")
        self.progress.close()
        try:
            final = self.export_policy(self.run_dir / "final")
        except Exception as exc:
            raise RunFault(
                f"could not write the final policy to {self.run_dir / 'final'} ({write_failure(exc)}); {self.recovery_hint()}"
            ) from None
        self.print(f"policy saved to {final}")
        if self.eval_prompts:
            after = self.run_eval("after", updates=self.result.last_step)
            final_metrics = eval_metrics(after)
            self.metrics_log.write(self.total_steps, final_metrics)  # an eval-only row, as the one of step 0
            self.wandb.log(self.total_steps, final_metrics)
            before_file = run_eval_path(self.run_dir, "before")
            if before_file.is_file():
                before = read_eval_file(before_file)["greedy"]
                md, page = write_report(
                    self.run_dir,
                    f"{self.run_dir.name}: before and after training",
                    before,
                    after,
                    self.config.eval.report_questions,
                )
                self.print(f"before/after report: {md} and {page}")
        if self.config.logging.plots:
            self._plot()
        self.print(
            f"trained {self.total_steps} step{'s' if self.total_steps != 1 else ''} in {format_duration(self._elapsed())}"
        )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self._lock is not None:
            os.close(self._lock)  # releases the run directory
            self._lock = None

    # -- pieces ----------------------------------------------------------------

    def run_eval(self, label: str, updates: int) -> EvalResult:
        """Greedy answers of the current policy (after ``updates`` updates) to the held-out questions, saved as ``eval/<label>.json``."""
        step = RewardStep(global_step=updates, max_steps=self.total_steps)
        evaluation = evaluate(
            self.cluster.generate,
            lambda groups: self.rewards.score_groups(groups, step)[0],
            self.eval_prompts,
            GREEDY,
            max_tokens=self.config.rollout.max_tokens,
            seed=self.config.rollout.seed,
        )
        write_eval_file(
            run_eval_path(self.run_dir, label),
            {evaluation.mode: evaluation},
            {"label": label, "model": self.config.model.path},
        )
        s = evaluation.summary
        self.print(
            f"eval {label}: accuracy {s['accuracy_numeric']:.3f} numeric, {s['accuracy_exact']:.3f} exact | format strict "
            f"{s['format_strict']:.3f} soft {s['format_soft']:.3f} | len {s['mean_length']:.0f} | reward {s['reward_total']:.3f}"
        )
        return evaluation

    def save_checkpoint(self, step: int) -> Path:
        began = time.perf_counter()

        def fill(staging: Path) -> None:
            self.cluster.save_learner_state(str(staging / ckpt.LEARNER_DIR))
            faults.reached("driver.checkpoint")
            self.export_policy(staging / "hf")
            (staging / "config.yaml").write_text(dump_config(self.config))

        state = ckpt.TrainerState(
            step=step,
            total_steps=self.total_steps,
            sampler=self.sampler.state_dict(),
            elapsed_s=self._elapsed(),
            wandb_run_id=self.wandb.run_id,
            skipped_steps=self.skipped_steps,
        )
        try:
            path = ckpt.write_checkpoint(
                self.run_dir / "checkpoints", step, fill, state, self.config.checkpoint.keep_last
            )
        except (
            Exception
        ) as exc:  # a full disk or a failing write, here or in a learner rank (torch.save says RuntimeError)
            raise RunFault(
                f"could not write the step-{step} checkpoint ({write_failure(exc)}); it was discarded; {self.recovery_hint()}"
            ) from None
        self.progress.write(f"checkpoint: {path} ({time.perf_counter() - began:.1f}s)")
        self.result.checkpoint, self.checkpointed_step = path, step
        return path

    def export_policy(self, directory: Path) -> Path:
        """The policy with its tokenizer as a Hugging Face directory (transformers and vLLM load it)."""
        self.cluster.export_policy(str(directory))
        self.tokenizer.save_pretrained(directory)
        return directory

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._loop_started

    def _plot(self) -> None:
        try:
            from aharl.tracking.plots import plot_run

            paths = plot_run(self.run_dir)
        except ImportError:
            self.print(
                "plots skipped: matplotlib is not installed (pip install 'aharl[track]'; then aharl plot RUN_DIR)"
            )
        else:
            self.print(f"plots: {paths[0].parent}/ ({', '.join(p.name for p in paths)})")
