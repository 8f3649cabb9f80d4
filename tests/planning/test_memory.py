"""The memory plan (``aharl plan``): shapes, ZeRO partitioning, fits / refuses, and the command's output and exit codes. Fast, no Ray."""

from __future__ import annotations

import dataclasses

import pytest

from aharl.config import load_config
from aharl.errors import AharlError
from aharl.launch.main import main
from aharl.planning.memory import BUILTIN_SHAPES, GIB, learner_parts, model_shape, plan_memory, plan_with_fix

REFERENCE_3090 = "gsm8k-qwen2.5-0.5b-3090"
# Qwen2.5-3B, full fine-tune, ZeRO 0, on one 24 GB GPU beside vLLM: cannot fit.
TOO_BIG = ("model.path=Qwen/Qwen2.5-3B-Instruct", "learner.zero_stage=0")
# The reference config with every micro-batch 4x larger and no checkpointing: fits once the micro-batch shrinks.
BIG_MICRO_BATCH = ("learner.gradient_checkpointing=false", "learner.micro_batch_prompts=4", "learner.packing=padded")


SMOLLM2 = BUILTIN_SHAPES["HuggingFaceTB/SmolLM2-135M-Instruct"]


def model_of_shape(shape):
    """A randomly initialised transformers Llama with ``shape``'s sizes: an independent count of its parameters."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.intermediate,
        vocab_size=shape.vocab,
        tie_word_embeddings=shape.tied_embeddings,
    )
    return transformers.AutoModelForCausalLM.from_config(config)


def test_builtin_smollm2_shape_counts_the_parameters_of_the_real_model():
    shape = SMOLLM2
    model = model_of_shape(shape)
    assert shape.params == sum(p.numel() for p in model.parameters()) == 134_515_008


@pytest.mark.parametrize("targets", [["all-linear"], ["q_proj", "v_proj"]])
def test_lora_parameter_count_is_what_peft_trains(targets):
    peft = pytest.importorskip("peft")
    shape = SMOLLM2
    wrapped = peft.get_peft_model(
        model_of_shape(shape),
        peft.LoraConfig(r=16, target_modules="all-linear" if targets == ["all-linear"] else targets),
    )
    assert shape.lora_params(16, targets) == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def test_lora_plans_optimizer_state_for_the_adapters_and_no_reference_copy():
    full = dict(
        (p.name, p.gib)
        for p in learner_parts(load_config(REFERENCE_3090), BUILTIN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"], "cuda")[0]
    )
    lora_config = load_config(REFERENCE_3090, ["model.lora.r=16"])
    lora = dict(
        (p.name, p.gib) for p in learner_parts(lora_config, BUILTIN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"], "cuda")[0]
    )
    trained = BUILTIN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"].lora_params(16, ["all-linear"])
    assert lora["optimizer states"] == pytest.approx(12 * trained / GIB)  # fp32 master + m + v of the adapters only
    assert "reference model" in full and "reference model" not in lora  # the base with adapters off is the reference
    assert lora["weights"] > full["weights"]  # the adapters themselves sit beside the base


def test_builtin_qwen_shape_matches_its_published_count():
    assert BUILTIN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"].params == 494_032_768


def test_unknown_hub_id_offline_says_to_pass_a_directory():
    with pytest.raises(AharlError, match="pass a local model directory"):
        model_shape("someone/unknown-model")


def test_zero_partitions_master_weights_optimizer_and_gradients_by_ranks_but_not_the_weights_below_stage_3():
    shape = BUILTIN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"]

    def parts(*overrides: str) -> dict[str, float]:
        config = load_config(REFERENCE_3090, overrides)
        return {part.name: part.gib * GIB for part in learner_parts(config, shape, "cuda")[0]}

    one, four = parts(), parts("placement.learner_gpus=4")
    assert four["optimizer states"] == pytest.approx(one["optimizer states"] / 4)
    bucket = 2 * 500_000_000
    assert four["gradients"] - bucket == pytest.approx((one["gradients"] - bucket) / 4)
    assert four["weights"] == one["weights"] and four["reference model"] == one["reference model"]
    three = parts("placement.learner_gpus=4", "learner.zero_stage=3")
    assert three["weights"] == pytest.approx(one["weights"] / 4)


def test_the_3090_config_fits_24_gib():
    config = load_config(REFERENCE_3090)
    plan = plan_memory(config, model_shape(config.model.path), 24.0)
    assert plan.fits and plan.kv is not None and plan.kv.waves == 1
    assert [gpu.label.split()[0] for gpu in plan.gpus] == ["shared"]


def test_a_config_that_cannot_fit_is_refused_and_the_suggested_change_fits():
    reload = lambda extra: load_config(REFERENCE_3090, [*BIG_MICRO_BATCH, *extra])  # noqa: E731
    plan = plan_with_fix(reload(()), 24.0, reload)
    assert not plan.fits and plan.fix
    fixed = reload(plan.fix)
    assert plan_memory(fixed, model_shape(fixed.model.path), 24.0).fits


def test_a_3b_full_fine_tune_at_zero_0_does_not_fit_24_gib():
    config = load_config(REFERENCE_3090, TOO_BIG)
    assert not plan_memory(config, model_shape(config.model.path), 24.0).fits


def test_separate_layout_plans_the_learner_and_rollout_gpus_apart():
    config = load_config("gsm8k-qwen2.5-0.5b-2gpu")
    plan = plan_memory(config, model_shape(config.model.path), 24.0)
    assert [gpu.label.split()[0] for gpu in plan.gpus] == ["learner", "rollout"]
    assert plan.fits


def test_gradient_checkpointing_shrinks_the_activations():
    config = load_config(REFERENCE_3090)
    shape = model_shape(config.model.path)
    off = dataclasses.replace(config, learner=dataclasses.replace(config.learner, gradient_checkpointing=False))
    assert learner_parts(off, shape, "cuda")[1] > learner_parts(config, shape, "cuda")[1]


def test_plan_command_prints_the_breakdown_and_exits_0_when_it_fits(capsys):
    assert main(["plan", REFERENCE_3090, "--gpu-memory-gib", "24"]) == 0
    out = capsys.readouterr().out
    for part in (
        "weights",
        "gradients",
        "optimizer states",
        "reference model",
        "activations",
        "log-prob chunks",
        "vLLM KV cache",
        "vLLM CUDA graphs",
        "peak",
        "fits: yes",
    ):
        assert part in out


def test_plan_command_exits_2_with_one_line_and_the_fix_when_it_does_not_fit(capsys):
    assert main(["plan", REFERENCE_3090, *BIG_MICRO_BATCH, "--gpu-memory-gib", "24"]) == 2
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("aharl: error: the run does not fit") and "try learner." in error[0]
    assert "smallest change that fits: learner." in captured.out


def test_plan_command_defaults_to_24_gib_without_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr("aharl.launch.plan.local_gpu_gib", lambda: None)
    assert main(["plan", REFERENCE_3090]) == 0
    assert "no GPU here: assuming 24 GiB" in capsys.readouterr().out


def test_train_refuses_a_config_that_cannot_fit_before_anything_starts(tmp_path, capsys):
    argv = ["train", REFERENCE_3090, *TOO_BIG, "placement.gpu_memory_gib=24", f"logging.output_dir={tmp_path}"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "does not fit" in error[0]
    assert not any(tmp_path.iterdir())  # no run directory: refused before the lock and the actors
