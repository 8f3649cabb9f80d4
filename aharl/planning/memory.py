"""Will it fit? The predicted peak memory of every part of a run, per GPU.

Pure arithmetic on the config and the model's shape (no torch, no GPU), so
``aharl plan`` answers in a second and ``aharl train`` can refuse a config
before any actor starts. The model of each part, its validation against
measured peaks, and its known error are in ``docs/memory-plan.md``.

Symbols: ``P`` parameters, ``w`` bytes per training-dtype element (2 for bf16,
4 for fp32), ``N`` learner ranks (ZeRO partitions over them), ``T`` tokens
and ``R`` logit rows (completion positions) of one micro-batch, ``V`` the
vocabulary, ``h`` the hidden size, ``L`` the layers.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from aharl.config import Config
from aharl.errors import AharlError
from aharl.modelhub import SMOLLM2_ALIAS, cache_dir

GIB = 2**30

# DeepSpeed's default ``zero_optimization.reduce_bucket_size`` (elements): ZeRO 1-2
# gather gradients into a bucket this large, allocated whole on a GPU (on CPU
# only the pages the gradients touch become resident).
REDUCE_BUCKET_ELEMENTS = 500_000_000
# What a CPU learner process holds before its model loads: Python, torch,
# transformers, DeepSpeed, Ray and aharl imported, gloo group up. Measured on
# the 2-core CPU machine, 2026-11-26: ``ru_maxrss`` 0.30 GiB after
# ``import ray, torch, deepspeed, transformers, aharl.learner.learner,
# aharl.runtime.cluster`` and ``deepspeed.init_distributed("gloo")``.
CPU_PROCESS_BASELINE_GIB = 0.30
# What a CPU learner peaks above the modelled parts, in gradient-sized copies
# (``CPU_EXTRA_GRAD_COPIES x w x P``): measured on the 2-core CPU machine,
# 2026-11-26, quickstart (SmolLM2-135M, fp32, ZeRO-2) padded and shared_prefix,
# with and without checkpointing (docs/memory-plan.md, Validation).
CPU_EXTRA_GRAD_COPIES = 2
# The CUDA context (kernels, cuBLAS workspace) of each process on a GPU; it is
# not in ``torch.cuda.max_memory_allocated`` but it is in the GPU's memory.
CUDA_CONTEXT_GIB = 0.5
# What a colocated vLLM keeps while asleep (level 1: weights offloaded, KV cache
# dropped; context and CUDA graphs stay). Measured by ``aharl doctor``'s
# sleep-wake check on an H200, 2026-11-26 (docs/gpu-status.md).
VLLM_ASLEEP_GIB = 0.77
# vLLM's captured CUDA graphs (0 with ``rollout.enforce_eager``).
VLLM_CUDA_GRAPHS_GIB = 0.4
# vLLM's profiling pass: one batch of ``max_num_batched_tokens`` through the
# model and the sampler's fp32 logits for ``max_num_seqs`` sequences.
VLLM_MAX_BATCHED_TOKENS = 8192
VLLM_MAX_NUM_SEQS = 256
# A GPU that the plan fills to the last byte still fails on fragmentation:
# the plan keeps this share of the card free.
FRAGMENTATION_SHARE = 0.05
DEFAULT_GPU_GIB = 24.0


# ---------------------------------------------------------------------------
# The model's shape


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's sizes (a Llama / Qwen2 ``config.json``)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool

    @property
    def params(self) -> int:
        """Parameters: embedding, per layer (q, k, v, o, gated MLP, two RMS norms), final norm, LM head unless tied."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * q + 2 * self.hidden * kv + q * self.hidden + ((q + 2 * kv) if self.qkv_bias else 0)
        layer = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.vocab * self.hidden + self.layers * layer + self.hidden + head

    def lora_params(self, r: int, targets: Sequence[str]) -> int:
        """LoRA's trainable parameters: ``r x (in + out)`` for each targeted linear layer (``all-linear``: all seven per layer)."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        sides = {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }
        chosen = sides if list(targets) == ["all-linear"] else {name: sides[name] for name in targets if name in sides}
        return self.layers * sum(r * (a + b) for a, b in chosen.values())

    def kv_bytes_per_token(self, element_bytes: int) -> int:
        """KV cache per token: a key and a value per layer and KV head."""
        return 2 * self.layers * self.kv_heads * self.head_dim * element_bytes

    @classmethod
    def from_hf_config(cls, name: str, cfg: dict) -> "ModelShape":
        heads = cfg["num_attention_heads"]
        return cls(
            name=name,
            hidden=cfg["hidden_size"],
            layers=cfg["num_hidden_layers"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            intermediate=cfg["intermediate_size"],
            vocab=cfg["vocab_size"],
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
        )


# The shipped configs' models, from their public config.json, so the plan works offline.
BUILTIN_SHAPES = {
    shape.name: shape
    for shape in (
        ModelShape("Qwen/Qwen2.5-0.5B-Instruct", 896, 24, 14, 2, 64, 4864, 151936, True, True),  # 494,032,768 params
        ModelShape("Qwen/Qwen2.5-1.5B-Instruct", 1536, 28, 12, 2, 128, 8960, 151936, True, True),  # 1,543,714,304
        ModelShape("Qwen/Qwen2.5-3B-Instruct", 2048, 36, 16, 2, 128, 11008, 151936, True, True),  # 3,085,938,688
        ModelShape("HuggingFaceTB/SmolLM2-135M-Instruct", 576, 30, 9, 3, 64, 1536, 49152, True, False),  # 134,515,008
    )
}
BUILTIN_SHAPES[SMOLLM2_ALIAS] = BUILTIN_SHAPES["HuggingFaceTB/SmolLM2-135M-Instruct"]


def model_shape(path: str) -> ModelShape:
    """The shape of ``model.path``: its local ``config.json``, else the built-in table (no download)."""
    local = cache_dir() / "models" / SMOLLM2_ALIAS if path == SMOLLM2_ALIAS else Path(path).expanduser()
    config_file = local / "config.json"
    if config_file.is_file():
        return ModelShape.from_hf_config(path, json.loads(config_file.read_text()))
    if path in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[path]
    known = ", ".join(name for name in BUILTIN_SHAPES if "/" in name)
    raise AharlError(
        f"no config.json for model {path}: the plan knows {known} offline; pass a local model directory (model.path=DIR)"
    )


# ---------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Part:
    name: str
    gib: float
    note: str = ""


@dataclass
class GpuPlan:
    """One GPU (or, on CPU, one process): its parts, the phases' peaks and the total."""

    label: str
    parts: list[Part]
    peak_gib: float
    capacity_gib: float
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def usable_gib(self) -> float:
        return self.capacity_gib * (1 - FRAGMENTATION_SHARE)

    @property
    def fits(self) -> bool:
        return self.peak_gib <= self.usable_gib

    @property
    def headroom_gib(self) -> float:
        return self.usable_gib - self.peak_gib


@dataclass
class KvCache:
    """vLLM's KV cache on one engine: capacity against what a step's generation needs."""

    gib: float
    capacity_tokens: int
    needed_tokens: int

    @property
    def waves(self) -> int:
        """How many rounds generation takes (1: the step's sequences all fit at once)."""
        return math.ceil(self.needed_tokens / self.capacity_tokens) if self.capacity_tokens > 0 else 0


@dataclass
class MemoryPlan:
    gpus: list[GpuPlan]
    learner_peak_gib: float  # what ``memory/learner_peak_gib`` should read (allocator peak; RSS on CPU)
    kv: KvCache | None
    notes: list[str] = field(default_factory=list)
    fix: list[str] | None = None  # overrides that make a config that does not fit fit

    @property
    def fits(self) -> bool:
        return all(gpu.fits for gpu in self.gpus) and (self.kv is None or self.kv.capacity_tokens > 0)


def micro_batch_tokens(config: Config) -> tuple[int, int, int]:
    """Worst case ``(tokens T, logit rows R, sequences S)`` of one micro-batch.

    ``padded``: S = micro_batch_prompts x n rows of max_prompt_tokens + max_tokens.
    ``shared_prefix``: one packed row, each prompt once and its n completions
    after it; with ``max_tokens_per_micro_batch`` the budget bounds T and R.
    Logits are kept at completion positions only (one more per row in ``padded``).
    """
    lr, n = config.learner, config.rollout.n
    prompt, completion = config.data.max_prompt_tokens, config.rollout.max_tokens
    groups = lr.micro_batch_prompts
    if lr.packing == "padded":
        seqs = groups * n
        tokens, rows = seqs * (prompt + completion), seqs * (completion + 1)
        if lr.max_tokens_per_micro_batch is not None:
            seqs = max(1, min(seqs, lr.max_tokens_per_micro_batch // (prompt + completion)))
            tokens, rows = seqs * (prompt + completion), seqs * (completion + 1)
        return tokens, rows, seqs
    tokens, rows = groups * (prompt + n * completion), groups * n * completion
    if lr.max_tokens_per_micro_batch is not None and lr.max_tokens_per_micro_batch < tokens:
        budget = lr.max_tokens_per_micro_batch
        rows = min(rows, budget)  # at most every token of the budget is a completion token
        tokens = budget
    return tokens, rows, 1


def learner_parts(config: Config, shape: ModelShape, device: str) -> tuple[list[Part], float]:
    """One learner rank's parts, and its peak (what ``memory/learner_peak_gib`` reads) in GiB."""
    lr = config.learner
    bf16 = lr.precision == "bf16" or (lr.precision == "auto" and device == "cuda")
    w = 2 if bf16 else 4
    p, ranks, stage = shape.params, config.placement.learner_gpus, lr.zero_stage
    lora = config.model.lora
    # What the optimizer updates: every weight, or with LoRA the adapters only
    # (the gradients, optimizer states and ZeRO buckets scale with these).
    t = shape.lora_params(lora.r, lora.target_modules) if lora.r > 0 else p
    adapters = t if lora.r > 0 else 0  # weights held beside the base
    parts: list[Part] = []
    if device == "cpu":
        parts.append(Part("process baseline", CPU_PROCESS_BASELINE_GIB, "Python + torch + DeepSpeed + Ray imported"))
    # -- state that lives across the step
    weights = w * (p + adapters) / (ranks if stage == 3 else 1)
    weights_note = f"{p / 1e6:.0f} M params x {w} B" + (f" + LoRA r={lora.r} {t / 1e6:.1f} M" if lora.r > 0 else "")
    parts.append(Part("weights", weights / GIB, weights_note + (f" / {ranks} ranks (ZeRO-3)" if stage == 3 else "")))
    trained = "P" if lora.r == 0 else "P_lora"
    if stage == 0:
        grads = w * t
        grads_note = f"{w} B per trained param, unpartitioned (ZeRO 0)"
    else:
        # The accumulated fp32 gradient partition (bf16 runs accumulate in fp32) plus the reduce bucket.
        bucket = min(t, REDUCE_BUCKET_ELEMENTS) if device == "cpu" else REDUCE_BUCKET_ELEMENTS
        grads = 4 * t / ranks + w * bucket
        grads_note = f"fp32 partition 4 B x {trained} / {ranks} + reduce bucket {bucket / 1e6:.1f} M x {w} B"
    parts.append(Part("gradients", grads / GIB, grads_note))
    if stage == 0:
        optimizer = 2 * w * t  # AdamW m and v in the parameters' dtype, no master copy
        optimizer_note = f"Adam m, v {w} B each, unpartitioned"
    else:
        optimizer = 12 * t / ranks  # fp32 master partition (ZeRO keeps one even in fp32) + fp32 m, v
        optimizer_note = f"fp32 master + m + v = 12 B x {trained} / {ranks} (ZeRO-{stage})"
    parts.append(Part("optimizer states", optimizer / GIB, optimizer_note))
    if config.grpo.beta > 0 and lora.r == 0:  # with LoRA the reference is the base with its adapters off
        parts.append(Part("reference model", w * p / GIB, f"beta={config.grpo.beta:g}: a frozen copy, {w} B per param"))
    # -- the micro-batch's working set (freed after each micro-batch)
    tokens, rows, seqs = micro_batch_tokens(config)
    h, v = shape.hidden, shape.vocab
    chunk = min(lr.logprob_chunk_rows, rows)
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    # What autograd saves per token in one HF Llama/Qwen2 layer: two RMS norms
    # (input, fp32 rsqrt, output: 3h each), q and k before and after RoPE, v,
    # k and v repeated to every query head, the attention output, and the
    # gated MLP's gate, up, SiLU and product (4 x intermediate).
    per_layer_saved = 6 * h + 2 * (q + kv) + kv + 2 * q + q + 4 * shape.intermediate
    if lr.gradient_checkpointing:
        # Each layer's input is saved; the backward recomputes one layer at a time.
        saved = tokens * w * (shape.layers * h + per_layer_saved)
        act_note = f"checkpointed: {shape.layers} layer inputs + one layer, T={tokens}"
    else:
        saved = tokens * w * shape.layers * per_layer_saved
        act_note = f"all {shape.layers} layers' activations, T={tokens}"
    if lr.packing == "shared_prefix":
        saved += tokens * tokens  # the [1, 1, T, T] boolean attention mask
    if device == "cpu":
        # CPU SDPA with a mask runs the fused flash kernel (torch 2.13:
        # ScaledDotProductFlashAttentionForCpuBackward), which saves no
        # [rows, heads, len, len] scores; the bool mask it is given becomes an
        # additive float mask, [rows, 1, len, len] x w, saved by each layer
        # (by the one recomputed layer when checkpointed). (Until 2026-11-26 the
        # plan counted the math path's scores and softmax here: 2.1 GiB too much
        # for the packed quickstart row, measured.)
        length = tokens // seqs
        float_mask = seqs * length * length * w
        saved += float_mask * (1 if lr.gradient_checkpointing else shape.layers)
    logits = rows * v * w  # kept through the backward (log-prob chunks read views of it)
    logits_grad = 2 * rows * v * w  # the gradient of the logits, and its accumulation over chunks
    chunk_fwd = 3 * chunk * v * 4  # entropy: fp32 upcast, log_softmax, exp (no grad)
    chunk_bwd = 2 * chunk * v * 4  # a log-prob chunk's fp32 upcast and softmax in the backward
    forward_logits = chunk_fwd
    if lr.packing == "padded":
        # ``logits[:, :-1]`` of [S, C + 1, V] cannot be viewed as [S C, V]: the
        # log-prob and the entropy reshapes each copy it (checked), so while the
        # entropy runs the model's logits and both copies are held (the log-prob
        # copy then replaces the original through the backward). The packed row's
        # ``logits[0]`` is a view: no copy.
        forward_logits += 2 * logits
    activation = saved + logits + max(forward_logits, logits_grad + chunk_bwd)
    parts.append(Part("activations", saved / GIB, act_note + ("" if seqs == 1 else f", {seqs} rows")))
    parts.append(
        Part("logits + their gradient", (logits + logits_grad) / GIB, f"R={rows} completion rows x V={v} x {w} B, x3")
    )
    parts.append(
        Part("log-prob chunks", max(chunk_fwd, chunk_bwd) / GIB, f"fp32, logprob_chunk_rows={lr.logprob_chunk_rows}")
    )
    if device == "cpu":
        # Measured, not yet traced to its allocations: every CPU learner peaks about
        # 2 w P above the parts above (quickstart, 2026-11-26: +1.0 to +1.5 GiB over
        # padded/packed, with/without checkpointing and reference; docs/memory-plan.md),
        # the size of two more gradient copies in the training dtype (the params' .grad
        # that autograd fills before ZeRO's hooks reduce it, and one more in the
        # reduction, is the likely account). Inserted before the working set so it
        # counts as state that stays.
        parts.insert(
            len(parts) - 3,
            Part(
                "CPU gradient copies (measured)",
                CPU_EXTRA_GRAD_COPIES * w * t / GIB,
                f"{CPU_EXTRA_GRAD_COPIES} x {w} B x {trained}, measured on CPU",
            ),
        )
    static = sum(part.gib for part in parts[: len(parts) - 3]) * GIB
    step_transient = 4 * t / (1 if stage == 0 else ranks)  # AdamW's foreach temporaries at the optimizer step
    peak = static + max(activation, step_transient)
    return parts, peak / GIB


def resident_between_updates(parts: Sequence[Part]) -> float:
    """What the learner keeps on its GPU while vLLM generates: everything but the micro-batch's working set."""
    transient = {"activations", "logits + their gradient", "log-prob chunks"}
    return sum(part.gib for part in parts if part.name not in transient)


def rollout_parts(config: Config, shape: ModelShape, gpu_gib: float) -> tuple[list[Part], KvCache]:
    """One vLLM engine at ``gpu_memory_utilization`` of the GPU: weights, profiling peak, CUDA graphs, KV cache."""
    r = config.rollout
    w = 4 if config.model.dtype == "float32" else 2
    reserved = r.gpu_memory_utilization * gpu_gib * GIB
    gpus_per_engine = config.placement.rollout_gpus if config.placement.layout == "separate" else 1
    weights = w * shape.params / gpus_per_engine
    profile = (
        VLLM_MAX_BATCHED_TOKENS * w * (4 * shape.hidden + 2 * shape.intermediate) + VLLM_MAX_NUM_SEQS * shape.vocab * 4
    )
    graphs = 0.0 if r.enforce_eager else VLLM_CUDA_GRAPHS_GIB * GIB
    kv = max(0.0, reserved - weights - profile - graphs)
    per_token = shape.kv_bytes_per_token(w) / gpus_per_engine
    needed = math.ceil(
        config.learner.prompts_per_step * r.n * (config.data.max_prompt_tokens + r.max_tokens) / r.num_engines
    )
    cache = KvCache(kv / GIB, int(kv // per_token), needed)
    parts = [
        Part(
            "vLLM weights",
            weights / GIB,
            f"{w} B per param" + (f" / {gpus_per_engine} (tensor parallel)" if gpus_per_engine > 1 else ""),
        ),
        Part(
            "vLLM activations (profile)",
            profile / GIB,
            f"{VLLM_MAX_BATCHED_TOKENS} tokens + sampler logits of {VLLM_MAX_NUM_SEQS} sequences",
        ),
        Part("vLLM CUDA graphs", graphs / GIB, "enforce_eager: none" if r.enforce_eager else "captured decode graphs"),
        Part(
            "vLLM KV cache",
            kv / GIB,
            f"the rest of gpu_memory_utilization={r.gpu_memory_utilization:g} x {gpu_gib:g} GiB; {cache.capacity_tokens} tokens",
        ),
    ]
    return parts, cache


def plan_memory(config: Config, shape: ModelShape, gpu_gib: float, device: str = "cuda") -> MemoryPlan:
    """The per-GPU plan of ``config`` on GPUs of ``gpu_gib`` (on ``device="cpu"``: the learner process's RSS)."""
    l_parts, l_peak = learner_parts(config, shape, device)
    if device == "cpu":
        cpu = GpuPlan("learner process (CPU, RSS)", l_parts, l_peak, gpu_gib, {"update": l_peak})
        return MemoryPlan([cpu], l_peak, None)
    r_parts, kv = rollout_parts(config, shape, gpu_gib)
    vllm_awake = sum(part.gib for part in r_parts)
    notes = []
    if kv.capacity_tokens <= 0:
        notes.append("vLLM has no room left for a KV cache at this gpu_memory_utilization: it would not start")
    elif kv.waves > 1:
        notes.append(
            f"generation runs in {kv.waves} waves: a step needs {kv.needed_tokens} KV tokens per engine, the cache holds {kv.capacity_tokens}"
        )
    ctx = Part("CUDA context", CUDA_CONTEXT_GIB, "per process, outside torch's allocator")
    if config.placement.layout == "separate":
        learner = GpuPlan(
            f"learner GPU x{config.placement.learner_gpus}",
            [*l_parts, ctx],
            l_peak + CUDA_CONTEXT_GIB,
            gpu_gib,
            {"update": l_peak + CUDA_CONTEXT_GIB},
        )
        rollout = GpuPlan(
            f"rollout GPU x{config.placement.rollout_gpus * config.rollout.num_engines}",
            [*r_parts, ctx],
            vllm_awake + CUDA_CONTEXT_GIB,
            gpu_gib,
            {"generate": vllm_awake + CUDA_CONTEXT_GIB},
        )
        return MemoryPlan([learner, rollout], l_peak, kv, notes)
    # Colocated: vLLM generates while the learner's state stays resident; then the learner updates beside a sleeping (or awake) vLLM.
    vllm_during_update = VLLM_ASLEEP_GIB if config.rollout.sleep_during_update else vllm_awake
    generate = vllm_awake + resident_between_updates(l_parts) + 2 * CUDA_CONTEXT_GIB
    update = l_peak + vllm_during_update + 2 * CUDA_CONTEXT_GIB
    asleep = (
        Part("vLLM asleep (during the update)", VLLM_ASLEEP_GIB, "context + CUDA graphs kept by sleep level 1")
        if config.rollout.sleep_during_update
        else None
    )
    parts = [
        *l_parts,
        *r_parts,
        *([asleep] if asleep else []),
        Part("CUDA contexts", 2 * CUDA_CONTEXT_GIB, "learner + vLLM"),
    ]
    shared = GpuPlan(
        f"shared GPU x{config.placement.learner_gpus} (learner + vLLM)",
        parts,
        max(generate, update),
        gpu_gib,
        {"generate": generate, "update": update},
    )
    return MemoryPlan([shared], l_peak, kv, notes)


# ---------------------------------------------------------------------------
# The smallest change that fits

Reload = Callable[[Sequence[str]], Config]


def candidate_changes(config: Config) -> list[list[str]]:
    """Single overrides to try, cheapest first (each keeps the algorithm; only memory and speed change)."""
    lr, r = config.learner, config.rollout
    out: list[list[str]] = []
    if not lr.gradient_checkpointing:
        out.append(["learner.gradient_checkpointing=true"])
    mbp = lr.micro_batch_prompts
    while mbp > 1:
        mbp //= 2
        if lr.prompts_per_step % mbp == 0:
            out.append([f"learner.micro_batch_prompts={mbp}"])
    tokens, _, _ = micro_batch_tokens(config)
    budget = 8192
    while budget >= 512:
        if budget < tokens:
            out.append([f"learner.max_tokens_per_micro_batch={budget}"])
        budget //= 2
    if lr.logprob_chunk_rows > 256:
        out.append([f"learner.logprob_chunk_rows={max(256, lr.logprob_chunk_rows // 4)}"])
    if config.placement.layout == "colocate":
        for share in (0.25, 0.2, 0.15, 0.1):
            if share < r.gpu_memory_utilization:
                out.append([f"rollout.gpu_memory_utilization={share:g}"])
    for gpus in (2, 4, 8):
        if gpus > config.placement.learner_gpus:
            for stage in (2, 3):
                if stage >= lr.zero_stage:
                    out.append([f"placement.learner_gpus={gpus}", f"learner.zero_stage={stage}"])
    return out


def smallest_fix(
    config: Config, gpu_gib: float, reload: Reload, shape: ModelShape, device: str = "cuda"
) -> list[str] | None:
    """The first override set (a single change, else changes stacked in order) that makes the plan fit; None if none does.

    ``reload(overrides)`` is the config with extra overrides (so the config's
    own checks run on each candidate); a candidate it refuses is skipped.
    """
    kv = plan_memory(config, shape, gpu_gib, device).kv
    waves = max(1, kv.waves if kv else 1)  # a change may not make generation take more rounds

    def fits_with(overrides: Sequence[str]) -> bool | None:
        try:
            changed = reload(overrides)
        except AharlError:
            return None  # refused by the config's own checks
        plan = plan_memory(changed, shape, gpu_gib, device)
        return plan.fits and (plan.kv is None or plan.kv.waves <= waves)

    for change in candidate_changes(config):
        if fits_with(change):
            return change
    stacked: list[str] = []
    for change in candidate_changes(config):
        keys = {item.split("=")[0] for item in change}
        trial = [item for item in stacked if item.split("=")[0] not in keys] + change
        verdict = fits_with(trial)
        if verdict is None:
            continue
        stacked = trial
        if verdict:
            return stacked
    return None


def plan_with_fix(config: Config, gpu_gib: float, reload: Reload, device: str = "cuda") -> MemoryPlan:
    """The plan, and when it does not fit, the smallest change that makes it fit."""
    shape = model_shape(config.model.path)
    plan = plan_memory(config, shape, gpu_gib, device)
    if not plan.fits:
        plan.fix = smallest_fix(copy.deepcopy(config), gpu_gib, reload, shape, device)
    return plan


def refusal(plan: MemoryPlan) -> str:
    """The one line ``aharl train`` and ``aharl plan`` print for a config that does not fit."""
    worst = min(plan.gpus, key=lambda gpu: gpu.headroom_gib)
    fix = f"try {' '.join(plan.fix)}" if plan.fix else "no single change found: use a smaller model or a larger GPU"
    return (
        f"the run does not fit: the {worst.label} needs {worst.peak_gib:.1f} GiB of {worst.capacity_gib:g} GiB "
        f"(usable {worst.usable_gib:.1f}); {fix} (`aharl plan` shows every part)"
    )
