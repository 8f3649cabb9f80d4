"""LoRA on the policy through PEFT: wrap the model, and read it back as plain merged weights.

Why merged weights leave the learner (and not the adapter): the rollout
engine, the exported policy and the sync check all see one ordinary model
under the base model's own parameter names. vLLM then samples at its full
speed with no LoRA kernels, every sync transport (files, CUDA IPC, NCCL)
works unchanged, and ``sync/logp_diff`` compares the learner's adapter
forward with exactly what vLLM runs. The cost is moving the whole model each
sync instead of the adapter; ``docs/lora.md`` has the measurement behind the
choice.

The merge is computed, never applied in place: PEFT's ``merge_adapter`` /
``unmerge_adapter`` pair adds and subtracts the delta, which in bf16 does
not give the base weights back, so the frozen base would drift a little at
every sync.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from aharl.config import LoraConfig
from aharl.errors import ConfigError, first_line

# PeftModel wraps the transformers model twice: PeftModel.base_model (the
# LoraModel) and LoraModel.model (the transformers model).
PEFT_PREFIX = "base_model.model."
ADAPTER_NAME = "default"
ADAPTER_DIR = "adapter"  # inside an exported policy: PEFT's adapter_config.json + adapter_model.safetensors


def wrap(model: torch.nn.Module, settings: LoraConfig) -> torch.nn.Module:
    """The model with trainable low-rank adapters on ``settings.target_modules``; every other weight frozen."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = settings.target_modules
    lora = PeftLoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        # PEFT's shorthand for every linear layer except the output head.
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:  # PEFT's words for a target that names no layer of this model
        raise ConfigError(
            "model.lora.target_modules",
            f"= {list(targets)} cannot be applied to {type(model).__name__}: {first_line(str(exc), 160)}",
            "name linear layers the model has (e.g. [q_proj, v_proj] for Llama/Qwen2), or use [all-linear]",
        ) from None


def check_targets(model_path: str, settings: LoraConfig) -> None:
    """Wrap the model's skeleton (meta device, no weights) so that a target naming no layer fails before any actor starts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    wrap(skeleton, settings)


def is_adapter_parameter(peft_name: str) -> bool:
    """``...q_proj.lora_A.default.weight`` and the like: the adapter's own parameters."""
    return any(part.startswith("lora_") for part in peft_name.split("."))


def base_name(peft_name: str) -> str:
    """PEFT's name of a base parameter -> the plain model's (``...q_proj.base_layer.weight`` -> ``...q_proj.weight``)."""
    return peft_name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def base_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter, torch.nn.Module | None]]:
    """Each base-model parameter under its plain name, with the LoRA layer whose delta adds to it (None if none does)."""
    from peft.tuners.lora import LoraLayer

    layers = {
        f"{name}.base_layer.weight": module for name, module in model.named_modules() if isinstance(module, LoraLayer)
    }
    for name, param in model.named_parameters():
        if not is_adapter_parameter(name):
            yield base_name(name), param, layers.get(name)


@torch.no_grad()
def merged(param: torch.nn.Parameter, layer: torch.nn.Module | None) -> torch.Tensor:
    """``W + scaling * B @ A`` in the parameter's dtype (a new tensor), or ``W`` itself where no adapter applies."""
    if layer is None:
        return param.data.detach()
    return param.data + layer.get_delta_weight(ADAPTER_NAME).to(param.dtype)


@contextmanager
def adapters_only_state(model: torch.nn.Module) -> Iterator[None]:
    """While open, ``model.state_dict()`` holds the adapters' tensors only: what a checkpoint saves.

    DeepSpeed's ``exclude_frozen_parameters`` drops frozen parameters by their
    ``named_parameters`` names, which list a tied weight once: the output head
    tied to the embedding stays in the state under its second name, a
    vocabulary-sized matrix in every adapter checkpoint.
    """

    def keep_adapters(module: torch.nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
        for key in [key for key in state if not is_adapter_parameter(key)]:
            del state[key]

    handle = model.register_state_dict_post_hook(keep_adapters)
    try:
        yield
    finally:
        handle.remove()
