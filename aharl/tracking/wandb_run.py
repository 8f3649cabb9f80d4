"""Weights & Biases: online, offline (a run directory ``wandb sync`` can upload later) or off.

wandb is optional (``pip install 'aharl[track]'``); asking for it without it
installed is a one-line error at start-up, before any model loads. A resumed
run continues the same wandb run (its id is kept in the checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from aharl.config import Config
from aharl.errors import AharlError

SAMPLE_COLUMNS = ["step", "question", "gold", "completion", "reward"]


class WandbRun:
    """A thin wrapper so the loop calls ``log`` and ``finish`` whatever the mode."""

    def __init__(self, config: Config, run_dir: Path, run_id: str | None = None) -> None:
        self.enabled = config.logging.wandb_mode != "off"
        self.run = None
        if not self.enabled:
            return
        try:
            import wandb
        except ImportError:
            raise AharlError(
                f"logging.wandb_mode={config.logging.wandb_mode} needs wandb: pip install 'aharl[track]' (or set logging.wandb_mode=off)"
            ) from None
        self._wandb = wandb
        self.run = wandb.init(
            project=config.logging.wandb_project,
            entity=config.logging.wandb_entity,
            name=run_dir.name,
            id=run_id,
            resume="allow" if run_id else None,
            mode=config.logging.wandb_mode,
            dir=str(run_dir),
            config=config.to_dict(),
        )

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, step: int, metrics: dict[str, float], samples: Sequence[dict[str, Any]] = ()) -> None:
        if self.run is None:
            return
        payload: dict[str, Any] = dict(metrics)
        if samples:
            rows = [[step, s["question"], s["gold"], s["completion"], s["reward"]] for s in samples]
            payload["samples"] = self._wandb.Table(columns=SAMPLE_COLUMNS, data=rows)
        self.run.log(payload, step=step)

    def finish(self) -> None:
        """End the wandb run and return only once its data is on disk (and, online, uploaded).

        ``run.finish()`` returns when wandb's service has acknowledged the exit,
        but the service writes the offline ``.wandb`` file when it closes the
        run's stream, after that. ``wandb.teardown()`` waits for the service to
        exit; wandb also calls it at interpreter exit, which its docs say is not
        reliable under multiprocessing (Ray), and a run killed right after
        training would lose its history. aharl holds one wandb run per process,
        so ending the service here costs nothing; a later run starts a new one.
        """
        if self.run is not None:
            self.run.finish()
            self.run = None
            self._wandb.teardown()
