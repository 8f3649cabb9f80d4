"""A tiny model and a toy task for end-to-end runs that finish in about a minute on 2 cores."""

from __future__ import annotations

from pathlib import Path

from aharl.config import Config, load_config

# A dense rule reward: the share of the completion's characters that are
# vowels. A random tiny model scores ~0.34; many tokens score higher, so GRPO
# can climb it step by step (a single-letter target collapses onto one
# sequence before it gets far).
TOY_REWARD = """
def vowels(completions, answers):
    return [sum(ch in "aeiou" for ch in text) / max(1, len(text)) for text in completions]
"""


def build_tiny_model(directory: Path, tokenizer) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and random weights, saved as an HF directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def toy_workspace(root: Path, tokenizer) -> tuple[Path, Path]:
    """The tiny model and the toy reward file under ``root``: ``(model_dir, reward_file)``."""
    model_dir = build_tiny_model(root / "model", tokenizer)
    reward_file = root / "toy_rewards.py"
    reward_file.write_text(TOY_REWARD)
    return model_dir, reward_file


def toy_config(model_dir: Path, run_dir: Path, reward_file: Path, *overrides: str) -> Config:
    return load_config(None, toy_overrides(model_dir, run_dir, reward_file, *overrides))


def toy_overrides(model_dir: Path, run_dir: Path, reward_file: Path, *overrides: str) -> list[str]:
    """The toy run as command-line overrides (``aharl train`` takes them as they are)."""
    return [
        f"model.path={model_dir}",
        "data.source=synthetic",
        "data.answer_extractor=plain",
        "data.system_prompt=''",
        "data.max_prompt_tokens=96",
        "data.synthetic.num_examples=400",
        "rollout.n=8",
        "rollout.temperature=1.0",
        "rollout.max_tokens=8",
        "rollout.gpu_memory_utilization=0.05",
        f"rewards.functions=[{reward_file}:vowels]",
        "rewards.num_workers=1",
        "learner.lr=2e-2",
        "learner.lr_scheduler=constant_with_warmup",
        "learner.warmup_ratio=0.0",
        "learner.prompts_per_step=4",
        "learner.micro_batch_prompts=2",
        "learner.max_steps=16",
        "grpo.beta=0.0",
        "learner.max_grad_norm=1.0",
        "learner.gradient_checkpointing=false",
        f"logging.output_dir={run_dir}",
        "logging.run_name=toy",
        "logging.plots=false",
        "eval.num_questions=0",
        *overrides,
    ]
