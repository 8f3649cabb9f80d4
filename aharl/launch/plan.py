"""``aharl plan CONFIG``: the predicted peak memory of every part, per GPU, and whether it fits."""

from __future__ import annotations

import argparse
from typing import Sequence

from aharl.errors import AharlError
from aharl.launch.common import load_run_config
from aharl.planning.memory import DEFAULT_GPU_GIB, MemoryPlan, plan_with_fix, refusal


def local_gpu_gib() -> float | None:
    """The first local GPU's memory in GiB, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def render(plan: MemoryPlan, config_name: str, gpu_source: str) -> str:
    lines = [f"memory plan for {config_name} ({gpu_source})"]
    for gpu in plan.gpus:
        lines.append("")
        lines.append(f"{gpu.label}:")
        for part in gpu.parts:
            lines.append(f"  {part.name:32s} {part.gib:7.2f} GiB  {part.note}")
        phases = ", ".join(f"{name} {gib:.2f}" for name, gib in gpu.phases.items())
        verdict = "fits" if gpu.fits else "DOES NOT FIT"
        lines.append(
            f"  {'peak':32s} {gpu.peak_gib:7.2f} GiB  ({phases}) of {gpu.capacity_gib:g} GiB, "
            f"usable {gpu.usable_gib:.2f}: {verdict}, headroom {gpu.headroom_gib:+.2f} GiB"
        )
    lines.append("")
    lines.append(f"learner peak (memory/learner_peak_gib should read about this): {plan.learner_peak_gib:.2f} GiB")
    if plan.kv is not None:
        lines.append(
            f"vLLM KV cache: {plan.kv.capacity_tokens} tokens per engine; a step needs {plan.kv.needed_tokens}"
        )
    lines.extend(f"note: {note}" for note in plan.notes)
    if plan.fits:
        lines.append("fits: yes")
    elif plan.fix:
        lines.append(f"fits: no; smallest change that fits: {' '.join(plan.fix)}")
    else:
        lines.append("fits: no; no change found that fits (a smaller model or a larger GPU)")
    return "\n".join(lines)


def run_plan(args: argparse.Namespace) -> int:
    overrides: Sequence[str] = args.overrides
    config = load_run_config(args.file, overrides)
    if args.gpu_memory_gib is not None:
        if args.gpu_memory_gib <= 0:
            raise AharlError(f"--gpu-memory-gib {args.gpu_memory_gib:g} must be positive")
        gpu_gib, source = args.gpu_memory_gib, f"GPUs of {args.gpu_memory_gib:g} GiB, as given"
    elif config.placement.gpu_memory_gib is not None:
        gpu_gib, source = (
            config.placement.gpu_memory_gib,
            f"GPUs of {config.placement.gpu_memory_gib:g} GiB (placement.gpu_memory_gib)",
        )
    else:
        local = local_gpu_gib()
        if local is None:
            gpu_gib, source = (
                DEFAULT_GPU_GIB,
                f"no GPU here: assuming {DEFAULT_GPU_GIB:g} GiB GPUs; --gpu-memory-gib N for others",
            )
        else:
            gpu_gib, source = local, f"this machine's GPU: {local:.1f} GiB"
    plan = plan_with_fix(config, gpu_gib, lambda extra: load_run_config(args.file, [*overrides, *extra]))
    print(render(plan, args.file, source))
    if not plan.fits:
        raise AharlError(refusal(plan))
    return 0
