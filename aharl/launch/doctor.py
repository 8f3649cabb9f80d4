"""``aharl doctor``: the checks of :mod:`aharl.bench.doctor`, with their stack printed first and an exit status."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from aharl.bench.doctor import CHECKS, run_checks, versions


def run_doctor_command(args: argparse.Namespace) -> int:
    """0 when no check failed (PASS or SKIP), 1 otherwise."""
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    only = tuple(name.strip() for name in args.only.split(",")) if args.only else CHECKS
    print("aharl doctor on " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"device {device}; model, logs and doctor.json under {args.out}")
    results = run_checks(Path(args.out), device, only, tokenizer_source=args.tokenizer)
    failed = [r.name for r in results if r.status == "FAIL"]
    skipped = [r.name for r in results if r.status == "SKIP"]
    summary = f"{len(results) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} skipped"
    print(summary + (f"; details of each failure in {args.out}/<check>.error.txt" if failed else ""))
    return 1 if failed else 0
