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

    bench = commands.add_parser("bench", help="benchmarks (JSON + Markdown + PNG)").add_subparsers(title="bench commands")
    rollout = bench.add_parser("rollout", help="vLLM vs plain HF generate on identical requests")
    rollout.add_argument("--config", default="configs/quickstart.yaml", help="model and data come from here")
    rollout.add_argument("--prompts", help="a .jsonl of GSM8K-style rows (question/answer); default: the config's data")
    rollout.add_argument("--backends", default="vllm,hf")
    rollout.add_argument("--shapes", default="1x8,4x8,8x8", help="prompts x completions per call, comma-separated")
    rollout.add_argument("--max-tokens", type=int, default=64)
    rollout.add_argument("--repeats", type=int, default=3)
    rollout.add_argument("--seed", type=int, default=0)
    rollout.add_argument("--ignore-eos", action="store_true", help="every completion runs to max tokens (raw decode speed)")
    rollout.add_argument("--reference", action="store_true", help="the reference workload: 4 prompts x 16 completions x 200 tokens")
    rollout.add_argument("--bandwidth-gbs", type=float, help="GPU memory bandwidth for the roofline share (looked up when omitted)")
    rollout.add_argument("--out", default="runs/bench-rollout")
    rollout.add_argument("overrides", nargs="*", help="config overrides, e.g. model.path=...")
    rollout.set_defaults(run=_bench_rollout)
    step = bench.add_parser("step", help="aharl's GRPO step (per phase) and TRL's GRPOTrainer on the same work")
    step.add_argument("--config", default="configs/quickstart.yaml")
    step.add_argument("--steps", type=int, default=3, help="steps per trainer; the first is reported as warm-up")
    step.add_argument("--reference", action="store_true", help="the reference recipe's shape (16 x 4 prompts, 200 tokens, reference rewards) on --prompts")
    step.add_argument("--prompts", help="a .jsonl of GSM8K rows (needed with --reference when offline)")
    step.add_argument("--no-trl", action="store_true", help="measure aharl only")
    step.add_argument("--out", default="runs/bench-step")
    step.add_argument("overrides", nargs="*")
    step.set_defaults(run=_bench_step)

    evaluate = commands.add_parser("eval", help="accuracy and format compliance of a model on GSM8K-style questions (JSON)")
    evaluate.add_argument("--model", required=True, help="a local HF directory (e.g. runs/NAME/final), a hub id, or smollm2-135m-instruct")
    evaluate.add_argument("--data", required=True, help="a .jsonl/.json/.parquet/.csv file or a hub id with question/answer columns")
    evaluate.add_argument("--split", default="test", help="split of a hub dataset (default: test)")
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N questions")
    evaluate.add_argument("--modes", default="greedy,sampled", help="greedy, sampled, or both (default)")
    evaluate.add_argument("--samples", type=int, default=4, help="answers per question in sampled mode (reports pass@N too)")
    evaluate.add_argument("--temperature", type=float, default=0.9, help="sampled mode's temperature")
    evaluate.add_argument("--max-tokens", type=int, default=200)
    evaluate.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto", help="auto: vLLM, or HF generate where vLLM is missing")
    evaluate.add_argument("--config", help="a training config whose data/system prompt/rewards to use (default: the reference's)")
    evaluate.add_argument("--rewards", help="reward functions to score answers with (default: the config's)")
    evaluate.add_argument("--output", help="write the JSON here as well as to stdout")
    evaluate.add_argument("--answers", help="write every answer with its judgement to this JSONL file")
    evaluate.add_argument("overrides", nargs="*", help="config overrides, e.g. data.system_prompt=...")
    evaluate.set_defaults(run=_eval)

    plot = commands.add_parser("plot", help="PNG plots of a run's metrics (rewards, KL, length, timings, eval)")
    plot.add_argument("run_dir", help="a run directory, e.g. runs/quickstart")
    plot.set_defaults(run=_plot)

    report = commands.add_parser("report", help="before/after report (Markdown + HTML) from two `aharl eval --output` files")
    report.add_argument("before", help="JSON from `aharl eval` of the initial model")
    report.add_argument("after", help="JSON from `aharl eval` of the trained model")
    report.add_argument("--out", default="runs/report", help="directory for report.md and report.html")
    report.add_argument("--questions", type=int, default=16, help="questions shown side by side")
    report.set_defaults(run=_report)

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

    from ray.exceptions import RayError

    config = load_config(args.file, args.overrides)  # fails fast, before anything starts
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = train(config)
    except RayError as exc:
        # The actor's own traceback is already in the log above; say which part failed, in one line.
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        print(f"aharl: error: an actor failed ({type(exc).__name__}: {first[:300]}); its log is above", file=sys.stderr)
        return 1
    if result.stopped_by:
        return result.exit_code
    print(f"done: metrics in {result.run_dir / 'metrics.jsonl'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from aharl.evaluation.cli import run_eval_command

    return run_eval_command(args)


def _plot(args: argparse.Namespace) -> int:
    from aharl.tracking.plots import plot_run

    paths = plot_run(Path(args.run_dir))
    print("\n".join(str(p) for p in paths))
    return 0


def _report(args: argparse.Namespace) -> int:
    from aharl.evaluation.cli import run_report_command

    return run_report_command(args)


def _bench_config(args: argparse.Namespace, extra: list[str]):
    from aharl.config import load_config

    overrides = list(extra)
    if args.prompts:
        overrides += [f"data.source={args.prompts}", "data.answer_extractor=gsm8k", "data.question_column=question", "data.answer_column=answer"]
    return load_config(args.config, overrides + list(args.overrides))


def _bench_rollout(args: argparse.Namespace) -> int:
    from aharl.bench import rollout as bench
    from aharl.data.prompts import build_prompts
    from aharl.data.sources import load_rows
    from aharl.modelhub import load_tokenizer
    from aharl.trainer.learner import resolve_device

    if args.reference:
        args.shapes, args.max_tokens = "4x16", 200
    if args.repeats < 1 or args.max_tokens < 1:
        raise AharlError("--repeats and --max-tokens must be at least 1")
    config = _bench_config(args, [f"rollout.max_tokens={args.max_tokens}"])
    shapes = [bench.Shape.parse(s) for s in args.shapes.split(",")]
    device = resolve_device(config)
    prompts, _ = build_prompts(load_rows(config.data), load_tokenizer(config.model.path), config.data)
    requests = bench.plan_requests(prompts, shapes, max_tokens=args.max_tokens, repeats=args.repeats, seed=args.seed, ignore_eos=args.ignore_eos)
    results = []
    for backend in args.backends.split(","):
        print(f"{backend}: {len(requests)} calls ({args.shapes}, {args.max_tokens} tokens, warm-up first)", flush=True)
        results += bench.run_backend(backend, config, device, requests)
    rows = bench.summarise(results)
    ratio = bench.ratios(rows)
    meta = bench.environment(config, device, args)
    roofline = bench.roofline_share(rows, config, device, args.bandwidth_gbs)
    out = _out_dir(args.out)
    (out / "rollout.json").write_text(json.dumps({"meta": meta, "runs": [vars(r) for r in results], "summary": rows, "vllm_over_hf": ratio, "roofline": roofline}, indent=2))
    table = bench.markdown_table(rows, ratio) + bench.roofline_markdown(roofline)
    (out / "rollout.md").write_text(f"{bench.meta_line(meta)}\n\n{table}")
    bench.plot(rows, str(out / "rollout.png"), f"{meta['model']} on {meta['device_name']}, {args.max_tokens} tokens{' (ignore EOS)' if args.ignore_eos else ''}")
    print(table, end="")
    print(f"wrote {out}/rollout.json, rollout.md, rollout.png")
    return 0


def _bench_step(args: argparse.Namespace) -> int:
    from aharl.bench import step as bench
    from aharl.data.system_prompts import REFERENCE_SYSTEM_PROMPT

    extra = ["logging.run_name=bench-step-aharl", f"logging.output_dir={args.out}"]
    if args.reference:
        extra += ["rollout.n=16", "learner.prompts_per_step=4", "learner.micro_batch_prompts=1", "rollout.max_tokens=200",
                  "rollout.temperature=0.9", "learner.beta=0.04", "learner.lr=5e-6", "rewards.functions=[reference]",
                  "data.max_prompt_tokens=256", "data.system_prompt=" + json.dumps(REFERENCE_SYSTEM_PROMPT)]
    if args.steps < 1:
        raise AharlError("--steps must be at least 1")
    config = _bench_config(args, extra)
    print(f"aharl: {args.steps} steps", flush=True)
    aharl_summary = bench.summarise_steps(bench.aharl_steps(config, args.steps))
    trl_summary = None
    if args.no_trl:
        pass
    elif bench.trl_available():
        print(f"TRL GRPOTrainer: {args.steps} steps", flush=True)
        trl_summary = bench.summarise_steps(bench.trl_steps(config, args.steps))
    else:
        print("TRL is not installed (pip install -e '.[trl]'): measuring aharl only")
    out = _out_dir(args.out)
    table = bench.markdown(aharl_summary, trl_summary, args.steps)
    (out / "step.json").write_text(json.dumps({"config": config.to_dict(), "aharl": aharl_summary, "trl": trl_summary}, indent=2))
    (out / "step.md").write_text(table)
    bench.plot(aharl_summary, trl_summary, str(out / "step.png"), f"GRPO step: {config.rollout.n} x {config.learner.prompts_per_step} prompts, {config.rollout.max_tokens} tokens")
    print(table, end="")
    print(f"wrote {out}/step.json, step.md, step.png")
    return 0


def _out_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


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
