"""A full disk mid-run: the checkpoint being written is discarded, the previous one resumes, the run ends in one line.

The run directory lives on a 200 MB tmpfs made for the test (a checkpoint of
the toy model is ~130 MB), so the step-2 checkpoint runs out of space for
real, inside DeepSpeed's save in the learner actor. Then the filesystem is
grown, as a user would free space, and ``resume=auto`` continues from step 1;
in that run a write of the metrics log fails (ENOSPC injected through
:mod:`aharl.faults`, since a real one needs the disk filled at an exact
moment), which also ends the run with one line naming its last checkpoint.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from aharl.tracking.checkpoints import STAGING_PREFIX, checkpoint_name, list_checkpoints, read_checkpoint
from tests.helpers.runs import aharl_train, last_line, run
from tests.helpers.toy import toy_overrides, toy_workspace

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a small tmpfs needs root"),
]


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_resume_continues(
    tmp_path, small_disk, smollm2_tokenizer
):
    model_dir, reward_file = toy_workspace(tmp_path, smollm2_tokenizer)
    argv = aharl_train(
        *toy_overrides(
            model_dir,
            small_disk,
            reward_file,
            "learner.max_steps=3",
            "checkpoint.every_steps=1",
            "checkpoint.keep_last=2",
        )
    )
    checkpoints = small_disk / "toy" / "checkpoints"

    full = run(argv, tmp_path / "full.log")
    log = (tmp_path / "full.log").read_text()
    assert full.returncode == 3, log[-3000:]
    assert "Traceback" not in log and not full.orphans
    line = last_line(log)
    assert (
        line.startswith("aharl: error: step 2: could not write the step-2 checkpoint (")
        and "No space left on device" in line
    )
    assert line.endswith(
        f"it was discarded; the last complete checkpoint is {checkpoints / checkpoint_name(1)} (continue with: aharl train <config> resume=auto)"
    )
    # Nothing half-written is left taking the space; step 1 is whole and readable.
    assert sorted(p.name for p in checkpoints.iterdir()) == [checkpoint_name(1)]
    assert not list(checkpoints.glob(f"{STAGING_PREFIX}*"))
    assert read_checkpoint(checkpoints / checkpoint_name(1)).step == 1

    subprocess.run(["mount", "-o", "remount,size=1g", str(small_disk)], check=True)  # the user frees space
    resumed = run([*argv, "resume=auto"], tmp_path / "resumed.log", "driver.log:raise@2")
    log = (tmp_path / "resumed.log").read_text()
    assert resumed.returncode == 3, log[-3000:]
    assert "Traceback" not in log and not resumed.orphans
    assert f"resumed from {checkpoints / checkpoint_name(1)}: step 2 next" in log
    assert last_line(log) == (
        f"aharl: error: step 3: could not write step 3's metrics and samples in {small_disk / 'toy'} ([Errno 28] No space left on device "
        f"(failpoint driver.log, call 2)); the last complete checkpoint is {checkpoints / checkpoint_name(2)} (continue with: aharl train <config> resume=auto)"
    )
    assert [p.name for p in list_checkpoints(checkpoints)] == [checkpoint_name(1), checkpoint_name(2)]
