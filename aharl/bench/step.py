"""``aharl bench step``: one GRPO step in aharl, and in TRL's GRPOTrainer on the same work.

Both runs use the same model, prompts, reward functions and settings (group
size, prompts per step, micro-batching, completion length, temperature,
learning rate, beta, loss aggregation), one after the other in this process,
so the ratio is measured side by side. TRL generates with plain
``transformers`` (its default, and what the reference run did).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from aharl.config import Config
from aharl.data.prompts import build_prompts, chat_messages
from aharl.data.sources import load_rows
from aharl.device import resolve_device, training_dtype
from aharl.modelhub import load_tokenizer, resolve_model_path
from aharl.rewards.calling import convention
from aharl.rewards.registry import resolve_reward_functions
from aharl.tracking.metrics import PHASES

TRL_HF = "TRL GRPOTrainer"
TRL_VLLM = "TRL GRPOTrainer + vLLM colocate"
# aharl's loss aggregation / advantage scaling -> TRL 1.16's names
TRL_LOSS = {"sequence": "grpo", "token": "dapo", "dr_grpo": "dr_grpo", "bnpo": "bnpo"}


def aharl_steps(config: Config, steps: int) -> list[dict[str, float]]:
    """Per-step seconds: the whole step and each phase."""
    from aharl.trainer.loop import train

    config.learner.max_steps = steps
    history = train(config, print_fn=lambda line: print(f"  aharl {line}", flush=True)).history
    return [
        {
            "step": m["time/step"],
            **{p: m.get(f"time/{p}", 0.0) for p in PHASES},
            "completion_tokens": m["completion/tokens"],
            "prompt_tokens": m["prompt/tokens"],
            "completion_length": m["completion/length"],
        }
        for m in history
    ]


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def trl_steps(config: Config, steps: int, vllm: bool = False) -> list[dict[str, float]]:
    """Per-step seconds of TRL's GRPOTrainer on the same model, prompts, rewards and settings.

    ``vllm``: TRL generating with its own vLLM in colocate mode (what a TRL
    user with one GPU picks) instead of ``transformers``.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    device = resolve_device(config)
    tokenizer = load_tokenizer(config.model.path)
    prompts, _ = build_prompts(load_rows(config.data), tokenizer, config.data)
    # Every column, the answer column holding the gold answer, as aharl's rewards receive them.
    dataset = Dataset.from_list(
        [
            {
                **p.columns,
                "prompt": chat_messages(p.question, config.data.system_prompt, config.data.demonstrations),
                "answer": p.answer,
            }
            for p in prompts
        ]
    )
    functions = resolve_reward_functions(config.rewards.functions)
    lc, rc, g = config.learner, config.rollout, config.grpo
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="aharl-bench-trl-"),
        per_device_train_batch_size=lc.micro_batch_prompts * rc.n,
        gradient_accumulation_steps=config.grad_accum_steps,
        num_generations=rc.n,
        max_completion_length=rc.max_tokens,
        temperature=rc.temperature,
        top_p=rc.top_p,
        beta=g.beta,
        epsilon=g.clip_eps_low,
        epsilon_high=g.clip_eps_high,
        num_iterations=g.updates_per_batch,
        loss_type=TRL_LOSS[g.loss_aggregation],
        importance_sampling_level=g.importance_sampling_level,
        scale_rewards=g.advantage_stats if g.scale_advantages_by_std else "none",
        learning_rate=lc.lr,
        adam_beta1=lc.betas[0],
        adam_beta2=lc.betas[1],
        weight_decay=lc.weight_decay,
        warmup_steps=lc.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        lr_scheduler_type=lc.lr_scheduler,
        max_grad_norm=lc.max_grad_norm,
        gradient_checkpointing=lc.gradient_checkpointing,
        reward_weights=[config.rewards.weights.get(name, 1.0) for name, _ in functions],
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=device == "cpu",
        bf16=training_dtype(config, device) == torch.bfloat16,
        seed=lc.seed,
        use_vllm=vllm,
        **(
            dict(vllm_mode="colocate", vllm_gpu_memory_utilization=config.rollout.gpu_memory_utilization)
            if vllm
            else {}
        ),
    )
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(config.model.path), dtype=training_dtype(config, device)
    )
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.started)
            print(f"  trl step {len(times)}/{steps}: {times[-1]:.1f}s", flush=True)

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[_trl_reward(name, fn) for name, fn in functions],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "completions/mean_length" in entry]
    sequences = lc.prompts_per_step * rc.n
    steps_out, seen = [], 0.0
    for t, entry in zip(times, logged):
        completion = entry["completions/mean_length"] * sequences
        # num_tokens: TRL's running count of prompt + completion tokens it has generated on.
        prompt = entry.get("num_tokens", seen) - seen - completion
        seen = entry.get("num_tokens", seen)
        steps_out.append(
            {
                "step": t,
                "completion_tokens": completion,
                "prompt_tokens": prompt,
                "completion_length": entry["completions/mean_length"],
            }
        )
    return steps_out


def _trl_reward(name: str, fn):
    """aharl's ``fn(completions, answers)`` in TRL's ``fn(prompts, completions, answer, **kw)`` shape; a TRL-form function as it is."""
    if convention(fn) == "keywords":
        return fn

    def reward(prompts, completions, answer, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return list(fn(texts, list(answer)))

    reward.__name__ = name.replace(":", "_").replace("/", "_")
    return reward


def summarise_steps(steps: list[dict[str, float]]) -> dict[str, float]:
    """Mean seconds per step and per phase, leaving out the first (warm-up) step when there are more."""
    measured = steps[1:] if len(steps) > 1 else steps
    return {key: statistics.mean(s.get(key, 0.0) for s in measured) for key in measured[0]}


def per_1k_completion_tokens(summary: dict[str, float]) -> float:
    """Seconds per 1,000 completion tokens: the step time on equal work, whatever lengths each trainer sampled."""
    return summary["step"] / max(summary.get("completion_tokens", 0.0), 1.0) * 1000


def markdown(
    aharl: dict[str, float],
    trl: dict[str, float] | None,
    steps: int,
    trl_vllm: dict[str, float] | None = None,
    not_run: dict[str, str] | None = None,
) -> str:
    """The table, the ratios against aharl, and one line per contender that could not run here, saying why."""
    lines = [
        f"Mean seconds per GRPO step (steps 2-{steps}; the first is warm-up)."
        if steps > 1
        else "Seconds for one GRPO step.",
        "",
        "| trainer | s / step | s / 1k completion tokens | prompt tokens | completion tokens (mean length) | "
        + " | ".join(PHASES)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(PHASES),
    ]

    def row(name: str, s: dict[str, float], phases: bool) -> str:
        cells = [f"{s[p]:.1f}" if phases else "-" for p in PHASES]
        return (
            f"| {name} | {s['step']:.1f} | {per_1k_completion_tokens(s):.2f} | {s.get('prompt_tokens', 0):.0f} | "
            f"{s.get('completion_tokens', 0):.0f} ({s.get('completion_length', 0):.1f}) | " + " | ".join(cells) + " |"
        )

    lines.append(row("aharl", aharl, True))
    others = [(name, s) for name, s in ((TRL_HF, trl), (TRL_VLLM, trl_vllm)) if s is not None]
    for name, s in others:
        lines.append(row(name, s, False))
    if others:
        lines.append("")
    for name, s in others:
        lines.append(
            f"{name} / aharl: **{s['step'] / aharl['step']:.2f}x** per step, "
            f"**{per_1k_completion_tokens(s) / per_1k_completion_tokens(aharl):.2f}x** per 1,000 completion tokens"
        )
    for name, why in (not_run or {}).items():
        lines.append(f"{name}: not run here ({why})")
    return "\n".join(lines) + "\n"


def plot(
    aharl: dict[str, float],
    trl: dict[str, float] | None,
    path: str,
    title: str,
    trl_vllm: dict[str, float] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    left = 0.0
    for phase in PHASES:
        ax.barh("aharl", aharl[phase], left=left, label=phase)
        left += aharl[phase]
    if trl is not None:
        ax.barh(TRL_HF, trl["step"], color="grey", label="TRL (whole step)")
    if trl_vllm is not None:
        ax.barh(TRL_VLLM, trl_vllm["step"], color="darkgrey", label="TRL + vLLM (whole step)")
    ax.set_xlabel("seconds per step")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
