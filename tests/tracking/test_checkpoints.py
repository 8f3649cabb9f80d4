"""Checkpoint files: atomic commit, the last N kept, what `resume=` finds, damaged input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from aharl.errors import AharlError
from aharl.tracking.checkpoints import (
    STAGING_PREFIX,
    STATE_FILE,
    TrainerState,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    resolve_resume,
    write_checkpoint,
)
from aharl.tracking.jsonl import truncate_after


def state(step: int) -> TrainerState:
    return TrainerState(step=step, total_steps=10, sampler={"epoch": 0, "position": step, "num_prompts": 40, "seed": 1})


def fill_with(payload: str):
    def fill(staging: Path) -> None:
        (staging / "payload.txt").write_text(payload)

    return fill


def test_checkpoints_commit_whole_and_only_the_last_n_are_kept(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        path = write_checkpoint(root, step, fill_with(f"weights {step}"), state(step), keep_last=2)
        assert path == root / checkpoint_name(step)
    assert [p.name for p in list_checkpoints(root)] == [checkpoint_name(3), checkpoint_name(4)]
    assert (latest_checkpoint(root) / "payload.txt").read_text() == "weights 4"
    assert read_checkpoint(latest_checkpoint(root)).sampler["position"] == 4


def test_a_failed_write_leaves_the_previous_checkpoint_latest_and_gives_its_space_back(tmp_path):
    root = tmp_path / "checkpoints"
    write_checkpoint(root, 1, fill_with("good"), state(1), keep_last=3)

    def dies_half_way(staging: Path) -> None:
        (staging / "payload.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_checkpoint(root, 2, dies_half_way, state(2), keep_last=3)
    assert not (
        root / f"{STAGING_PREFIX}{checkpoint_name(2)}"
    ).exists()  # removed at once: a full disk gets its space back
    assert latest_checkpoint(root) == root / checkpoint_name(1)
    assert (latest_checkpoint(root) / "payload.txt").read_text() == "good"
    (root / f"{STAGING_PREFIX}{checkpoint_name(2)}").mkdir()  # as a kill mid-write leaves it
    write_checkpoint(root, 2, fill_with("good again"), state(2), keep_last=3)
    assert not list(root.glob(f"{STAGING_PREFIX}*"))
    assert latest_checkpoint(root) == root / checkpoint_name(2)


def test_the_driver_rng_state_travels_with_the_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    random.seed(7)
    torch.manual_seed(7)
    path = write_checkpoint(root, 1, fill_with(""), state(1), keep_last=1)
    expected = (random.random(), torch.rand(3))
    random.seed(99)
    torch.manual_seed(99)
    read_checkpoint(path)
    assert random.random() == expected[0]
    assert torch.equal(torch.rand(3), expected[1])


def test_resume_resolves_auto_run_directories_and_checkpoint_paths(tmp_path):
    run = tmp_path / "runs" / "r"
    assert resolve_resume(None, run) is None
    assert resolve_resume("auto", run) is None  # nothing yet: a fresh start
    write_checkpoint(run / "checkpoints", 5, fill_with(""), state(5), keep_last=3)
    write_checkpoint(run / "checkpoints", 10, fill_with(""), state(10), keep_last=3)
    latest = run / "checkpoints" / checkpoint_name(10)
    assert resolve_resume("auto", run) == latest
    assert resolve_resume(str(run), tmp_path) == latest
    assert resolve_resume(str(run / "checkpoints"), tmp_path) == latest
    earlier = run / "checkpoints" / checkpoint_name(5)
    assert resolve_resume(str(earlier), tmp_path) == earlier


def test_bad_resume_targets_are_one_line_errors(tmp_path):
    with pytest.raises(AharlError, match="resume=.*no checkpoint there"):
        resolve_resume(str(tmp_path / "missing"), tmp_path)
    broken = tmp_path / checkpoint_name(3)
    broken.mkdir()
    (broken / STATE_FILE).write_text("{not json")
    with pytest.raises(AharlError, match="damaged"):
        read_checkpoint(broken)
    with pytest.raises(AharlError, match="not a complete aharl checkpoint"):
        read_checkpoint(tmp_path)


def test_steps_logged_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "reward/total": s / 10}) for s in range(0, 6)]
    path.write_text("\n".join(lines) + "\n" + '{"step": 6, "rew')  # a line torn by the kill
    assert truncate_after(path, 3) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2, 3]


def test_train_with_a_missing_resume_path_fails_in_one_line_before_starting(tmp_path):
    import subprocess
    import sys

    from tests.helpers.paths import REPO

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aharl.launch.main",
            "train",
            "configs/quickstart.yaml",
            f"resume={tmp_path / 'gone'}",
            f"logging.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"aharl: error: resume={tmp_path / 'gone'}: no checkpoint there; pass runs/NAME/checkpoints/step-N, a run directory (runs/NAME), or resume=auto"
    ]
    assert not (tmp_path / "quickstart").exists()  # nothing started, nothing written
