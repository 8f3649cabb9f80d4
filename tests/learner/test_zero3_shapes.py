"""Under ZeRO-3 each rank holds ``[0]`` placeholders: the sync must plan and describe the full shapes.

Runs a real DeepSpeed ZeRO-3 learner on CPU (gloo) in a subprocess, so its
process group and environment variables stay out of the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO

PROBE = """
import json, sys
from aharl.config import load_config
from aharl.learner.learner import Learner
config = load_config(None, [f"model.path={sys.argv[1]}", "learner.zero_stage=3", "placement.device=cpu",
                            "learner.prompts_per_step=1", "rollout.n=2", "grpo.beta=0", "sync.bucket_mb=1"])
learner = Learner(config, total_steps=1, master_port=int(sys.argv[2]))
placeholders = [list(p.shape) for _, p in learner.engine.module.named_parameters()]
gathered = {name: list(t.shape) for name, t in learner.named_weights()}
print(json.dumps({
    "placeholders": placeholders,
    "gathered": gathered,
    "meta": {name: shape for name, _, shape in learner.weight_meta()},
    "buckets": learner.weight_buckets(),
    "sizes": {name: t.numel() * t.element_size() for name, t in learner.named_weights()},
}), flush=True)
# Leave the gloo group before the interpreter exits: its threads abort the process otherwise.
import torch.distributed
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_zero3_meta_and_buckets_use_the_full_shapes(tmp_path, smollm2_tokenizer):
    from aharl.runtime.rendezvous import free_port
    from tests.helpers.toy import build_tiny_model

    model = build_tiny_model(tmp_path / "model", smollm2_tokenizer)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(model), str(free_port())],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(shape == [0] for shape in found["placeholders"])  # what the old code read
    assert found["meta"] == found["gathered"]  # what the receiver allocates = what rank 0 broadcasts
    limit = 2**20
    for bucket in found["buckets"]:  # a bucket exceeds the limit only as a single oversized tensor
        assert sum(found["sizes"][n] for n in bucket) <= limit or len(bucket) == 1
    assert len(found["buckets"]) > 1 and sum(found["buckets"], []) == list(found["gathered"])
