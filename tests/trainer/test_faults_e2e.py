"""Faults that end a run, through `aharl train` on the toy model: each ends with one line and a checkpoint that resumes.

One run directory goes through three processes:

1. the loss turns NaN at steps 2 and 3 (injected, :mod:`aharl.faults`): each
   update is skipped (weights unchanged, ``train/skipped_steps`` counted, the
   step's prompts named), and the second in a row stops the run
   (``learner.max_skipped_in_a_row=2``), exit code 3;
2. ``resume=auto``; the learner actor is SIGKILLed in the middle of step 5's
   update: the run ends with one line naming the last checkpoint (step 4),
   exit code 3, and leaves no process behind;
3. ``resume=auto`` with the rollout engine hanging in step 5's generation
   (it never returns): the run ends within ``rollout.timeout_s`` with one
   line naming the step-4 checkpoint, exit code 3, instead of waiting forever;
4. ``resume=auto`` again: the run finishes from that checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from aharl.tracking.checkpoints import checkpoint_name
from tests.helpers.runs import aharl_train, last_line, run
from tests.helpers.toy import toy_overrides, toy_workspace

pytestmark = pytest.mark.slow

STEPS = 6
SECRET = "wandb-key-that-must-not-leak-0123456789"


def rows_by_step(run_dir: Path) -> dict[int, dict]:
    return {
        r["step"]: r
        for r in (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    }


def weights(run_dir: Path, step: int) -> dict:
    return load_file(run_dir / "checkpoints" / checkpoint_name(step) / "hf" / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smollm2_tokenizer):
    root = tmp_path_factory.mktemp("faults")
    model_dir, reward_file = toy_workspace(root, smollm2_tokenizer)
    argv = aharl_train(
        *toy_overrides(
            model_dir,
            root / "runs",
            reward_file,
            f"learner.max_steps={STEPS}",
            "checkpoint.every_steps=1",
            "checkpoint.keep_last=10",
            "learner.max_skipped_in_a_row=2",
        )
    )
    results = {"run_dir": root / "runs" / "toy"}
    # Two micro-batches a step: the loss's calls 3 and 5 are the first micro-batches of steps 2 and 3.
    for name, extra, failpoints in [
        ("nan", [], "learner.loss:nan@3,5"),
        ("learner_died", ["resume=auto"], "learner.train_step:kill@2"),
        ("hung", ["resume=auto", "rollout.timeout_s=10"], "rollout.generate:hang@1"),
        ("finished", ["resume=auto"], ""),
    ]:
        log = root / f"{name}.log"
        done = run([*argv, *extra], log, failpoints, env={"WANDB_API_KEY": SECRET})
        results[name] = {
            "returncode": done.returncode,
            "orphans": done.orphans,
            "leaked_shm": done.leaked_shm,
            "log": log.read_text(),
        }
        results[name]["rows"] = rows_by_step(results["run_dir"])
    return results


def test_non_finite_updates_are_skipped_counted_and_stop_the_run_when_they_repeat(runs):
    nan = runs["nan"]
    assert nan["returncode"] == 3, nan["log"][-3000:]
    assert "Traceback" not in nan["log"] and not nan["orphans"]
    checkpoints = runs["run_dir"] / "checkpoints"
    assert last_line(nan["log"]) == (
        "aharl: error: step 3: 2 updates in a row (steps 2-3) were skipped for a non-finite loss or gradient norm; the weights are "
        "those of step 1; lower learner.lr or check the reward functions, then continue: the last complete checkpoint is "
        f"{checkpoints / checkpoint_name(3)} (continue with: aharl train <config> resume=auto)"
    )
    assert "step 2: update skipped, non-finite loss nan" in nan["log"] and "(prompts [" in nan["log"]
    rows = nan["rows"]
    assert [rows[s]["train/update_skipped"] for s in (1, 2, 3)] == [0, 1, 1]
    assert [rows[s]["train/skipped_steps"] for s in (1, 2, 3)] == [0, 1, 2]
    # Skipped means the weights did not move: steps 1, 2 and 3 saved the same policy.
    one, two, three = (weights(runs["run_dir"], s) for s in (1, 2, 3))
    assert all((one[k] == two[k]).all() and (two[k] == three[k]).all() for k in one)


def test_a_dead_learner_ends_the_run_with_one_line_and_its_last_checkpoint_resumes(runs):
    died, finished = runs["learner_died"], runs["finished"]
    checkpoints = runs["run_dir"] / "checkpoints"
    assert died["returncode"] == 3, died["log"][-3000:]
    assert "Traceback" not in died["log"] and not died["orphans"] and not died["leaked_shm"]
    line = last_line(died["log"])
    assert line.startswith("aharl: error: step 5: learner rank 0 died during the update (")
    assert line.endswith(
        f"the last complete checkpoint is {checkpoints / checkpoint_name(4)} (continue with: aharl train <config> resume=auto)"
    )
    # The update after the skips trained (the weights moved), and its checkpoint resumes the run to its end.
    three, four = weights(runs["run_dir"], 3), weights(runs["run_dir"], 4)
    assert any((three[k] != four[k]).any() for k in three)
    assert finished["returncode"] == 0, finished["log"][-3000:]
    assert f"resumed from {checkpoints / checkpoint_name(4)}: step 5 next" in finished["log"]
    rows = finished["rows"]
    assert sorted(rows) == list(range(1, STEPS + 1))
    assert [rows[s]["train/skipped_steps"] for s in (4, 5, 6)] == [2, 2, 2]  # the count survives the resume
    assert all(rows[s]["sync/logp_diff"] < 1e-4 for s in (5, 6))
    assert not finished["orphans"] and not finished["leaked_shm"]


def test_a_hung_rollout_engine_ends_the_run_within_its_deadline(runs):
    hung = runs["hung"]
    assert hung["returncode"] == 3, hung["log"][-3000:]
    assert "Traceback" not in hung["log"] and not hung["orphans"]
    assert last_line(hung["log"]) == (
        "aharl: error: step 5: rollout engine 0's generation did not finish within rollout.timeout_s=10s (a hung engine); "
        "raise rollout.timeout_s if it is really that slow; the last complete checkpoint is "
        f"{runs['run_dir'] / 'checkpoints' / checkpoint_name(4)} (continue with: aharl train <config> resume=auto)"
    )


def test_no_secret_from_the_environment_reaches_the_run_directory_or_the_console(runs):
    assert all(SECRET not in runs[name]["log"] for name in ("nan", "learner_died", "hung", "finished"))
    for path in runs["run_dir"].rglob("*"):
        if path.is_file() and path.stat().st_size < 50 * 2**20:
            assert SECRET.encode() not in path.read_bytes(), path
