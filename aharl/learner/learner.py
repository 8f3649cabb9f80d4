"""The learner: a DeepSpeed engine that turns micro-batches into one GRPO update.

This class knows nothing of Ray; :mod:`aharl.runtime.cluster` runs it as a Ray
actor (one per data-parallel rank). It owns the policy, the optional frozen
reference, the optimizer and the LR schedule, and it hands its weights out
for the rollout engine (files, CUDA IPC or NCCL, see :mod:`aharl.sync`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from aharl import faults
from aharl.config import Config
from aharl.device import resolve_device, training_dtype
from aharl.errors import ConfigError
from aharl.grpo.batch import MicroBatch, pad_sequences
from aharl.grpo.loss import BatchCounts, LossSettings
from aharl.learner import lora
from aharl.learner.forward import completion_logprobs, supports_shared_prefix
from aharl.modelhub import resolve_model_path
from aharl.rng import restore_rng_state, rng_state
from aharl.sync import cuda_ipc, nccl, shm
from aharl.sync.buckets import plan_buckets
from aharl.types import SyncGap

CHECKPOINT_TAG = "state"


def deepspeed_config(config: Config, dtype: torch.dtype, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for this run; DeepSpeed does accumulation, clipping and ZeRO."""
    micro = config.learner.micro_batch_prompts * config.rollout.n
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": config.grad_accum_steps // world_size,
        "train_batch_size": micro * (config.grad_accum_steps // world_size) * world_size,
        "gradient_clipping": config.learner.max_grad_norm,
        "zero_optimization": {"stage": config.learner.zero_stage},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if dtype == torch.bfloat16 and config.learner.zero_stage >= 1:
        # Sum the micro-batches' gradients in fp32: bf16 keeps 8 bits of
        # mantissa, so accumulating many small per-micro-batch gradients in it
        # drops their low bits. ZeRO 1-3 take this (stage 0 with bf16 does not).
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds


def peak_memory_gib(device: str) -> float:
    """The learner's peak memory: this step's allocator peak on a GPU, the process's resident peak so far on CPU.

    What a memory plan is checked against; on CPU it is the lifetime high-water mark (``ru_maxrss``).
    """
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def loss_settings(config: Config) -> LossSettings:
    """The loss's fixed choices for this run, from ``grpo.*`` (and ``rollout.max_tokens`` for Dr. GRPO's divisor)."""
    g = config.grpo
    return LossSettings(
        beta=g.beta,
        clip_eps_low=g.clip_eps_low,
        clip_eps_high=g.clip_eps_high,
        aggregation=g.loss_aggregation,
        max_completion_tokens=config.rollout.max_tokens,
        ratio_level=g.importance_sampling_level,
        rollout_correction=g.rollout_correction,
        rollout_correction_cap=g.rollout_correction_cap,
    )


def add_sync_gap(gap: SyncGap, logp: torch.Tensor, mb: MicroBatch) -> None:
    """Add |learner ``logp`` ``[S, C]`` - the engine's sampling log-probs| of one micro-batch to ``gap``, per engine."""
    mask = mb.completion_mask
    diffs = ((logp - mb.rollout_logp).abs() * mask).sum(dim=1)  # [S]
    engines = mb.engine.tolist() if mb.engine.numel() else [0] * len(diffs)
    for engine, diff, tokens in zip(engines, diffs.tolist(), mask.sum(dim=1).tolist()):
        gap.add(engine, diff, tokens)


class TokenMeans:
    """The loss metrics of an update's micro-batches: the loss adds up (each is a share), the rest are token means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, float]) -> None:
        tokens = metrics.pop("tokens")
        for key, value in metrics.items():
            w = 1.0 if key == "loss" else tokens
            self.sums[key] = self.sums.get(key, 0.0) + value * w
            self.weights[key] = self.weights.get(key, 0.0) + w

    def result(self, updates: int) -> dict[str, float]:
        """``updates``: optimizer steps over the same batch; the loss is their mean."""
        return {key: total / (updates if key == "loss" else self.weights[key]) for key, total in self.sums.items()}


@dataclass
class UpdateOutcome:
    """What an update reports: its metrics, and its sync gap as raw sums (ranks pool by adding; the step names it)."""

    metrics: dict[str, float]
    gap: SyncGap


# DeepSpeed's name for its CPU shared-memory all-reduce op (``ShareMemCommBuilder.NAME``).
CPU_SHM_COMM_OP = "deepspeed_shm_comm"


def drop_nonfinite_gradients(model: torch.nn.Module) -> bool:
    """ZeRO stage 0 has no overflow check: drop every gradient when any is non-finite, so the step changes nothing.

    (At stages 1-3 DeepSpeed itself skips a step whose gradient norm is not
    finite; ``engine.was_step_applied()`` tells.) Returns whether it dropped them.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if all(torch.isfinite(g).all() for g in grads):
        return False
    for p in model.parameters():
        p.grad = None
    return True


def skip_cpu_shm_comm_build() -> None:
    """Let DeepSpeed's CPU backend all-reduce through gloo instead of JIT-compiling its shared-memory op.

    ``deepspeed.init_distributed`` on the CPU accelerator compiles that op with
    ninja on first use (about 40 s on two cores) under a lock file in
    ``~/.cache/torch_extensions``. A run stopped during the build leaves the
    lock behind, and torch's build waits on it with no deadline: every later
    learner on the machine then hangs in ``init_distributed``. The op only
    speeds up multi-rank CPU all-reduces, and aharl's CPU path is for
    development and CI, so gloo is the right trade. DeepSpeed reads the
    cached compatibility table before building (``build_shm_op``) and keeps
    edits to it.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[CPU_SHM_COMM_OP] = False


class Learner:
    """One data-parallel rank of the policy update."""

    def __init__(
        self,
        config: Config,
        total_steps: int,
        rank: int = 0,
        world_size: int = 1,
        master_port: int = 29500,
        master_address: str = "127.0.0.1",
    ) -> None:
        """``master_address``/``master_port``: where DeepSpeed's group meets (rank 0's node; :mod:`aharl.runtime.rendezvous`)."""
        import transformers

        # Loading and every checkpoint's export would each draw a progress bar
        # through Ray's log stream, between the driver's one-line-per-step log.
        transformers.utils.logging.disable_progress_bar()
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.device = resolve_device(config)
        self.dtype = training_dtype(config, self.device)
        self.loss = loss_settings(config)
        self._join_group(master_address, master_port)
        torch.manual_seed(config.learner.seed)
        model = self._load_models()
        optimizer, scheduler = self._optimizer_and_schedule(model, total_steps)
        self._start_engine(model, optimizer, scheduler)

    def _join_group(self, master_address: str, master_port: int) -> None:
        """Join the ranks' process group (NCCL on a GPU, gloo on CPU)."""
        import deepspeed

        if self.device == "cpu":
            # Generation and the update take turns, so the update may use every
            # core; ranks update at the same time, so they divide the cores.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world_size))
        os.environ.update(
            {
                "RANK": str(self.rank),
                "LOCAL_RANK": "0",
                "WORLD_SIZE": str(self.world_size),
                "MASTER_ADDR": master_address,
                "MASTER_PORT": str(master_port),
            }
        )
        if self.device == "cpu":
            skip_cpu_shm_comm_build()
            nccl.pin_gloo_interface(master_address)  # ranks on several nodes: gloo must announce a reachable address
        deepspeed.init_distributed(dist_backend="nccl" if self.device == "cuda" else "gloo", verbose=False)

    def _load_models(self) -> torch.nn.Module:
        """The policy (LoRA-wrapped when ``model.lora.r`` > 0) and, for a KL term without LoRA, the frozen reference."""
        from transformers import AutoModelForCausalLM

        config = self.config
        path = resolve_model_path(config.model.path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
        model.config.use_cache = False
        if config.learner.packing == "shared_prefix" and not supports_shared_prefix(model):
            raise ConfigError(
                "learner.packing",
                f"= shared_prefix needs an attention that takes a 4D mask, not {model.config._attn_implementation}",
                "set learner.packing=padded",
            )
        if config.learner.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lora = config.model.lora.r > 0
        if self.lora:
            model = lora.wrap(model, config.model.lora)
        self.reference = None
        if config.grpo.beta > 0 and not self.lora:  # with LoRA the reference is the base: the adapters switched off
            self.reference = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
            self.reference.requires_grad_(False)
        return model

    def _optimizer_and_schedule(self, model: torch.nn.Module, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
        """AdamW with the HF Trainer's grouping (no weight decay on biases and norm weights) and its LR schedule."""
        from transformers import get_scheduler

        lr = self.config.learner
        trainable = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in trainable if p.ndim >= 2]
        no_decay = [p for p in trainable if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": lr.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(
            # DeepSpeed drops an empty group (LoRA has no 1-D weights), which would leave the scheduler one group too many.
            [group for group in groups if group["params"]],
            lr=lr.lr,
            betas=lr.betas,
        )
        optimizer_steps = total_steps * self.config.grpo.updates_per_batch
        scheduler = get_scheduler(
            lr.lr_scheduler,
            optimizer,
            num_warmup_steps=math.ceil(optimizer_steps * lr.warmup_ratio),
            num_training_steps=optimizer_steps,
        )
        return optimizer, scheduler

    def _start_engine(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """DeepSpeed's engine around the policy: accumulation, clipping, ZeRO."""
        import deepspeed

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(self.config, self.dtype, self.world_size),
        )
        # from_pretrained returns the model in eval mode, and HF checkpoints a
        # layer's activations only in training mode: without this,
        # gradient_checkpointing would be configured but never in effect.
        self.engine.train()
        # With LoRA, each base weight under its plain name and the adapter that merges into it
        # (the module tree is fixed from here on, so every sync reuses this list).
        self._lora_weights = list(lora.base_parameters(self.engine.module)) if self.lora else []
        self._ipc_buffers: list[Any] = []  # packed buckets the rollout worker may still be reading
        self._broadcast: nccl.Group | None = None

    # ------------------------------------------------------------------
    # Log-probs

    def _policy_logp(
        self, model: torch.nn.Module, mb: MicroBatch, entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs ``[S, C]`` of the completion tokens and, if asked, the entropy ``[S, C]`` (:mod:`aharl.learner.forward`)."""
        return completion_logprobs(model, mb, self.config.learner.logprob_chunk_rows, entropy)

    def _reference_logp(self, mb: MicroBatch) -> torch.Tensor | None:
        """The KL reference's log-probs ``[S, C]``: the frozen copy, or with LoRA the policy with its adapters off; None without a KL term."""
        if self.reference is not None:
            return self._policy_logp(self.reference, mb)[0]
        if self.lora and self.config.grpo.beta > 0:
            with self.engine.module.disable_adapter():
                return self._policy_logp(self.engine.module, mb)[0]
        return None

    @torch.no_grad()
    def completion_logprobs(
        self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]]
    ) -> list[list[float]]:
        """The current policy's log-probs for given completions (to compare with the rollout engine)."""
        ids, attention, positions, comp, mask = pad_sequences(prompt_ids, completion_ids, pad_id=0)
        zeros = torch.zeros(len(prompt_ids))
        mb = MicroBatch(ids, attention, positions, comp, mask, torch.zeros(comp.shape), zeros).to(self.device)
        self.engine.eval()
        logp, _ = self._policy_logp(self.engine.module, mb)
        self.engine.train()
        return [row[: len(c)].tolist() for row, c in zip(logp.float().cpu(), completion_ids)]

    # ------------------------------------------------------------------
    # The update

    def train_step(self, micro_batches: Sequence[MicroBatch], num_sequences: int, num_tokens: float) -> UpdateOutcome:
        """One GRPO update (``updates_per_batch`` optimizer steps) over this rank's micro-batches.

        ``num_sequences`` / ``num_tokens`` are counts over the whole optimizer
        step on all ranks, so the loss of each micro-batch is its exact share
        of the full-batch loss (see :mod:`aharl.grpo.loss`).
        """
        faults.reached("learner.train_step")
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        batches = [mb.to(self.device) for mb in micro_batches]
        counts = BatchCounts(num_sequences, num_tokens, len(batches) * self.world_size)
        started = time.perf_counter()
        with torch.no_grad():
            ref_logps = [self._reference_logp(mb) for mb in batches]
        timings = {"time/reference": time.perf_counter() - started}

        started = time.perf_counter()
        updates = self.config.grpo.updates_per_batch
        old_logps: list[torch.Tensor | None] = [None] * len(batches)
        gap = SyncGap()
        means = TokenMeans()
        skipped = 0  # optimizer steps skipped for a non-finite loss or gradient norm
        for update in range(updates):
            for i, mb in enumerate(batches):
                logp, entropy = self._policy_logp(self.engine, mb, entropy=True)
                if update == 0:
                    # Before any update this is the policy that sampled: it must
                    # equal the rollout engine's log-probs if the last sync worked.
                    add_sync_gap(gap, logp.detach(), mb)
                    if updates > 1:
                        old_logps[i] = logp.detach()
                metrics, was_skipped = self._micro_step(
                    mb, logp, entropy, old_logps[i], ref_logps[i], counts, last=i == len(batches) - 1
                )
                skipped += was_skipped
                means.add(metrics)
        timings["time/train"] = time.perf_counter() - started
        return self._outcome(means.result(updates), gap, skipped, timings)

    def _micro_step(
        self,
        mb: MicroBatch,
        logp: torch.Tensor,
        entropy: torch.Tensor | None,
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
        counts: BatchCounts,
        last: bool,
    ) -> tuple[dict[str, float], bool]:
        """Loss, backward and DeepSpeed's step for one micro-batch (``logp``/``entropy`` ``[S, C]``, with gradient).

        Returns the micro-batch's loss metrics and whether it ended an
        optimizer step that was skipped (a non-finite loss or gradient norm).
        """
        # A token budget makes the count of micro-batches vary by step,
        # so the last one, not DeepSpeed's fixed count, ends the accumulation.
        self.engine.set_gradient_accumulation_boundary(last)
        mask = mb.completion_mask
        # The sampling policy's log-probs by the learner's numbers: what the ratio is taken against.
        sampler_logp = old_logp if old_logp is not None else logp.detach()
        is_weights, correction = self.loss.correction(sampler_logp, mb.rollout_logp, mask)
        out = self.loss(
            logp,
            mb.advantages,
            mask,
            old_logp=old_logp,
            ref_logp=ref_logp,
            entropy=entropy,
            is_weights=is_weights,
            counts=counts,
        )
        out.metrics.update(correction)
        loss = out.loss
        if faults.reached("learner.loss") == "nan":  # a test's injected fault
            loss = loss * float("nan")
            out.metrics["loss"] = float("nan")
        # DeepSpeed divides each micro-batch loss by its accumulation count;
        # the losses here are already shares of the full batch, so undo that.
        self.engine.backward(loss * self.engine.gradient_accumulation_steps() * self.world_size)
        boundary = self.engine.is_gradient_accumulation_boundary()
        dropped = boundary and self.config.learner.zero_stage == 0 and drop_nonfinite_gradients(self.engine.module)
        self.engine.step()
        return out.metrics, boundary and (dropped or not self.engine.was_step_applied())

    def _outcome(
        self, metrics: dict[str, float], gap: SyncGap, skipped: int, timings: dict[str, float]
    ) -> UpdateOutcome:
        """The update's metrics beside the loss's (gradient norm, LR, skips, times, memory), and this rank's sync gap."""
        grad_norm = self.engine.get_global_grad_norm()
        metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["train/update_skipped"] = float(skipped)
        metrics.update(timings)
        metrics["memory/learner_peak_gib"] = peak_memory_gib(self.device)
        if self.device == "cuda":
            # Hand the activations' cached blocks back: a colocated vLLM wakes its
            # KV cache next and sizes nothing below what it had (OOM on 24 GB).
            torch.cuda.empty_cache()
        return UpdateOutcome(metrics, gap)

    # ------------------------------------------------------------------
    # Weights out

    def named_weights(self, only: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (gathered) parameters under their HF names; tied weights once. ``only``: just these names (one bucket).

        With LoRA these are the base model's weights with the adapters merged
        in (:mod:`aharl.learner.lora`): what the rollout engine and an export take.
        """
        import deepspeed

        module = self.engine.module
        if self.lora:  # ZeRO-3 is refused with LoRA (config), so nothing to gather
            for name, param, layer in self._lora_weights:
                if only is None or name in only:
                    yield name, lora.merged(param, layer)
            return
        for name, param in module.named_parameters():
            if only is not None and name not in only:
                continue
            if self.config.learner.zero_stage == 3:
                with deepspeed.zero.GatheredParameters([param]):
                    yield name, param.data.detach().clone()
            else:
                yield name, param.data.detach()

    def full_shapes(self) -> list[tuple[str, torch.dtype, torch.Size]]:
        """Each parameter's full (gathered) shape; under ZeRO-3 a rank holds a ``[0]`` placeholder and the shape is ``ds_shape``."""
        if self.lora:
            return [(name, p.dtype, p.shape) for name, p, _ in self._lora_weights]
        return [(name, p.dtype, getattr(p, "ds_shape", p.shape)) for name, p in self.engine.module.named_parameters()]

    def weight_buckets(self) -> list[list[str]]:
        sizes = [(name, shape.numel() * dtype.itemsize) for name, dtype, shape in self.full_shapes()]
        return plan_buckets(sizes, self.config.sync.bucket_mb * 2**20)

    def export_weight_files(self, directory: str) -> list[str]:
        """Sender side of :mod:`aharl.sync.shm`: the weights as bucket files under ``directory``."""
        weights = list(self.named_weights())  # every rank gathers (ZeRO-3); rank 0 writes
        if self.rank != 0:
            return []
        return shm.send(weights, self.weight_buckets(), directory)

    def export_cuda_ipc_bucket(self, index: int, serve: bool = False) -> dict[str, Any]:
        """Sender side of :mod:`aharl.sync.cuda_ipc` (on CPU, its shared-memory twin): bucket ``index``'s handle.

        Every rank gathers the bucket (collective under ZeRO-3); rank 0 and a
        rank with ``serve`` (a colocated engine on its GPU) pack it. The
        buffer is kept until :meth:`release_cuda_ipc`.
        """
        selected = list(self.named_weights(set(self.weight_buckets()[index])))
        if self.rank != 0 and not serve:
            return {}
        buffer, handle = cuda_ipc.send(selected, shm.shared_memory_dir())
        self._ipc_buffers.append(buffer)
        return handle

    def release_cuda_ipc(self) -> None:
        buffers, self._ipc_buffers = self._ipc_buffers, []
        cuda_ipc.release(buffers)

    def init_nccl(self, master_address: str, master_port: int, world_size: int) -> None:
        """Sender side of :mod:`aharl.sync.nccl` (gloo on CPU): rank 0 joins the broadcast group with the rollout workers."""
        if self.rank == 0:
            device = torch.cuda.current_device() if self.device == "cuda" else "cpu"
            self._broadcast = nccl.Group(master_address, master_port, 0, world_size, device)

    def weight_meta(self) -> list[nccl.WeightMeta]:
        return nccl.meta_of(self.full_shapes())

    def broadcast_weights(self) -> int:
        weights = self.named_weights()
        if self.rank != 0:
            for _ in weights:  # the other ranks still take part in ZeRO-3's gathers
                pass
            return 0
        return nccl.send(self._broadcast, weights)

    def export_hf(self, directory: str) -> str | None:
        """Write the policy as a Hugging Face directory (safetensors + config), atomically.

        Every rank takes part (ZeRO-3 gathers); rank 0 writes into a temporary
        directory and renames it, so a crash mid-write never leaves a half directory.
        With LoRA the directory holds the merged model (loadable as is) and,
        under ``adapter/``, the adapter alone for PEFT (``PeftModel.from_pretrained``).
        """
        import shutil
        import tempfile

        state = {name: tensor.to("cpu") for name, tensor in self.named_weights()}
        if self.rank != 0:
            return None
        target = os.path.abspath(directory)
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
        try:
            # With LoRA the transformers model under PEFT's wrapper writes the merged state as a plain model.
            plain = self.engine.module.get_base_model() if self.lora else self.engine.module
            plain.save_pretrained(staging, state_dict=state)
            if self.lora:
                self.engine.module.save_pretrained(os.path.join(staging, lora.ADAPTER_DIR))
            os.chmod(staging, 0o755)  # mkdtemp makes it private; the export is for others to read
            if os.path.exists(target):
                shutil.rmtree(target)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    # ------------------------------------------------------------------
    # Checkpoints

    def save_state(self, directory: str) -> None:
        """DeepSpeed's checkpoint (weights, optimizer, scheduler) plus this rank's RNG states.

        Every rank calls this with the same ``directory`` (a filesystem all
        ranks share); each writes its own ZeRO shard. With LoRA the module
        state is the adapters only: the frozen base is the model path's, and
        a checkpoint of a 7B base stays megabytes.
        """
        with lora.adapters_only_state(self.engine.module) if self.lora else contextlib.nullcontext():
            self.engine.save_checkpoint(
                directory,
                tag=CHECKPOINT_TAG,
                client_state={"rng": rng_state()},
                save_latest=False,
                exclude_frozen_parameters=self.lora,
            )

    def load_state(self, directory: str) -> None:
        # The adapters-only module state leaves the base's keys missing, by design.
        path, client_state = self.engine.load_checkpoint(
            directory, tag=CHECKPOINT_TAG, load_module_strict=not self.lora
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}/{CHECKPOINT_TAG}")
        rng = (client_state or {}).get("rng")
        if rng is not None:
            restore_rng_state(rng)

    def parameter_checksum(self) -> float:
        with torch.no_grad():
            return float(sum(t.double().abs().sum().item() for _, t in self.named_weights()))
