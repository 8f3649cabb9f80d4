"""Per-step metrics: one JSON line per step in the run directory, one readable console line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

from aharl.tracking.jsonl import append_record
from aharl.types import ScoredGroup

PHASES = ("generate", "reward", "reference", "train", "sync")


def rollout_metrics(scored: Sequence[ScoredGroup]) -> dict[str, float]:
    """Mean of each reward, the total, and completion lengths over the step's completions."""
    count = sum(len(sg.total) for sg in scored)
    metrics: dict[str, float] = {"reward/total": sum(sum(sg.total) for sg in scored) / count}
    for name in scored[0].rewards:
        # Rows a function returned None for (NaN) are not its rows: its mean is over the others.
        applied = [v for sg in scored for v in sg.rewards[name] if not math.isnan(v)]
        metrics[f"reward/{name}"] = sum(applied) / len(applied) if applied else math.nan
    lengths = [len(c.token_ids) for sg in scored for c in sg.group.completions]
    metrics["completion/length"] = sum(lengths) / count
    # The step's work, for comparing trainers on equal terms (aharl bench step).
    metrics["completion/tokens"] = float(sum(lengths))
    metrics["prompt/tokens"] = float(sum(len(sg.group.prompt.token_ids) * len(sg.group.completions) for sg in scored))
    metrics["completion/max_length"] = float(max(lengths))
    truncated = sum(c.finish_reason == "length" for sg in scored for c in sg.group.completions)
    metrics["completion/truncated"] = truncated / count
    return metrics


class MetricsLog:
    """Appends steps to ``metrics.jsonl`` (readable while the run goes on)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        append_record(self.path, {"step": step, **clean})


# ``reward/*`` keys that are not one reward function's mean.
REWARD_SUMMARY_KEYS = ("reward/total", "reward/errors", "reward/zero_spread_groups")


def reward_function_keys(keys: Iterable[str]) -> list[str]:
    """The ``reward/<function>`` keys among ``keys``, in their order."""
    return [k for k in keys if k.startswith("reward/") and k not in REWARD_SUMMARY_KEYS]


def format_step(step: int, total: int, m: dict[str, float]) -> str:
    rewards = " ".join(f"{k.split('/', 1)[1]}={m[k]:.3f}" for k in reward_function_keys(m))
    times = " ".join(f"{phase[:3]} {m.get(f'time/{phase}', 0.0):.1f}s" for phase in PHASES)
    errors = f" | reward_errors {m['reward/errors']:.0f}" if m.get("reward/errors") else ""
    return (
        f"step {step}/{total} | reward {m['reward/total']:.3f} ({rewards}) | len {m['completion/length']:.0f}"
        f" | kl {m.get('kl', 0.0):.4f} | clip {m.get('clip_fraction', 0.0):.3f} | logp_diff {m.get('sync/logp_diff', 0.0):.4f}"
        f" | {times}{errors}"
    )
