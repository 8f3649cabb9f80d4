"""A CPU learner starts without compiling DeepSpeed ops, so a build lock left by a killed run cannot hang it.

DeepSpeed's CPU backend used to JIT-compile its shared-memory all-reduce op
inside ``init_distributed``, under a lock file in the torch extensions
directory. A run killed mid-build left the lock, and every later learner on
the machine waited on it forever (this hung CI). The test plants such a lock
and starts a real learner in a subprocess with a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO

PROBE = """
import sys
import torch.distributed
from aharl.config import load_config
from aharl.learner.learner import Learner
config = load_config(None, [f"model.path={sys.argv[1]}", "placement.device=cpu", "learner.prompts_per_step=1", "rollout.n=2", "grpo.beta=0"])
learner = Learner(config, total_steps=1, master_port=int(sys.argv[2]))
print("checksum", learner.parameter_checksum(), flush=True)
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_learner_starts_despite_a_stale_extension_build_lock(tmp_path, smollm2_tokenizer):
    from aharl.learner.learner import CPU_SHM_COMM_OP
    from aharl.runtime.rendezvous import free_port
    from tests.helpers.toy import build_tiny_model

    model = build_tiny_model(tmp_path / "model", smollm2_tokenizer)
    extensions = tmp_path / "torch_extensions"
    (extensions / CPU_SHM_COMM_OP).mkdir(parents=True)
    (extensions / CPU_SHM_COMM_OP / "lock").touch()  # what a run killed during the build leaves
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(model), str(free_port())],
            capture_output=True, text=True, cwd=REPO, env=env, timeout=240,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the learner waited on the stale build lock (DeepSpeed compiled its CPU shm op)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checksum" in done.stdout
    assert (extensions / CPU_SHM_COMM_OP / "lock").exists()  # nothing took or cleared the lock: no build ran
