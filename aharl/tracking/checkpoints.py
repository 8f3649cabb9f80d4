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

import json
import os
import shutil
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


@dataclass
class TrainerState:
    """What the driver needs to continue exactly where a checkpoint left off."""

    step: int  # the last completed step
    total_steps: int
    sampler: dict[str, int]  # PromptSampler.state_dict()
    elapsed_s: float = 0.0  # training seconds so far (for the ETA after a resume)
    wandb_run_id: str | None = None


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
    fill(staging)
    torch.save(rng_state(), staging / RNG_FILE)
    _write_synced(staging / STATE_FILE, json.dumps(asdict(state), indent=2))
    if final.exists():  # the same step saved again (a stop right after a periodic save)
        shutil.rmtree(final)
    os.rename(staging, final)
    _fsync_directory(root)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> TrainerState:
    """The trainer state of a checkpoint directory; the driver's RNG states are restored too."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise AharlError(f"{path} is not a complete aharl checkpoint (no {STATE_FILE}); pass a checkpoints/step-N directory, a run directory, or resume=auto")
    try:
        raw = json.loads(state_file.read_text())
        state = TrainerState(**raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise AharlError(f"{state_file} is damaged ({exc}); resume from an earlier checkpoint in {path.parent}") from None
    rng_file = path / RNG_FILE
    if rng_file.is_file():
        restore_rng_state(torch.load(rng_file, weights_only=False))
    return state


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint that ``resume=`` names: ``auto`` (latest in this run, if any), a run or checkpoint dir."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir / "checkpoints")
    path = Path(resume)
    if (path / STATE_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise AharlError(f"resume={resume}: no checkpoint there; pass runs/NAME/checkpoints/step-N, a run directory (runs/NAME), or resume=auto")


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
