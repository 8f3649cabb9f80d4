"""The ``aharl`` command.

Each sub-command lives in its own small function; problems in the user's input
(:class:`~aharl.errors.AharlError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence, TextIO

from aharl.errors import AharlError

SCORE_CHUNK_ROWS = 256


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except AharlError as exc:
        print(f"aharl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aharl: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aharl", description="GRPO training on Ray, vLLM and DeepSpeed.")
    commands = parser.add_subparsers(title="commands")

    train = commands.add_parser("train", help="run GRPO training (starts Ray in-process unless RAY_ADDRESS is set)")
    train.add_argument("file", help="YAML config, e.g. configs/quickstart.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.max_steps=5")
    train.set_defaults(run=_train)

    config = commands.add_parser("config", help="inspect configs").add_subparsers(title="config commands")
    show = config.add_parser("show", help="print the resolved config (file + overrides)")
    show.add_argument("file", help="YAML config")
    show.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.n=8")
    show.set_defaults(run=_config_show)

    rewards = commands.add_parser("rewards", help="reward functions").add_subparsers(title="rewards commands")
    score = rewards.add_parser("score", help="score completions from a JSONL file")
    score.add_argument("--input", required=True, help='JSONL rows {"completion": str, "answer": str}')
    score.add_argument("--rewards", default="reference", help="comma-separated names, sets or module:function (default: reference)")
    score.add_argument("--output", help="write JSONL here instead of stdout")
    score.set_defaults(run=_rewards_score)
    return parser


def _train(args: argparse.Namespace) -> int:
    import logging

    from aharl.config import load_config
    from aharl.trainer.loop import train

    config = load_config(args.file, args.overrides)  # fails fast, before anything starts
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = train(config, print_fn=lambda line: print(line, flush=True))
    print(f"done: metrics in {result.run_dir / 'metrics.jsonl'}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from aharl.config import dump_config, load_config

    print(dump_config(load_config(args.file, args.overrides)), end="")
    return 0


def _rewards_score(args: argparse.Namespace) -> int:
    from aharl.rewards.registry import resolve_reward_functions
    from aharl.rewards.scoring import score_completions

    functions = resolve_reward_functions([e.strip() for e in args.rewards.split(",") if e.strip()])
    path = Path(args.input)
    if not path.is_file():
        raise AharlError(f"input file {path} does not exist; pass a JSONL file of {{\"completion\": ..., \"answer\": ...}} rows")
    out: TextIO = open(args.output, "w") if args.output else sys.stdout
    bad = 0
    pending: list[tuple[str, str]] = []

    def flush() -> None:
        # Written chunk by chunk, so rows scored before a failing reward are kept.
        if not pending:
            return
        scores = score_completions([c for c, _ in pending], [a for _, a in pending], functions)
        for i in range(len(pending)):
            row = {name: values[i] for name, values in scores.per_function.items()}
            row["total"] = scores.total[i]
            out.write(json.dumps(row) + "\n")
        out.flush()
        pending.clear()

    try:
        with path.open() as rows:
            for number, line in enumerate(rows, start=1):
                if not line.strip():
                    continue
                problem, row = _parse_score_row(line)
                if problem:
                    bad += 1
                    print(f"aharl: {path}:{number}: {problem}; skipped", file=sys.stderr)
                    continue
                pending.append(row)
                if len(pending) >= SCORE_CHUNK_ROWS:
                    flush()
        flush()
    finally:
        if out is not sys.stdout:
            out.close()
    if bad:
        print(f"aharl: {bad} malformed row(s) skipped; each needs string fields \"completion\" and \"answer\"", file=sys.stderr)
        return 1
    return 0


def _parse_score_row(line: str) -> tuple[str | None, tuple[str, str]]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg})", ("", "")
    if not isinstance(row, dict):
        return "not a JSON object", ("", "")
    completion, answer = row.get("completion"), row.get("answer")
    if not isinstance(completion, str):
        return 'missing string field "completion"', ("", "")
    if answer is None:
        return 'missing field "answer"', ("", "")
    return None, (completion, str(answer))


if __name__ == "__main__":
    sys.exit(main())
