"""Config loading: the reference file, overrides, and one clear line for every bad input."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from aharl.config import COMMAND_LINE, Config, dump_config, load_config, shipped_configs
from aharl.errors import ConfigError
from aharl.launch.common import load_run_config
from aharl.launch.main import main
from aharl.system_prompts import REFERENCE_SYSTEM_PROMPT
from tests.helpers.paths import CONFIGS

REFERENCE_CONFIG = CONFIGS / "gsm8k-qwen2.5-0.5b-3090.yaml"


def test_reference_config_states_the_reference_recipe():
    c = load_config(REFERENCE_CONFIG)
    assert c.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (c.data.source, c.data.subset, c.data.answer_extractor) == ("openai/gsm8k", "main", "gsm8k")
    assert c.data.system_prompt == REFERENCE_SYSTEM_PROMPT
    assert c.data.max_prompt_tokens == 256
    assert (c.rollout.n, c.rollout.temperature, c.rollout.max_tokens) == (16, 0.9, 200)
    assert c.rewards.functions == ["reference"]
    lr = c.learner
    assert (lr.lr, lr.betas, lr.weight_decay, lr.warmup_ratio, lr.lr_scheduler) == (
        5e-6,
        (0.9, 0.99),
        0.1,
        0.1,
        "cosine",
    )
    assert (lr.max_grad_norm, lr.prompts_per_step, lr.micro_batch_prompts, c.grad_accum_steps) == (0.1, 4, 1, 4)
    g = c.grpo
    assert (g.beta, g.updates_per_batch, g.loss_aggregation, g.advantage_eps, lr.epochs) == (
        0.04,
        1,
        "sequence",
        1e-4,
        1,
    )
    assert lr.precision == "bf16" and c.model.dtype == "bfloat16"
    assert (c.placement.layout, c.rollout.gpu_memory_utilization, c.rollout.sleep_during_update) == (
        "colocate",
        0.3,
        True,
    )
    assert (c.checkpoint.every_steps, c.logging.every_steps, c.logging.wandb_mode) == (100, 1, "online")


def test_overrides_change_values_and_parse_types():
    c = load_config(
        REFERENCE_CONFIG, ["rollout.n=8", "learner.lr=1e-5", "learner.betas=[0.8, 0.9]", "data.shuffle=false"]
    )
    assert c.rollout.n == 8
    assert c.learner.lr == 1e-5  # YAML reads `1e-5` as a string; the float field takes it
    assert c.learner.betas == (0.8, 0.9)
    assert c.data.shuffle is False


def test_dump_loads_back_to_the_same_config(tmp_path):
    c = load_config(REFERENCE_CONFIG, ["rollout.n=4"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(c))
    assert load_config(path) == c


def test_defaults_are_the_reference_values():
    assert load_config(None) == Config()
    assert load_config(None).learner.lr == load_config(REFERENCE_CONFIG).learner.lr


# (yaml text or None, overrides, key in message, words the message must hold)
BAD_CONFIGS = [
    ("rolout:\n  n: 4\n", [], "rolout", "did you mean `rollout`"),
    ("rollout:\n  nn: 4\n", [], "rollout.nn", "did you mean `rollout.n`"),
    ("rollout:\n  n: 1\n", [], "rollout.n", "2 or more"),
    ("rollout:\n  n: many\n", [], "rollout.n", "whole number"),
    ("rollout:\n  temperature: 0\n", [], "rollout.temperature", "above 0"),
    ("rollout:\n  top_p: 1.5\n", [], "rollout.top_p", "(0, 1]"),
    ("rollout:\n  max_tokens: 0\n", [], "rollout.max_tokens", "at least 1"),
    ("rollout:\n  gpu_memory_utilization: 30\n", [], "rollout.gpu_memory_utilization", "(0, 1]"),
    ("rollout:\n  backend: tgi\n", [], "rollout.backend", "one of: vllm, hf"),
    ("rollout: 5\n", [], "rollout", "must be a mapping"),
    ("learner:\n  lr: -1.0e-6\n", [], "learner.lr", "positive"),
    ("learner:\n  lr: fast\n", [], "learner.lr", "must be a number"),
    (
        "learner:\n  prompts_per_step: 4\n  micro_batch_prompts: 3\n",
        [],
        "learner.micro_batch_prompts",
        "does not divide",
    ),
    ("learner:\n  betas: [0.9]\n", [], "learner.betas", "list of 2 numbers"),
    ("learner:\n  betas: [0.9, 1.5]\n", [], "learner.betas", "[0, 1)"),
    ("grpo:\n  beta: -0.1\n", [], "grpo.beta", "not be negative"),
    ("learner:\n  beta: -0.1\n", [], "grpo.beta", "not be negative"),  # the old spelling lands in grpo
    ("learner:\n  zero_stage: 4\n", [], "learner.zero_stage", "0, 1, 2 or 3"),
    ("grpo:\n  loss_aggregation: mean\n", [], "grpo.loss_aggregation", "sequence, token, dr_grpo"),
    ("learner:\n  warmup_ratio: 1.0\n", [], "learner.warmup_ratio", "[0, 1)"),
    ("learner:\n  gradient_checkpointing: maybe\n", [], "learner.gradient_checkpointing", "true or false"),
    ("rollout:\n  overlap: one_step\n", ["grpo.rollout_correction=tis"], "rollout.overlap", "devices of their own"),
    (
        "rollout:\n  overlap: one_step\n",
        ["placement.layout=separate"],
        "rollout.overlap",
        "grpo.rollout_correction=tis",
    ),
    (
        "rollout:\n  overlap: one_step\n",
        ["placement.layout=separate", "grpo.rollout_correction=mis", "sync.interval_steps=2"],
        "rollout.overlap",
        "sync.interval_steps=1",
    ),
    ("grpo:\n  rollout_correction: is\n", [], "grpo.rollout_correction", "none, tis, mis"),
    ("grpo:\n  advantage_eps: 0\n", [], "grpo.advantage_eps", "positive"),
    ("data:\n  max_prompt_tokens: 0\n", [], "data.max_prompt_tokens", "at least 1"),
    (
        "data:\n  demonstrations:\n    - {question: one plus one}\n",
        [],
        "data.demonstrations.0",
        "both a question and a response",
    ),
    (
        "data:\n  demonstrations:\n    - {question: a, answer: b}\n",
        [],
        "data.demonstrations.0.answer",
        "not a known key",
    ),
    ("model:\n  lora: {r: -4}\n", [], "model.lora.r", "positive rank"),
    ("model:\n  lora: {r: 8, dropout: 1.0}\n", [], "model.lora.dropout", "[0, 1)"),
    ("model:\n  lora: {r: 8, target_modules: []}\n", [], "model.lora.target_modules", "no layer"),
    ("model:\n  lora: {r: 8}\nlearner:\n  zero_stage: 3\n", [], "learner.zero_stage", "model.lora"),
    ("model:\n  lora: {rank: 8}\n", [], "model.lora.rank", "not a known key"),
    ("data:\n  synthetic:\n    difficulty: 0\n", [], "data.synthetic.difficulty", "between 1 and 8"),
    ("rewards:\n  functions: [correctnes]\n", [], "rewards.functions", "not a known reward"),
    ("rewards:\n  weights: {foo: 2.0}\n", [], "rewards.weights.foo", "names no configured reward"),
    ("rewards:\n  timeout_s: 0\n", [], "rewards.timeout_s", "positive"),
    ("placement:\n  layout: separate\n  rollout_gpus: 0\n", [], "placement.rollout_gpus", "separate layout"),
    ("sync:\n  interval_steps: 0\n", [], "sync.interval_steps", "at least 1"),
    ("sync:\n  method: nccl\n", [], "sync.method", "one process per device"),
    ("placement:\n  layout: separate\nsync:\n  method: cuda_ipc\n", [], "sync.method", "same GPU"),
    (
        "rollout:\n  backend: hf\nplacement:\n  layout: separate\nsync:\n  method: nccl\n",
        [],
        "sync.method",
        "rollout.backend=hf",
    ),
    ("placement:\n  learner_gpus: 3\n", [], "placement.learner_gpus", "does not divide"),
    ("checkpoint:\n  keep_last: 0\n", [], "checkpoint.keep_last", "at least 1"),
    ("eval:\n  num_questions: -1\n", [], "eval.num_questions", "not be negative"),
    ("eval:\n  every_step: 5\n", [], "eval.every_step", "did you mean `eval.every_steps`"),
    ("logging:\n  wandb_mode: cloud\n", [], "logging.wandb_mode", "off, online, offline"),
    (None, ["resume=[1, 2]"], "resume", "must be a string"),
    ("rollout: {n: 4\n", [], "(file)", "not valid YAML at line"),
    ("- a\n- b\n", [], "(file)", "mapping of sections"),
    (None, ["rollout.n"], "rollout.n", "section.key=value"),
    (None, ["rollout.n=1"], "rollout.n", "2 or more"),
    (None, ["learner.nope=3"], "learner.nope", "not a known key"),
]


@pytest.mark.parametrize("text, overrides, key, words", BAD_CONFIGS)
def test_bad_config_fails_with_one_line_naming_key_source_and_fix(tmp_path, text, overrides, key, words):
    path = None
    if text is not None:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert f"`{key}`" in message
    assert words in message
    assert "fix:" in message
    expected_source = COMMAND_LINE if overrides and (text is None) else str(path)
    assert f"config error in {expected_source}:" in message


def test_value_from_the_file_is_blamed_on_the_file_and_override_on_the_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  n: 8\n")
    with pytest.raises(ConfigError, match="in command-line override"):
        load_config(path, ["rollout.temperature=-1"])
    path.write_text("learner:\n  micro_batch_prompts: 3\n")
    with pytest.raises(ConfigError, match=f"in {path}"):
        load_config(path)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_cli_config_show_prints_the_resolved_reference_config(capsys):
    assert main(["config", "show", str(REFERENCE_CONFIG), "rollout.n=8"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["rollout"]["n"] == 8
    assert shown["learner"]["lr"] == 5e-6
    assert shown["data"]["system_prompt"] == REFERENCE_SYSTEM_PROMPT


def test_cli_bad_config_prints_one_line_and_exits_2(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("rollout:\n  n: 1\n"))
    assert main(["config", "show", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("aharl: error: config error") and "rollout.n" in err


def test_grpo_keys_under_learner_still_load_with_a_note(tmp_path, caplog):
    path = tmp_path / "old.yaml"
    path.write_text("learner:\n  beta: 0.5\n  clip_eps_high: 0.28\n  lr: 1.0e-5\n")
    with caplog.at_level("WARNING", logger="aharl.config"):
        c = load_config(path)
    assert (c.grpo.beta, c.grpo.clip_eps_high, c.learner.lr) == (0.5, 0.28, 1e-5)
    assert "`learner.beta`" in caplog.text and "`grpo.beta`" in caplog.text
    # An override in the old spelling still beats the file's new one.
    path.write_text("grpo:\n  beta: 0.04\n")
    assert load_config(path, ["learner.beta=0"]).grpo.beta == 0.0
    assert load_config(path, []).grpo.beta == 0.04


def test_shipped_configs_load_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert set(shipped_configs()) >= {"quickstart", "gsm8k-qwen2.5-0.5b-3090", "gsm8k-qwen2.5-0.5b-2gpu"}
    assert load_config("quickstart") == load_config(CONFIGS / "quickstart.yaml")
    assert load_config("quickstart.yaml") == load_config("configs/quickstart.yaml") == load_config("quickstart")
    assert main(["configs"]) == 0
    assert "quickstart" in capsys.readouterr().out
    # The name resolves to the checkout's top-level configs/ (through the package's link to it).
    assert shipped_configs()["quickstart"].resolve() == (CONFIGS / "quickstart.yaml").resolve()
    assert main(["config", "show", "quickstart"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == load_config("quickstart").to_dict()
    with pytest.raises(ConfigError, match="quickstart"):  # the error lists what there is
        load_config("quickstrat")


@pytest.mark.parametrize("override", ["logging.wandb_mode=off", "logging.wandb_mode=Off"])
def test_a_choice_spelled_like_a_yaml_boolean_is_the_choice(override, tmp_path):
    # YAML 1.1 reads `off` as False; the user meant the choice "off" (file and command line alike).
    assert load_config(None, [override]).logging.wandb_mode == "off"
    path = tmp_path / "run.yaml"
    path.write_text("logging:\n  wandb_mode: off\n")
    assert load_config(path).logging.wandb_mode == "off"
