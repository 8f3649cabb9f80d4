"""`ray start --head` on loopback, `ray job submit --working-dir . -- aharl train ...`, as a user runs it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aharl.runtime.rendezvous import free_port
from tests.helpers.paths import REPO
from tests.helpers.toy import toy_workspace

pytestmark = pytest.mark.slow

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


def _ray_env() -> dict[str, str]:
    # Ray 2.60 turns token authentication on for new local clusters; the head
    # and the submitter must share the token, as the README's commands do.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    # The job's entrypoint is `aharl`, found on the head's PATH, as for a user
    # who started the head from the activated environment (make test does not activate it).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _wait_for_jobs_api(address: str, env: dict[str, str], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True).returncode == 0:
            return
        time.sleep(2)
    raise AssertionError("the Ray head did not come up")


def _submit_when_the_agent_is_up(
    command: list[str], env: dict[str, str], timeout_s: float = 180
) -> subprocess.CompletedProcess:
    """``ray job submit``, again while the head answers but its job agent has not started (it starts later under load).

    Ray refuses such a submission before creating the job ("No available
    agent to submit job"), so submitting again cannot run the job twice.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=420)
        if "No available agent to submit job" not in done.stdout + done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(2)


def test_ray_job_submit_runs_training_on_a_started_cluster(tmp_path, smollm2_tokenizer):
    model_dir, reward_file = toy_workspace(tmp_path, smollm2_tokenizer)
    runs = tmp_path / "runs"
    env = _ray_env()
    port, dashboard = free_port(), free_port()
    address = f"http://127.0.0.1:{dashboard}"
    ray_dir = tempfile.mkdtemp(prefix="aharl-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # --block keeps the head's processes under this one process group, so the
    # test stops exactly this cluster (`ray stop` would stop every Ray here).
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--disable-usage-stats",
            # The job agent's default port (52365) is taken by any other Ray on this machine: then
            # every submission fails with "No available agent". A free one makes the test independent of them.
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--temp-dir",
            ray_dir,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_jobs_api(address, env)
        submitted = _submit_when_the_agent_is_up(
            [
                RAY,
                "job",
                "submit",
                "--address",
                address,
                "--working-dir",
                str(REPO),
                "--",
                "aharl",
                "train",
                "quickstart",
                f"model.path={model_dir}",
                f"rewards.functions=[{reward_file}:vowels]",
                "rollout.max_tokens=8",
                "learner.max_steps=2",
                "learner.micro_batch_prompts=4",
                "eval.num_questions=4",
                f"logging.output_dir={runs}",
                "logging.run_name=job",
            ],
            env,
        )
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-2000:]
        assert "succeeded" in submitted.stdout
        assert "step 2/2" in submitted.stdout  # the per-step lines reach the submitter
        rows = [json.loads(line) for line in (runs / "job" / "metrics.jsonl").read_text().splitlines()]
        steps = [row for row in rows if "reward/total" in row]
        assert [row["step"] for row in steps] == [1, 2]
        assert all(row["sync/logp_diff"] < 1e-3 for row in steps)
        # The quickstart's held-out evaluation ran before and after, and its report was written.
        assert [row["step"] for row in rows if "eval/accuracy_numeric" in row] == [0, 2]
        assert (runs / "job" / "report.html").is_file()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_dir, ignore_errors=True)
