"""``aharl bench scaling``: the same run at several (learner ranks x rollout engines), side by side.

Each layout trains the same steps from the same config and seed, one after
the other in this process, so the figures share a machine and a load. The
first step of each is warm-up and left out of the means. Prompts are seeded
per prompt (:meth:`aharl.rollout.engine.SamplingSettings.prompt_seed`), so the
engines split the same work whatever their number.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass

from aharl.config import Config
from aharl.errors import AharlError
from aharl.tracking.metrics import PHASES


@dataclass(frozen=True)
class Shape:
    ranks: int
    engines: int

    def __str__(self) -> str:
        return f"{self.ranks}x{self.engines}"


def parse_shapes(text: str) -> list[Shape]:
    """``"1x1,2x1"`` -> shapes (learner ranks x rollout engines)."""
    shapes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            ranks, engines = (int(x) for x in part.lower().split("x"))
        except ValueError:
            raise AharlError(f"--shapes: {part!r} is not RANKSxENGINES (e.g. 2x1)") from None
        if ranks < 1 or engines < 1:
            raise AharlError(f"--shapes: {part!r} needs at least one rank and one engine")
        shapes.append(Shape(ranks, engines))
    if not shapes:
        raise AharlError("--shapes is empty; give e.g. 1x1,2x1,1x2,2x2")
    return shapes


def run_shape(config: Config, shape: Shape, steps: int) -> dict[str, float]:
    """Mean seconds per step and phase after the first step, the worst ``sync/logp_diff``, and the last step's reward."""
    from aharl.trainer.loop import train

    run = copy.deepcopy(config)
    run.placement.learner_gpus, run.rollout.num_engines = shape.ranks, shape.engines
    run.learner.max_steps = steps
    run.logging.run_name = f"{config.logging.run_name}-{shape}"
    history = train(run, print_fn=lambda line: print(f"  {shape} {line}", flush=True)).history
    measured = history[1:] if len(history) > 1 else history
    summary = {"step": statistics.mean(m["time/step"] for m in measured)}
    summary.update({phase: statistics.mean(m.get(f"time/{phase}", 0.0) for m in measured) for phase in PHASES})
    summary["logp_diff_max"] = max(m["sync/logp_diff"] for m in history)
    summary["reward_last"] = history[-1]["reward/total"]
    return summary


def markdown(results: dict[str, dict[str, float]], steps: int) -> str:
    base = next(iter(results.values()))["step"]
    lines = [
        f"Mean seconds per step (steps 2-{steps}; the first is warm-up), learner ranks x rollout engines.",
        "",
        "| ranks x engines | step | vs first | " + " | ".join(PHASES) + " | max sync/logp_diff |",
        "|---|---|---|" + "---|" * len(PHASES) + "---|",
    ]
    for name, r in results.items():
        phases = " | ".join(f"{r[p]:.1f}" for p in PHASES)
        lines.append(f"| {name} | {r['step']:.1f} | {base / r['step']:.2f}x | {phases} | {r['logp_diff_max']:.1e} |")
    return "\n".join(lines) + "\n"
