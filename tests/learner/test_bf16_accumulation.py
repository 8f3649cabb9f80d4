"""A bf16 learner sums its micro-batches' gradients in fp32 (bf16 sums drop the low bits of small gradients)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from aharl.config import load_config
from aharl.learner.learner import deepspeed_config
from tests.helpers.paths import REPO

PROBE = """
import json, sys, torch
from aharl.config import load_config
from aharl.learner.learner import Learner
config = load_config(None, [f"model.path={sys.argv[1]}", f"learner.zero_stage={sys.argv[3]}", "learner.precision=bf16",
                            "placement.device=cpu", "learner.prompts_per_step=2", "learner.micro_batch_prompts=1", "rollout.n=2", "grpo.beta=0"])
learner = Learner(config, total_steps=1, master_port=int(sys.argv[2]))
optimizer = learner.engine.optimizer
print(json.dumps({"params": str(next(learner.engine.module.parameters()).dtype),
                  "accumulation": str(optimizer.gradient_accumulation_dtype)}), flush=True)
torch.distributed.destroy_process_group()
"""


@pytest.mark.parametrize("stage, accumulates", [(0, None), (2, "fp32"), (3, "fp32")])
def test_deepspeed_config_asks_for_fp32_accumulation_with_bf16_under_zero(stage, accumulates):
    config = load_config(None, [f"learner.zero_stage={stage}"])
    ds = deepspeed_config(config, torch.bfloat16, world_size=1)
    assert ds.get("data_types", {}).get("grad_accum_dtype") == accumulates
    assert "data_types" not in deepspeed_config(config, torch.float32, world_size=1)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_a_bf16_zero_learner_accumulates_in_fp32(tmp_path, smollm2_tokenizer, stage):
    from aharl.runtime.rendezvous import free_port
    from tests.helpers.toy import build_tiny_model

    model = build_tiny_model(tmp_path / "model", smollm2_tokenizer)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(model), str(free_port()), str(stage)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"params": "torch.bfloat16", "accumulation": "torch.float32"}
