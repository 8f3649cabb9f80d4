"""One device and dtype policy: the learner, both rollout engines and the benchmarks agree."""

from __future__ import annotations

import torch

from aharl.config import load_config
from aharl.device import dtype_name, resolve_device, rollout_dtype, training_dtype
from aharl.rollout.vllm_engine import engine_kwargs


def test_auto_is_bf16_on_a_gpu_and_fp32_on_cpu_for_learner_and_rollout():
    config = load_config(None, ["placement.device=cpu"])
    assert resolve_device(config) == "cpu"
    assert training_dtype(config, "cpu") == rollout_dtype(config, "cpu") == torch.float32
    assert training_dtype(config, "cuda") == rollout_dtype(config, "cuda") == torch.bfloat16


def test_explicit_choices_win_and_vllm_gets_the_same_dtype():
    config = load_config(None, ["model.dtype=float16", "learner.precision=fp32"])
    assert rollout_dtype(config, "cuda") == torch.float16 and training_dtype(config, "cuda") == torch.float32
    assert engine_kwargs(config, "cpu")["dtype"] == dtype_name(rollout_dtype(config, "cpu")) == "float16"
    assert engine_kwargs(load_config(None), "cuda")["dtype"] == "bfloat16"
