"""`aharl bench rollout` ends with nothing left behind: no process, no /dev/shm entry, no resource-tracker warning.

The vLLM backend runs in a process that leaves with ``os._exit``; before
the fix its engine core's shared-memory queues stayed behind, and Python's
resource tracker warned of "leaked shared_memory objects" and semaphores at exit.
"""

from __future__ import annotations

import sys

import pytest

from tests.helpers.runs import run
from tests.helpers.toy import toy_workspace

pytestmark = pytest.mark.slow


def test_bench_rollout_leaves_no_process_shared_memory_or_warning(tmp_path, smollm2_tokenizer):
    model_dir, _ = toy_workspace(tmp_path, smollm2_tokenizer)
    command = [
        sys.executable,
        "-m",
        "aharl.launch.main",
        "bench",
        "rollout",
        "--backends",
        "vllm,hf",
        "--shapes",
        "1x2",
        "--max-tokens",
        "4",
        "--repeats",
        "1",
        "--out",
        str(tmp_path / "bench"),
        f"model.path={model_dir}",
        "data.source=synthetic",
        "data.answer_extractor=plain",
        "data.system_prompt=''",
        "data.synthetic.num_examples=20",
        "rollout.gpu_memory_utilization=0.05",
    ]
    done = run(command, tmp_path / "bench.log")
    log = (tmp_path / "bench.log").read_text()
    assert done.returncode == 0, log[-3000:]
    assert (tmp_path / "bench" / "rollout.json").is_file()
    assert "resource_tracker" not in log and "leaked" not in log, log[-3000:]
    assert not done.orphans and not done.leaked_shm, (done.orphans, done.leaked_shm)
