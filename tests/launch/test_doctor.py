"""`aharl doctor` on CPU: the CPU subset passes for real, the GPU-only checks say SKIP and why, a failure is a FAIL line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aharl.bench import doctor

CPU_EXPECTED = {
    "learner-zero2": "PASS",
    "learner-zero3": "PASS",
    "ipc-round-trip": "PASS",
    "sleep-wake": "SKIP",
    "sync-fp32": "PASS",
    "sync-bf16": "SKIP",
    "train-3-steps": "PASS",
    "train-lora": "PASS",
    "rollout-throughput": "PASS",
    "nccl-2-gpus": "SKIP",
    "reference-shape": "SKIP",
}


@pytest.mark.slow
def test_doctor_on_cpu_runs_the_cpu_checks_and_skips_the_gpu_ones(tmp_path):
    out = tmp_path / "doctor"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "aharl.launch.main", "doctor", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((out / "doctor.json").read_text())
    assert {c["name"]: c["status"] for c in report["checks"]} == CPU_EXPECTED, done.stdout
    assert report["versions"]["deepspeed"] and report["versions"]["ray"]
    lines = done.stdout.splitlines()
    for check in report["checks"]:  # one console line per check, with its figures or its reason
        [line] = [line for line in lines if f"  {check['name']} " in line]
        assert line.startswith(check["status"]) and check["detail"] in line
    assert "GPU" in {c["name"]: c["detail"] for c in report["checks"]}["sleep-wake"]
    assert "7 passed, 0 failed, 4 skipped" in done.stdout


def test_a_failing_check_is_one_fail_line_and_the_next_check_still_runs(tmp_path, monkeypatch, smollm2_tokenizer):
    def broken(device, workdir):
        raise AssertionError("the receiver's tensors differ from the sender's")

    monkeypatch.setattr(doctor, "check_ipc", broken)
    printed: list[str] = []
    results = doctor.run_checks(tmp_path, "cpu", ("ipc-round-trip", "sleep-wake", "nccl-2-gpus"), printed.append)
    assert [(r.name, r.status) for r in results] == [
        ("ipc-round-trip", "FAIL"),
        ("sleep-wake", "SKIP"),
        ("nccl-2-gpus", "SKIP"),
    ]
    assert printed[0].startswith("FAIL") and "differ from the sender's" in printed[0]
    assert "AssertionError" in (tmp_path / "ipc-round-trip.error.txt").read_text()
    assert json.loads((tmp_path / "doctor.json").read_text())["checks"][0]["status"] == "FAIL"


def test_an_unknown_check_name_is_one_clear_error(tmp_path):
    from aharl.errors import AharlError

    with pytest.raises(AharlError, match="unknown check 'ipc'"):
        doctor.run_checks(tmp_path, "cpu", ("ipc",))
