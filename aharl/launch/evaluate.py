"""``aharl eval`` and ``aharl report``: evaluation outside a training run.

``aharl eval`` runs the model in this process (vLLM, or HF generate where
vLLM is not installed or ``--backend hf``), scores the answers with the
reward functions in-process, and prints one JSON object: a summary per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from aharl.errors import AharlError
from aharl.evaluation.run import GREEDY, EvalMode, evaluate, local_scorer
from aharl.rollout.backends import build_rollout_engine
from aharl.rollout.engine import SamplingSettings
from aharl.tracking.evals import read_eval_file, write_eval_file
from aharl.types import EvalResult, Prompt, RolloutGroup

# Prompts per engine call: bounds HF generate's padded batch; vLLM batches inside a call anyway.
CHUNK_PROMPTS = 32


def parse_modes(text: str, samples: int, temperature: float) -> list[EvalMode]:
    modes = []
    for name in (m.strip() for m in text.split(",") if m.strip()):
        if name == "greedy":
            modes.append(GREEDY)
        elif name == "sampled":
            modes.append(EvalMode("sampled", n=samples, temperature=temperature))
        else:
            raise AharlError(f"--modes: unknown mode {name!r}; use greedy, sampled or greedy,sampled")
    if not modes:
        raise AharlError("--modes is empty; use greedy, sampled or greedy,sampled")
    return modes


def check_arguments(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise AharlError(f"--limit {args.limit} must be at least 1")
    if args.samples < 1:
        raise AharlError(f"--samples {args.samples} must be at least 1")
    if args.temperature <= 0:
        raise AharlError(f"--temperature {args.temperature} must be above 0 (greedy mode covers temperature 0)")
    if args.max_tokens < 1:
        raise AharlError(f"--max-tokens {args.max_tokens} must be at least 1")
    for flag, target in (("--output", args.output), ("--answers", args.answers)):
        # Checked now, not after minutes of generation: a results file that cannot be written loses the run.
        if target and Path(target).is_dir():
            raise AharlError(f"{flag} {target} is a directory; pass a file path, e.g. {Path(target) / 'eval.json'}")


def choose_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("aharl eval: vLLM is not installed; using HF generate", file=sys.stderr)
        return "hf"
    return "vllm"


def chunked(generate):
    def run(prompts: Sequence[Prompt], settings: SamplingSettings) -> list[RolloutGroup]:
        groups: list[RolloutGroup] = []
        for start in range(0, len(prompts), CHUNK_PROMPTS):
            groups += generate(prompts[start : start + CHUNK_PROMPTS], settings)
        return groups

    return run


def run_eval_command(args: argparse.Namespace) -> int:
    from aharl.data.prompts import build_prompts
    from aharl.data.sources import load_rows
    from aharl.device import resolve_device
    from aharl.launch.common import load_run_config
    from aharl.modelhub import load_tokenizer
    from aharl.rewards.registry import resolve_reward_functions

    # vLLM logs to stdout by default; stdout is for the JSON (so it can be piped).
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    check_arguments(args)
    modes = parse_modes(args.modes, args.samples, args.temperature)
    overrides = [
        f"model.path={args.model}",
        f"data.source={args.data}",
        f"data.split={args.split}",
        f"rollout.max_tokens={args.max_tokens}",
        "data.shuffle=false",
    ]
    if args.rewards:
        overrides.append(f"rewards.functions=[{args.rewards}]")
    config = load_run_config(args.config, overrides + list(args.overrides))
    tokenizer = load_tokenizer(config.model.path)
    prompts, report = build_prompts(load_rows(config.data), tokenizer, config.data)
    print(f"data: {report.summary()}", file=sys.stderr)
    if args.limit is not None:
        prompts = prompts[: args.limit]
    if not prompts:
        raise AharlError(
            f"{args.data} gave no usable questions; check its columns (data.question_column / data.answer_column)"
        )
    score = local_scorer(resolve_reward_functions(config.rewards.functions), config.rewards.weights)
    backend = choose_backend(args.backend)
    device = resolve_device(config)
    print(
        f"aharl eval: {len(prompts)} questions, {backend} on {device}, modes {', '.join(m.name for m in modes)}",
        file=sys.stderr,
    )
    engine = build_rollout_engine(config, device, backend)

    results: dict[str, EvalResult] = {}
    timings: dict[str, float] = {}
    try:
        for mode in modes:
            began = time.perf_counter()
            results[mode.name] = evaluate(
                chunked(engine.generate), score, prompts, mode, max_tokens=args.max_tokens, seed=config.rollout.seed
            )
            timings[mode.name] = round(time.perf_counter() - began, 2)
    finally:
        engine.shutdown()
    summary = {
        "model": args.model,
        "data": args.data,
        "questions": len(prompts),
        "backend": backend,
        "device": device,
        "max_tokens": args.max_tokens,
        "rewards": config.rewards.functions,
        **{name: {**result.summary, "seconds": timings[name]} for name, result in results.items()},
    }
    print(json.dumps(summary, indent=2))
    if args.output:
        meta = {k: v for k, v in summary.items() if k not in results}
        write_eval_file(Path(args.output), results, {**meta, "seconds": timings})
    if args.answers:
        Path(args.answers).parent.mkdir(parents=True, exist_ok=True)
        with open(args.answers, "w") as f:
            for name, result in results.items():
                for record in result.records:
                    f.write(json.dumps({"mode": name, **record}) + "\n")
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    from aharl.evaluation.report import write_report

    before, after = read_report_input(Path(args.before)), read_report_input(Path(args.after))
    mode = "greedy" if "greedy" in before and "greedy" in after else next((m for m in before if m in after), None)
    if mode is None:
        raise AharlError(f"{args.before} and {args.after} share no evaluation mode; run both with --modes greedy")
    paths = write_report(
        Path(args.out),
        f"{Path(args.before).stem} vs {Path(args.after).stem}",
        before[mode],
        after[mode],
        args.questions,
    )
    print("\n".join(str(p) for p in paths))
    return 0


# What the report reads of each answer and of each question's record.
_ANSWER_KEYS = ("text", "numeric", "reward", "rewards", "tokens")
_RECORD_KEYS = ("index", "question", "gold", "answers")


def read_report_input(path: Path) -> dict[str, EvalResult]:
    """An evaluation file checked for everything the report reads, so a foreign or damaged file is one line.

    ``read_eval_file`` checks the outer layout; the report also reads each
    record's answers, which a hand-edited or truncated file may lack.
    """
    fix = f"write it with aharl eval ... --output {path}"
    if path.is_file():
        try:
            document = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise AharlError(f"{path} is not UTF-8 text, so not an aharl evaluation file; {fix}") from None
        except json.JSONDecodeError as exc:
            raise AharlError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
        modes = document.get("modes") if isinstance(document, dict) else None
        if not isinstance(modes, dict) or not all(isinstance(m, dict) for m in modes.values()):
            raise AharlError(f'{path} has no "modes" mapping of evaluation results; {fix}')
    results = read_eval_file(path)
    for name, result in results.items():
        problem = _report_problem(result)
        if problem:
            raise AharlError(f"{path}: mode {name!r} {problem}; {fix}")
    return results


def _report_problem(result: EvalResult) -> str | None:
    """What the report would trip over in ``result``, or None."""
    if not isinstance(result.summary, dict) or not isinstance(result.summary.get("questions"), (int, float)):
        return "has no summary with a question count"
    if not isinstance(result.records, list):
        return "has no list of records"
    for number, record in enumerate(result.records, start=1):
        if not isinstance(record, dict) or any(k not in record for k in _RECORD_KEYS):
            return f"record {number} lacks one of {', '.join(_RECORD_KEYS)}"
        answers = record["answers"]
        if (
            not isinstance(answers, list)
            or not answers
            or not isinstance(answers[0], dict)
            or any(k not in answers[0] for k in _ANSWER_KEYS)
        ):
            return f"record {number} has no answer with {', '.join(_ANSWER_KEYS)}"
    return None
