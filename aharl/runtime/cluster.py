"""The Ray side of a run: the placement group, the rollout and learner actors, the sync.

The driver loop (:mod:`aharl.trainer.loop`) calls the plain methods here and
never touches Ray itself; where each actor runs is decided in
:func:`aharl.runtime.placement.plan_layout` and visible below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from aharl.config import Config
from aharl.errors import AharlError
from aharl.runtime.logs import logged_actor
from aharl.runtime.placement import ActorSlot, plan_layout
from aharl.rollout.engine import SamplingSettings, engine_class
from aharl.rollout.vllm_engine import rollout_workers
from aharl.runtime.rendezvous import rendezvous
from aharl.runtime.topology import Topology, choose_sync, probe_topology
from aharl.runtime.weight_sync import TRANSPORTS, wait_for
from aharl.grpo.batch import MicroBatch
from aharl.learner.learner import Learner
from aharl.types import Prompt, RolloutGroup

PLACEMENT_TIMEOUT_S = 120


def rollout_env() -> dict[str, str]:
    """Environment of the rollout actor: vLLM logs warnings and errors only, unless the user chose a level.

    At INFO vLLM prints two lines per weight sync (reload time, prefix-cache
    reset), which buries the one line per step that aharl prints;
    ``VLLM_LOGGING_LEVEL=INFO aharl train ...`` brings them back.
    """
    return {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}


def probe_gpus(config: Config, timeout_s: float = 180) -> Topology:
    """:func:`probe_topology` in a task holding one GPU (two for the separate layout, where the cluster has them).

    It runs before the placement group takes the GPUs; a cluster that cannot
    run it in time gives "unknown", and the defaults apply.
    """
    gpus = 2 if config.placement.layout == "separate" and ray.cluster_resources().get("GPU", 0) >= 2 else 1
    probe = ray.remote(num_cpus=0, num_gpus=gpus)(probe_topology)
    try:
        return ray.get(probe.remote(), timeout=timeout_s)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError):
        return Topology()


class Cluster:
    def __init__(self, config: Config, device: str, total_steps: int, run_id: str, log_dir: Path | None = None) -> None:
        """``log_dir``: where the actors' output goes (:mod:`aharl.runtime.logs`); ``None`` streams it to the driver."""
        self.config = config
        self.log_dir = log_dir
        self.layout = plan_layout(config, device)
        self.topology = probe_gpus(config) if device == "cuda" else Topology()
        self.sync_choice = choose_sync(config, device, self.topology)
        self.pg = placement_group(self.layout.bundles, strategy=self.layout.strategy)
        ready, _ = ray.wait([self.pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            raise AharlError(
                f"the cluster cannot place {self.layout.bundles} within {PLACEMENT_TIMEOUT_S}s "
                f"(it has {ray.cluster_resources()}); lower placement.learner_gpus / rollout_gpus or use placement.layout=colocate"
            )
        # The rollout engine starts first: on a shared GPU vLLM sizes its
        # KV cache from the free memory it sees.
        env = self.sync_choice.env
        self.rollout = self._place(engine_class(config.rollout.backend), self.layout.rollout, "rollout", {**rollout_env(), **env}).remote(config, device)
        ray.get(self.rollout.parameter_checksum.remote())
        # DeepSpeed's group meets at learner rank 0's node.
        learner_bundles = [slot.bundle_index for slot in self.layout.learners]
        address, port = rendezvous(self.pg, learner_bundles[0], learner_bundles, PLACEMENT_TIMEOUT_S)
        world = len(self.layout.learners)
        self.learners = [
            self._place(Learner, slot, f"learner-{rank}", env).remote(config, total_steps, rank, world, port, address)
            for rank, slot in enumerate(self.layout.learners)
        ]
        ray.get([learner.parameter_checksum.remote() for learner in self.learners])

        def meet() -> tuple[str, int]:
            """The weight broadcast's group (nccl) meets at learner rank 0's node too: rank 0 hosts it."""
            return rendezvous(self.pg, learner_bundles[0], [self.layout.rollout.bundle_index], config.sync.timeout_s)

        self.sync = TRANSPORTS[self.sync_choice.method](
            self.learners, self.rollout, run_id, config.sync.timeout_s, rollout_workers(config, device), meet
        )

    def _place(self, cls, slot: ActorSlot, role: str, env_vars: dict[str, str] | None = None):
        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=slot.bundle_index)
        options = {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus, "scheduling_strategy": strategy}
        if env_vars:
            options["runtime_env"] = {"env_vars": env_vars}
        log_file = self.log_dir / f"{role}.log" if self.log_dir is not None else None
        return ray.remote(logged_actor(cls, log_file)).options(**options)

    def generate(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> list[RolloutGroup]:
        return ray.get(self.rollout.generate.remote(list(prompts), settings))

    def train_step(self, micro_batches: Sequence[MicroBatch], num_sequences: int, num_tokens: float) -> dict[str, float]:
        """Each learner rank takes an equal, contiguous share of the micro-batches."""
        world = len(self.learners)
        share = len(micro_batches) // world
        results = ray.get(
            [
                learner.train_step.remote(list(micro_batches[r * share : (r + 1) * share]), num_sequences, num_tokens)
                for r, learner in enumerate(self.learners)
            ]
        )
        merged = {k: sum(r[k] for r in results) / world for k in results[0]}
        merged["loss"] = sum(r["loss"] for r in results)  # each rank's loss is its share of the whole
        return merged

    def sleep_rollout(self, keep_weights: bool = True) -> None:
        """Free the rollout engine's GPU memory for the update; ``keep_weights=False`` when a sync follows."""
        ray.get(self.rollout.sleep.remote(keep_weights))

    def sync_weights(self) -> dict[str, float]:
        """Wake the weights, overwrite them with the learner's, then restore the KV cache."""
        timeout = self.config.sync.timeout_s
        wait_for(self.rollout.wake_weights.remote(), "rollout wakes its weights", timeout)
        metrics = self.sync()
        wait_for(self.rollout.wake_kv_cache.remote(), "rollout wakes its KV cache", timeout)
        return metrics

    def wake_rollout(self) -> None:
        ray.get(self.rollout.wake_weights.remote())
        ray.get(self.rollout.wake_kv_cache.remote())

    def learner_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """Rank 0's answer; every rank runs the forward, which is collective under ZeRO-3."""
        calls = [learner.completion_logprobs.remote(prompt_ids, completion_ids) for learner in self.learners]
        return ray.get(calls)[0]

    def rollout_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        return ray.get(self.rollout.completion_logprobs.remote(prompt_ids, completion_ids))

    def export_policy(self, directory: str) -> str:
        return ray.get([learner.export_hf.remote(directory) for learner in self.learners])[0]

    def save_learner_state(self, directory: str) -> None:
        """Every rank writes its part (a directory all ranks can reach: one node, or a shared filesystem)."""
        ray.get([learner.save_state.remote(directory) for learner in self.learners])

    def load_learner_state(self, directory: str) -> None:
        ray.get([learner.load_state.remote(directory) for learner in self.learners])

    def shutdown(self) -> None:
        for actor in [self.rollout, *self.learners]:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.pg)
