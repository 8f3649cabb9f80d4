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
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=240,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the learner waited on the stale build lock (DeepSpeed compiled its CPU shm op)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checksum" in done.stdout
    assert (extensions / CPU_SHM_COMM_OP / "lock").exists()  # nothing took or cleared the lock: no build ran


CHECKPOINTING_PROBE = """
import json, sys, torch
import torch.distributed
from aharl.config import load_config
from aharl.grpo.batch import build_micro_batches
from aharl.learner.learner import Learner
from aharl.types import Completion, Prompt, RolloutGroup, ScoredGroup
config = load_config(None, [f"model.path={sys.argv[1]}", "placement.device=cpu", "learner.prompts_per_step=1", "learner.micro_batch_prompts=1",
                            "rollout.n=2", "grpo.beta=0", f"learner.gradient_checkpointing={sys.argv[3]}"])
learner = Learner(config, total_steps=1, master_port=int(sys.argv[2]))
mlp = learner.engine.module.model.layers[0].mlp
calls = []
forward = mlp.forward
def counted(*args, **kwargs):  # module hooks do not fire in checkpoint's recomputation; the function does run
    calls.append(1)
    return forward(*args, **kwargs)
mlp.forward = counted
group = RolloutGroup(Prompt(0, "q", "1", "t", [5, 6, 7]), [Completion([8, 9], "x", "stop", [-1.0, -1.0]), Completion([10], "y", "stop", [-1.0])])
batches = build_micro_batches([ScoredGroup(group, {}, [1.0, 0.0])], torch.tensor([1.0, -1.0]), 1, 0, packing="shared_prefix")
learner.train_step(batches, num_sequences=2, num_tokens=3.0)
print(json.dumps({"training": learner.engine.module.training, "layer_forwards": len(calls)}), flush=True)
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing, forwards", [("true", 2), ("false", 1)])
def test_gradient_checkpointing_is_in_effect_when_configured(tmp_path, smollm2_tokenizer, checkpointing, forwards):
    """A checkpointed layer runs its MLP again in the backward pass; HF does that only in training mode.

    The learner once left the model in the eval mode ``from_pretrained``
    returns, so ``gradient_checkpointing: true`` saved no memory at all.
    """
    import json

    from aharl.runtime.rendezvous import free_port
    from tests.helpers.toy import build_tiny_model

    model = build_tiny_model(tmp_path / "model", smollm2_tokenizer)
    done = subprocess.run(
        [sys.executable, "-c", CHECKPOINTING_PROBE, str(model), str(free_port()), checkpointing],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"training": True, "layer_forwards": forwards}
