"""Checkpoints on disk: atomic writes, the last N kept, and finding the one to resume from.

A checkpoint is a directory ``<run>/checkpoints/step-000300/`` holding

- ``learner/``          DeepSpeed's own checkpoint: weights, optimizer and LR
                        scheduler state (each ZeRO rank writes its shard), the
                        learner's RNG states;
- ``hf/``               the policy as a Hugging Face directory (``save_pretrained``
                        + tokenizer), loadable by transformers and vLLM;
- ``trainer_state.json`` the step, the data position and the run's bookkeeping;
- ``rng.pt``            the driver's RNG states;
- ``config.yaml``       the resolved config the run was started with.

It is written under a hidden ``.tmp-step-...`` name and renamed into place
only when complete; a rename within one directory is atomic, so a crash or a
kill mid-write leaves the previous checkpoint as the latest one and only a
stale temporary directory behind (removed by the next write). This module does
files only; what goes inside comes from the caller (:mod:`aharl.trainer.lifecycle`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import types
import typing
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from aharl.errors import AharlError
from aharl.rng import restore_rng_state, rng_state

PREFIX = "step-"
STAGING_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.json"
RNG_FILE = "rng.pt"
LEARNER_DIR = "learner"
# A write that fails with less than this left on its disk failed for want of space.
FULL_DISK_BYTES = 16 * 2**20


@dataclass
class TrainerState:
    """What the driver needs to continue exactly where a checkpoint left off."""

    step: int  # the last completed step
    total_steps: int
    sampler: dict[str, int]  # PromptSampler.state_dict()
    elapsed_s: float = 0.0  # training seconds so far (for the ETA after a resume)
    wandb_run_id: str | None = None
    skipped_steps: int = 0  # updates skipped for non-finite values so far


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def checkpoint_step(path: Path) -> int | None:
    """The step of a complete checkpoint directory's name, or None for anything else."""
    name = path.name
    if not name.startswith(PREFIX) or not name[len(PREFIX) :].isdigit():
        return None
    return int(name[len(PREFIX) :])


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary directories are not listed)."""
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir() and (p / STATE_FILE).is_file()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def latest_checkpoint(root: Path) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def write_checkpoint(root: Path, step: int, fill: Callable[[Path], None], state: TrainerState, keep_last: int) -> Path:
    """Create ``root/step-NNNNNN`` atomically: ``fill(staging)`` writes the contents, then the rename.

    ``trainer_state.json`` is written last, into the staging directory, so a
    directory that has it under a final name is complete. Older checkpoints
    beyond ``keep_last`` are deleted only after the new one is in place.
    """
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed mid-write
    final = root / checkpoint_name(step)
    staging = root / f"{STAGING_PREFIX}{final.name}"
    staging.mkdir()
    try:
        fill(staging)
        torch.save(rng_state(), staging / RNG_FILE)
        _write_synced(staging / STATE_FILE, json.dumps(asdict(state), indent=2))
    except BaseException as exc:
        # A failed write (a full disk) leaves nothing half-made: the space goes back,
        # and the previous checkpoint stays the latest.
        full = isinstance(exc, Exception) and shutil.disk_usage(root).free < FULL_DISK_BYTES
        shutil.rmtree(staging, ignore_errors=True)
        if full and not (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            # torch.save reports a full disk as "enforce fail ... unexpected pos": say what it is.
            raise OSError(
                errno.ENOSPC, f"No space left on device under {root} ({str(exc).strip().splitlines()[-1][:200]})"
            ) from exc
        raise
    if final.exists():  # the same step saved again (a stop right after a periodic save)
        shutil.rmtree(final)
    os.rename(staging, final)
    _fsync_directory(root)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> TrainerState:
    """The trainer state of a checkpoint directory; the driver's RNG states are restored too.

    The checkpoint's parts were checked whole when ``resume=`` was resolved
    (:func:`resolve_resume`); here only the state file is read and checked.
    """
    state = _read_state(path)
    rng_file = path / RNG_FILE
    if rng_file.is_file():
        try:
            saved = torch.load(rng_file, weights_only=False)
        except Exception as exc:  # a truncated or foreign file: unpickling can fail in many ways
            raise AharlError(f"{rng_file} is damaged ({type(exc).__name__}); {_earlier_advice(path)}") from None
        restore_rng_state(saved)
    return state


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint that ``resume=`` names: ``auto`` (latest in this run, if any), a run or checkpoint dir.

    The checkpoint found is checked whole (:func:`check_checkpoint`) here, so a
    damaged one fails before the run directory or the model is touched.
    """
    if not resume:
        return None
    if resume == "auto":
        found = latest_checkpoint(run_dir / "checkpoints")
        if found is not None:
            check_checkpoint(found)
        return found
    path = Path(resume)
    if (path / STATE_FILE).is_file():
        check_checkpoint(path)
        return path
    for root in (path / "checkpoints", path):
        found = latest_checkpoint(root)
        if found is not None:
            check_checkpoint(found)
            return found
    raise AharlError(
        f"resume={resume}: no checkpoint there; pass runs/NAME/checkpoints/step-N, a run directory (runs/NAME), or resume=auto"
    )


# What a training run's checkpoint holds besides the state (see the module docstring).
HF_DIR = "hf"
CONFIG_FILE = "config.yaml"
# The keys of PromptSampler.state_dict() (aharl.data is not imported here: a sibling package).
SAMPLER_KEYS = ("epoch", "position", "num_prompts", "seed")


def check_checkpoint(path: Path) -> TrainerState:
    """The trainer state of ``path``, after checking that the checkpoint is whole; damage is one AharlError line.

    Whole means: ``trainer_state.json`` parses and has exactly this version's
    fields (a field with a default may be missing: older checkpoints load),
    and, for a training run's checkpoint, ``learner/`` and ``hf/`` are there
    with weight files that are not cut short. A checkpoint without any of
    ``learner/``, ``hf/`` and ``config.yaml`` holds only what its writer's
    ``fill`` put there (this module does files only) and is not checked for them.
    """
    state = _read_state(path)
    problem = _parts_problem(path)
    if problem:
        raise AharlError(f"checkpoint {path} is incomplete: {problem}; {_earlier_advice(path)}")
    return state


def _read_state(path: Path) -> TrainerState:
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise AharlError(
            f"{path} is not a complete aharl checkpoint (no {STATE_FILE}); pass a checkpoints/step-N directory, a run directory, or resume=auto"
        )
    try:
        raw = json.loads(state_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = (
            f"cut off or not JSON: {exc.msg} at line {exc.lineno}"
            if isinstance(exc, json.JSONDecodeError)
            else "not UTF-8"
        )
        raise AharlError(f"{state_file} is damaged ({reason}); {_earlier_advice(path)}") from None
    if not isinstance(raw, dict):
        raise AharlError(
            f"{state_file} is damaged (a JSON {type(raw).__name__}, not an object); {_earlier_advice(path)}"
        )
    fields = {f.name: f for f in dataclasses.fields(TrainerState)}
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in raw]
    unknown = sorted(name for name in raw if name not in fields)
    if missing or unknown:
        what = "; ".join(
            part
            for part in (
                f"lacks {', '.join(missing)}" if missing else "",
                f"has fields this aharl does not know ({', '.join(unknown)})" if unknown else "",
            )
            if part
        )
        raise AharlError(f"{state_file} was written by another aharl version: it {what}; {_version_advice(path)}")
    hints = typing.get_type_hints(TrainerState)
    wrong = next((name for name, value in raw.items() if not _fits(value, hints[name])), None)
    if wrong is not None:
        raise AharlError(
            f"{state_file} is damaged: {wrong} = {raw[wrong]!r} is not of type {_type_name(hints[wrong])}; {_earlier_advice(path)}"
        )
    lacking = [key for key in SAMPLER_KEYS if key not in raw["sampler"]]
    if lacking:
        raise AharlError(
            f"{state_file} was written by another aharl version: its data position (sampler) lacks {', '.join(lacking)}; {_version_advice(path)}"
        )
    return TrainerState(**raw)


def _fits(value: object, hint: object) -> bool:
    """Whether a JSON value has the type a TrainerState field is annotated with."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, dict) and all(_fits(v, typing.get_args(hint)[1]) for v in value.values())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: object) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _parts_problem(path: Path) -> str | None:
    """What is missing or cut short in a training run's checkpoint, or None."""
    learner, hf = path / LEARNER_DIR, path / HF_DIR
    if not any(p.exists() for p in (learner, hf, path / CONFIG_FILE)):
        return None
    states = sorted(learner.rglob("*.pt")) if learner.is_dir() else []
    if not states:
        # DeepSpeed writes its states as *.pt under learner/<tag>/; its helper scripts beside them are no state.
        return f"{LEARNER_DIR}/ is missing or has no state files (*.pt: the weights and optimizer state a resume loads)"
    if not (hf / "config.json").is_file():
        return f"{HF_DIR}/ is missing or has no config.json (the exported policy)"
    weights = sorted(hf.glob("*.safetensors")) + sorted(hf.glob("*.bin"))
    if not weights:
        return f"{HF_DIR}/ has no weight files"
    for file in weights + states + [path / RNG_FILE]:
        problem = _file_problem(file)
        if problem:
            return f"{file.relative_to(path)} {problem}"
    return None


def _file_problem(file: Path) -> str | None:
    """Whether a weight file is cut short: safetensors by its header's offsets, torch.save files by the zip directory at their end."""
    if not file.is_file():
        return None
    size = file.stat().st_size
    if file.suffix != ".safetensors":
        return (
            None if zipfile.is_zipfile(file) else f"is cut short or damaged ({size} bytes, no zip directory at its end)"
        )
    try:
        with file.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > size - 8:
                return f"is cut short ({size} bytes)"
            header = json.loads(f.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError):
        return "has a damaged header"
    if 8 + length + end > size:
        return f"is cut short ({size} of {8 + length + end} bytes)"
    return None


def _earlier_advice(path: Path) -> str:
    """What to do about a damaged checkpoint: the one before it, if there is one, else a fresh start."""
    earlier = [p for p in list_checkpoints(path.parent) if (checkpoint_step(p) or 0) < (checkpoint_step(path) or 0)]
    if earlier:
        return f"resume from the one before it (resume={earlier[-1]}) or copy this checkpoint again"
    return "copy the checkpoint again, or start afresh (resume=null)"


def _version_advice(path: Path) -> str:
    """What to do about a checkpoint this version cannot read: the version that wrote it, or its weights."""
    start_from = (
        f"model.path={path / HF_DIR} resume=null" if (path / HF_DIR / "config.json").is_file() else "resume=null"
    )
    return f"resume it with the aharl version that wrote it, or start a new run from its weights ({start_from})"


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
