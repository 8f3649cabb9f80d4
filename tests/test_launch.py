"""`ray start --head` on loopback, `ray job submit --working-dir . -- aharl train ...`, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aharl.sync.transfer import free_port
from tests.conftest import REPO
from tests.toy import TOY_REWARD, build_tiny_model

pytestmark = pytest.mark.slow


def _ray(*args: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    return subprocess.run([ray_cli, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_runs_training_on_a_started_cluster(tmp_path, smollm2_tokenizer):
    model_dir = build_tiny_model(tmp_path / "model", smollm2_tokenizer)
    reward_file = tmp_path / "toy_rewards.py"
    reward_file.write_text(TOY_REWARD)
    runs = tmp_path / "runs"
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS")
    started = _ray(
        "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--disable-usage-stats",
        env=env, timeout=180,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        submitted = _ray(
            "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", str(REPO), "--",
            "aharl", "train", "configs/quickstart.yaml",
            f"model.path={model_dir}", f"rewards.functions=[{reward_file}:letter_a]", "rollout.max_tokens=8",
            "learner.max_steps=2", "learner.micro_batch_prompts=4", f"logging.output_dir={runs}", "logging.run_name=job",
            env=env,
        )
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-2000:]
        assert "succeeded" in submitted.stdout
        assert "step 2/2" in submitted.stdout  # the per-step lines reach the submitter
        lines = (runs / "job" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [1, 2]
        assert all(json.loads(line)["sync/logp_diff"] < 1e-3 for line in lines)
    finally:
        _ray("stop", "--force", env=env, timeout=120)
