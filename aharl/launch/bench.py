"""``aharl bench rollout``, ``step``, ``scaling`` and ``layout``: figures side by side, written as JSON and Markdown (and PNG)."""

from __future__ import annotations

import argparse
import json

from aharl.errors import AharlError, describe
from aharl.launch.common import load_run_config, out_dir


def _bench_config(args: argparse.Namespace, extra: list[str]):
    overrides = list(extra)
    if args.prompts:
        overrides += [
            f"data.source={args.prompts}",
            "data.answer_extractor=gsm8k",
            "data.question_column=question",
            "data.answer_column=answer",
        ]
    return load_run_config(args.config, overrides + list(args.overrides))


def bench_rollout(args: argparse.Namespace) -> int:
    from aharl.bench import rollout as bench
    from aharl.data.prompts import build_prompts
    from aharl.data.sources import load_rows
    from aharl.device import resolve_device
    from aharl.modelhub import load_tokenizer

    if args.reference:
        args.shapes, args.max_tokens = "4x16", 200
    if args.repeats < 1 or args.max_tokens < 1:
        raise AharlError("--repeats and --max-tokens must be at least 1")
    config = _bench_config(args, [f"rollout.max_tokens={args.max_tokens}"])
    shapes = [bench.Shape.parse(s) for s in args.shapes.split(",")]
    device = resolve_device(config)
    prompts, _ = build_prompts(load_rows(config.data), load_tokenizer(config.model.path), config.data)
    requests = bench.plan_requests(
        prompts, shapes, max_tokens=args.max_tokens, repeats=args.repeats, seed=args.seed, ignore_eos=args.ignore_eos
    )
    results = []
    for backend in args.backends.split(","):
        print(f"{backend}: {len(requests)} calls ({args.shapes}, {args.max_tokens} tokens, warm-up first)", flush=True)
        results += bench.run_backend(backend, config, device, requests)
    rows = bench.summarise(results)
    ratio = bench.ratios(rows)
    meta = bench.environment(config, device, args)
    roofline = bench.roofline_share(rows, config, device, args.bandwidth_gbs)
    out = out_dir(args.out)
    (out / "rollout.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "runs": [vars(r) for r in results],
                "summary": rows,
                "vllm_over_hf": ratio,
                "roofline": roofline,
            },
            indent=2,
        )
    )
    table = bench.markdown_table(rows, ratio) + bench.roofline_markdown(roofline)
    (out / "rollout.md").write_text(f"{bench.meta_line(meta)}\n\n{table}")
    bench.plot(
        rows,
        str(out / "rollout.png"),
        f"{meta['model']} on {meta['device_name']}, {args.max_tokens} tokens{' (ignore EOS)' if args.ignore_eos else ''}",
    )
    print(table, end="")
    print(f"wrote {out}/rollout.json, rollout.md, rollout.png")
    return 0


def bench_step(args: argparse.Namespace) -> int:
    from aharl.bench import step as bench
    from aharl.system_prompts import REFERENCE_SYSTEM_PROMPT

    extra = ["logging.run_name=bench-step-aharl", f"logging.output_dir={args.out}"]
    if args.reference:
        extra += [
            "rollout.n=16",
            "learner.prompts_per_step=4",
            "learner.micro_batch_prompts=1",
            "rollout.max_tokens=200",
            "rollout.temperature=0.9",
            "grpo.beta=0.04",
            "learner.lr=5e-6",
            "rewards.functions=[reference]",
            "data.max_prompt_tokens=256",
            "data.system_prompt=" + json.dumps(REFERENCE_SYSTEM_PROMPT),
            # A group is ~3,000 tokens at this shape: as one packed row its attention
            # costs more than the prompt copies it saves (docs/benchmarks.md, bench layout).
            "learner.max_tokens_per_micro_batch=1024",
        ]
    if args.steps < 1:
        raise AharlError("--steps must be at least 1")
    config = _bench_config(args, extra)
    print(f"aharl: {args.steps} steps", flush=True)
    aharl_summary = bench.summarise_steps(bench.aharl_steps(config, args.steps))
    trl_summary = trl_vllm_summary = None
    not_run: dict[str, str] = {}
    if args.no_trl:
        pass
    elif bench.trl_available():
        print(f"{bench.TRL_HF}: {args.steps} steps", flush=True)
        trl_summary = bench.summarise_steps(bench.trl_steps(config, args.steps))
        if args.trl_vllm:
            print(f"{bench.TRL_VLLM}: {args.steps} steps", flush=True)
            try:
                trl_vllm_summary = bench.summarise_steps(bench.trl_steps(config, args.steps, vllm=True))
            except (
                Exception
            ) as exc:  # TRL's vLLM path on a build it does not support: report it, keep the other figures
                not_run[bench.TRL_VLLM] = describe(exc, 200)
                print(f"{bench.TRL_VLLM} could not run here: {not_run[bench.TRL_VLLM]}", flush=True)
    else:
        print("TRL is not installed (pip install -e '.[trl]'): measuring aharl only")
    out = out_dir(args.out)
    table = bench.markdown(aharl_summary, trl_summary, args.steps, trl_vllm_summary, not_run)
    record = {
        "config": config.to_dict(),
        "aharl": aharl_summary,
        "trl": trl_summary,
        "trl_vllm": trl_vllm_summary,
        "not_run": not_run,
    }
    (out / "step.json").write_text(json.dumps(record, indent=2))
    (out / "step.md").write_text(table)
    bench.plot(
        aharl_summary,
        trl_summary,
        str(out / "step.png"),
        f"GRPO step: {config.rollout.n} x {config.learner.prompts_per_step} prompts, {config.rollout.max_tokens} tokens",
        trl_vllm_summary,
    )
    print(table, end="")
    print(f"wrote {out}/step.json, step.md, step.png")
    return 0


def bench_scaling(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aharl.bench import scaling as bench

    shapes = bench.parse_shapes(args.shapes)
    if args.steps < 1:
        raise AharlError("--steps must be at least 1")
    config = load_run_config(
        args.config, [f"logging.output_dir={args.out}", "logging.run_name=bench-scaling", *args.overrides]
    )
    results = {}
    for shape in shapes:
        print(f"{shape} (learner ranks x rollout engines): {args.steps} steps", flush=True)
        results[str(shape)] = bench.run_shape(config, shape, args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = bench.markdown(results, args.steps)
    (out / "scaling.json").write_text(json.dumps({"config": config.to_dict(), "results": results}, indent=2))
    (out / "scaling.md").write_text(table)
    print(table)
    print(f"wrote {out}/scaling.json, scaling.md")
    return 0


def bench_layout(args: argparse.Namespace) -> int:
    import dataclasses

    from transformers import AutoModelForCausalLM

    from aharl.bench import layout as bench
    from aharl.device import resolve_device, training_dtype
    from aharl.modelhub import resolve_model_path

    if min(args.prompt_tokens, args.completions, args.max_tokens) < 1:
        raise AharlError("--prompt-tokens, --completions and --max-tokens must be at least 1")
    config = load_run_config(args.config, list(args.overrides))
    device = resolve_device(config)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(config.model.path), dtype=training_dtype(config, device)
    ).to(device)
    group = bench.synthetic_group(args.prompt_tokens, args.completions, args.max_tokens)
    print(
        f"one group: prompt {args.prompt_tokens} tokens, {args.completions} completions of up to {args.max_tokens} ({config.model.path}, {device})",
        flush=True,
    )
    timings = bench.run_layouts(model, group, config.learner.logprob_chunk_rows)
    out = out_dir(args.out)
    table = bench.markdown(timings)
    shape = {
        "prompt_tokens": args.prompt_tokens,
        "completions": args.completions,
        "max_tokens": args.max_tokens,
        "model": config.model.path,
        "device": device,
    }
    (out / "layout.json").write_text(
        json.dumps({"shape": shape, "layouts": [dataclasses.asdict(t) for t in timings]}, indent=2)
    )
    (out / "layout.md").write_text(table)
    print(table, end="")
    print(f"wrote {out}/layout.json, layout.md")
    return 0
