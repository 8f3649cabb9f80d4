"""PNG plots of a run's metrics over steps: rewards, KL, completion length, phase timings, eval.

Read from ``metrics.jsonl`` alone, so ``aharl plot RUN_DIR`` works on a run
that is still going, was killed, or ran on another machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from aharl.errors import AharlError
from aharl.tracking.jsonl import read_records
from aharl.tracking.metrics import PHASES, reward_function_keys


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise AharlError(
            f"{path} does not exist; pass a run directory (runs/NAME) of a run that logged at least one step"
        )
    rows = list(read_records(path))
    if not rows:
        raise AharlError(f"{path} holds no steps yet")
    return rows


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` points (same length as ``values``)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_run(run_dir: Path) -> list[Path]:
    """Write the plots into ``run_dir/plots/`` and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_metrics(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    window = max(1, len(rows) // 20)
    written = []

    def save(fig, name: str) -> None:
        for ax in fig.axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    def line(ax, key: str, label: str, **style) -> None:
        steps, values = series(rows, key)
        if not steps:
            return
        if window > 1:
            ax.plot(steps, values, alpha=0.25, color=style.get("color"))
            values = moving_average(values, window)
            label = f"{label} ({window}-step mean)"
        ax.plot(steps, values, label=label, **style)

    keys = {k for r in rows for k in r}
    reward_keys = sorted(reward_function_keys(keys))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for key in reward_keys:
        line(axes[0], key, key.split("/", 1)[1])
    axes[0].set_title("each reward (mean per completion)")
    line(axes[1], "reward/total", "total", color="black")
    axes[1].set_title("total reward")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save(fig, "rewards.png")

    for key, title, name in (
        ("kl", "KL to the reference policy (k3, per token)", "kl.png"),
        ("completion/length", "completion length (tokens)", "length.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        line(ax, key, key)
        if key == "completion/length":
            line(ax, "completion/max_length", "max length", linestyle="--")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, name)

    fig, ax = plt.subplots(figsize=(8, 4))
    timed = [r for r in rows if r.get("time/step") is not None]  # training steps, not evaluation-only rows
    steps = [r["step"] for r in timed]
    stacks = [[r.get(f"time/{phase}") or 0.0 for r in timed] for phase in PHASES]
    ax.stackplot(steps, stacks, labels=list(PHASES), alpha=0.85)
    ax.set_title("seconds per step, by phase")
    ax.set_xlabel("step")
    ax.set_ylabel("s")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, "timings.png")

    eval_keys = [
        k
        for k in ("eval/accuracy_numeric", "eval/accuracy_exact", "eval/format_soft", "eval/format_strict")
        if series(rows, k)[0]
    ]
    if eval_keys:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in eval_keys:
            s, v = series(rows, key)
            ax.plot(s, v, marker="o", label=key.split("/", 1)[1])
        ax.set_title("held-out evaluation (greedy)")
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, "eval.png")
    return written
