"""The Ray side of a run: the placement group, the rollout and learner actors, the sync.

The driver loop (:mod:`aharl.trainer.loop`) calls the plain methods here and
never touches Ray itself; where each actor runs is decided in
:func:`aharl.runtime.placement.plan_layout` and visible below.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from aharl import faults
from aharl.config import Config
from aharl.errors import AharlError, RunFault
from aharl.grpo.batch import MicroBatch, rank_share
from aharl.learner.learner import Learner, UpdateOutcome
from aharl.rollout.backends import engine_class
from aharl.rollout.engine import SamplingSettings
from aharl.rollout.vllm_engine import CORE_SHARE_ENV, rollout_workers
from aharl.runtime.actor_group import ActorGroup, Deadline, StageTimeout, actor_death, get_within
from aharl.runtime.logs import logged_actor
from aharl.runtime.placement import ActorSlot, plan_layout
from aharl.runtime.rendezvous import bundle_nodes, rendezvous
from aharl.runtime.topology import Topology, choose_sync, probe_topology
from aharl.runtime.weight_sync import TRANSPORTS, wait_for
from aharl.types import Prompt, RolloutGroup, SyncGap

PLACEMENT_TIMEOUT_S = 120
# How long the engines get to stop vLLM's engine core themselves before they are killed
# (a second or two normally; a hung engine never answers, so this bounds the wait).
ENGINE_STOP_GRACE_S = 10

log = logging.getLogger("aharl")


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


def split_evenly(items: list, parts: int) -> list[list]:
    """``items`` in ``parts`` contiguous runs whose sizes differ by at most one (earlier runs longer)."""
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        runs.append(items[start:end])
        start = end
    return runs


def pool_rank_outcomes(results: list[UpdateOutcome]) -> UpdateOutcome:
    """One step's update from every learner rank's: the loss adds up (each rank's is its share of the whole),
    the sync gap is pooled per engine over all ranks' tokens, the rest are means over ranks."""
    plain = [r.metrics for r in results]
    merged = {k: sum(r[k] for r in plain) / len(plain) for k in plain[0]}
    merged["loss"] = sum(r["loss"] for r in plain)
    return UpdateOutcome(merged, SyncGap.pooled([r.gap for r in results]))


def engine_core_shares(engine_nodes: list[str]) -> dict[int, dict[str, str]]:
    """CPU engines: each one's place among the engines on its node, for :func:`aharl.rollout.vllm_engine.core_share`."""
    shares = {}
    for e, node in enumerate(engine_nodes):
        same = [i for i, other in enumerate(engine_nodes) if other == node]
        shares[e] = {CORE_SHARE_ENV: f"{same.index(e)}/{len(same)}"}
    return shares


@dataclass
class PendingGeneration:
    """A generation sent to the engines and not yet collected: ``(engine, prompts, ref)`` per engine."""

    calls: list[tuple[int, list[Prompt], Any]]
    settings: SamplingSettings


class Cluster:
    def __init__(self, config: Config, device: str, total_steps: int, run_id: str, log_dir: Path | None = None) -> None:
        """``log_dir``: where the actors' output goes (:mod:`aharl.runtime.logs`); ``None`` streams it to the driver."""
        self.config = config
        self.log_dir = log_dir
        # Seconds each start-up phase took (placement, rollout, learner, sync), for the "started" line:
        # on a GPU most of a run's first minutes go here, and this says where.
        self.startup: dict[str, float] = {}
        clock = [time.perf_counter()]

        def lap(phase: str) -> None:
            now = time.perf_counter()
            self.startup[phase], clock[0] = now - clock[0], now

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
        nodes = bundle_nodes(self.pg)
        self.sync_choice = choose_sync(
            config,
            device,
            self.topology,
            learner_nodes=[nodes[slot.bundle_index] for slot in self.layout.learners],
            engine_nodes=[nodes[slot.bundle_index] for slot in self.layout.rollouts],
        )
        lap("placement")
        # The rollout engines start first: on a shared GPU vLLM sizes its
        # KV cache from the free memory it sees.
        env = self.sync_choice.env
        self.device = device
        self._engine_cls = engine_class(config.rollout.backend)
        shares = (
            engine_core_shares([nodes[slot.bundle_index] for slot in self.layout.rollouts]) if device != "cuda" else {}
        )
        self._engine_env = [{**rollout_env(), **env, **shares.get(e, {})} for e in range(len(self.layout.rollouts))]
        self.rollouts = [self._start_engine(e) for e in range(len(self.layout.rollouts))]
        # The weight transport holds the same list: a restarted engine replaces its slot in both.
        self.engines = ActorGroup("rollout engine", self.rollouts)

        # On CPU the KV budget is explicit bytes, not a share of free memory, so
        # the learners start beside the engines (their imports overlap: ~10 s).
        def engines_ready() -> None:
            # A failing constructor surfaces here as Ray's error (the CLI names the actor's log).
            get_within(
                [e.parameter_checksum.remote() for e in self.rollouts],
                "the rollout engines' start",
                self._start_deadline,
            )
            lap("rollout")

        engines_first = device == "cuda"
        if engines_first:
            engines_ready()
        self.engine_restarts = 0
        # DeepSpeed's group meets at learner rank 0's node.
        learner_bundles = [slot.bundle_index for slot in self.layout.learners]
        address, port = rendezvous(self.pg, learner_bundles[0], learner_bundles, PLACEMENT_TIMEOUT_S)
        world = len(self.layout.learners)
        self.learners = [
            self._place(Learner, slot, f"learner-{rank}", env).remote(config, total_steps, rank, world, port, address)
            for rank, slot in enumerate(self.layout.learners)
        ]
        if not engines_first:
            engines_ready()
        self.ranks = ActorGroup("learner rank", self.learners)
        get_within(
            [r.parameter_checksum.remote() for r in self.learners], "the learner ranks' start", self._start_deadline
        )
        lap("learner")
        rollout_bundles = [slot.bundle_index for slot in self.layout.rollouts]

        def meet() -> tuple[str, int]:
            """The weight broadcast's group (nccl) meets at learner rank 0's node too: rank 0 hosts it."""
            return rendezvous(self.pg, learner_bundles[0], rollout_bundles, config.sync.timeout_s)

        self.sync = TRANSPORTS[self.sync_choice.method](
            self.learners, self.rollouts, run_id, config.sync.timeout_s, rollout_workers(config, device), meet
        )
        lap("sync")

    @property
    def _sync_deadline(self) -> Deadline:
        """Sleep, wake and re-scoring calls: as long as a weight sync may take."""
        return Deadline(self.config.sync.timeout_s, "sync.timeout_s", cause="a hung engine or collective")

    @property
    def _learner_deadline(self) -> Deadline:
        """The learner's update, export and checkpoints."""
        return Deadline(self.config.learner.timeout_s, "learner.timeout_s", cause="a hung collective or rank")

    @property
    def _start_deadline(self) -> Deadline:
        """An actor's start (a cold vLLM compile takes minutes on a GPU; loading a large model longer)."""
        return Deadline(self.config.placement.start_timeout_s, "placement.start_timeout_s", cause="a start that hangs")

    def _place(self, cls, slot: ActorSlot, role: str, env_vars: dict[str, str] | None = None):
        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=slot.bundle_index)
        options = {"num_cpus": slot.num_cpus, "num_gpus": slot.num_gpus, "scheduling_strategy": strategy}
        if env_vars:
            options["runtime_env"] = {"env_vars": env_vars}
        log_file = self.log_dir / f"{role}.log" if self.log_dir is not None else None
        return ray.remote(logged_actor(cls, log_file)).options(**options)

    def _start_engine(self, e: int):
        slot = self.layout.rollouts[e]
        return self._place(self._engine_cls, slot, "rollout" if e == 0 else f"rollout-{e}", self._engine_env[e]).remote(
            self.config, self.device
        )

    def generate(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> list[RolloutGroup]:
        """The prompts split in order across the engines, the groups gathered back in the same order, each tagged with its engine.

        An engine that dies while generating is restarted, given the learner's
        weights, and asked again (once): per-prompt seeds make the retried
        groups the ones the dead engine would have returned.
        """
        return self.finish_generation(self.start_generation(prompts, settings))

    def start_generation(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> "PendingGeneration":
        """Send the prompts to the engines and return at once (a one-step-off rollout runs this beside the update)."""
        shares = split_evenly(list(prompts), len(self.rollouts))
        calls = [
            (e, share, rollout.generate.remote(share, settings))
            for e, (rollout, share) in enumerate(zip(self.rollouts, shares))
            if share
        ]
        return PendingGeneration(calls, settings)

    def generation_done(self, pending: "PendingGeneration") -> bool:
        refs = [ref for _, _, ref in pending.calls]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return len(ready) == len(refs)

    def finish_generation(self, pending: "PendingGeneration") -> list[RolloutGroup]:
        """Wait for a started generation (restarting and retrying a dying engine, see :meth:`generate`)."""
        faults.reached("driver.generate")
        groups = []
        for engine, share, ref in pending.calls:
            try:
                result = self._generated(engine, ref)
            except RayActorError as exc:
                self.restart_engine(engine, f"while generating ({actor_death(exc)})")
                try:
                    result = self._generated(engine, self.rollouts[engine].generate.remote(share, pending.settings))
                except RayActorError as again:
                    raise RunFault(
                        f"rollout engine {engine} died twice in one step's generation ({actor_death(again)})"
                    ) from None
            for group in result:
                group.engine = engine
                groups.append(group)
        return groups

    def _generated(self, engine: int, ref) -> list[RolloutGroup]:
        deadline = Deadline(self.config.rollout.timeout_s, "rollout.timeout_s", cause="a hung engine")
        return get_within(ref, f"rollout engine {engine}'s generation", deadline)

    def restart_engine(self, engine: int, why: str) -> None:
        """Replace a dead rollout engine in its bundle and sync the learner's weights into it.

        The collective transport cannot take a new member into a formed group,
        so with it the run stops instead (``resume=auto`` rebuilds everything).
        """
        if self.sync_choice.method == "nccl":
            raise RunFault(f"rollout engine {engine} died {why}; the nccl weight group cannot take a restarted engine")
        log.warning("rollout engine %d died %s; restarting it and syncing the learner's weights into it", engine, why)
        try:
            ray.kill(self.rollouts[engine], no_restart=True)
        except Exception:  # already gone
            pass
        # In place: the weight transport holds this same list.
        self.rollouts[engine] = self._start_engine(engine)
        try:
            get_within(
                self.rollouts[engine].parameter_checksum.remote(), "a restarted engine's start", self._start_deadline
            )
        except (RayActorError, StageTimeout) as exc:
            raise RunFault(
                f"rollout engine {engine} died {why} and its replacement did not start ({type(exc).__name__})"
            ) from None
        self.sync_weights()
        self.engine_restarts += 1

    def train_step(self, micro_batches: Sequence[MicroBatch], num_sequences: int, num_tokens: float) -> UpdateOutcome:
        """Each learner rank takes an equal, contiguous share of the micro-batches; their outcomes are pooled.

        A rank that dies ends the run (:class:`RunFault`): the surviving ranks
        are inside DeepSpeed's collectives with it and cannot carry on alone,
        and restarting every rank from the last checkpoint is what
        ``resume=auto`` already does, exactly.
        """
        world = len(self.ranks)
        shares = [(rank_share(micro_batches, r, world), num_sequences, num_tokens) for r in range(world)]
        refs = [rank.train_step.remote(*share) for rank, share in zip(self.ranks, shares)]
        faults.reached("driver.update")
        outcome = pool_rank_outcomes(self.ranks.gather(refs, "the update", self._learner_deadline))
        outcome.metrics["rollout/engine_restarts"] = float(self.engine_restarts)
        return outcome

    def sleep_rollout(self, keep_weights: bool = True) -> None:
        """Free the rollout engines' GPU memory for the update; ``keep_weights=False`` when a sync follows."""
        self.engines.call("sleep", keep_weights, stage="the engines' sleep", deadline=self._sync_deadline)

    def sync_weights(self) -> dict[str, float]:
        """Wake the weights, overwrite them with the learner's, then restore the KV caches (every engine)."""
        timeout = self.config.sync.timeout_s
        wait_for([rollout.wake_weights.remote() for rollout in self.rollouts], "rollout wakes its weights", timeout)
        faults.reached("driver.sync")
        metrics = self.sync()
        wait_for([rollout.wake_kv_cache.remote() for rollout in self.rollouts], "rollout wakes its KV cache", timeout)
        return metrics

    def wake_rollout(self) -> None:
        """Wake the engines without a sync (``sync.interval_steps`` > 1): weights, then KV caches."""
        self.engines.call("wake_weights", stage="the engines' wake (weights)", deadline=self._sync_deadline)
        self.engines.call("wake_kv_cache", stage="the engines' wake (KV cache)", deadline=self._sync_deadline)

    def learner_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """Rank 0's answer; every rank runs the forward, which is collective under ZeRO-3."""
        calls = [learner.completion_logprobs.remote(prompt_ids, completion_ids) for learner in self.learners]
        return wait_for(calls, "learner re-scores completions", self.config.sync.timeout_s)[0]

    def rollout_logprobs(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], engine: int = 0
    ) -> list[list[float]]:
        call = self.rollouts[engine].completion_logprobs.remote(prompt_ids, completion_ids)
        return wait_for(call, f"rollout {engine} re-scores completions", self.config.sync.timeout_s)

    def landed_sync_gap(self, groups: Sequence[RolloutGroup], per_engine: int = 2) -> SyncGap:
        """``sync/logp_diff`` measured right after a sync: learner against each engine on a few of the step's completions.

        With a one-step-off rollout the update's own comparison sees samples
        one update old, so it measures the lag as much as the sync; this
        re-scores ``per_engine`` completions in both (a prefill each) with
        the weights the sync just moved.
        """
        gap = SyncGap()
        for engine in range(len(self.rollouts)):
            picked = [
                (g.prompt.token_ids, c.token_ids)
                for g in groups
                if g.engine == engine
                for c in g.completions
                if c.token_ids
            ][:per_engine]
            if not picked:
                continue
            prompt_ids, completion_ids = [p for p, _ in picked], [c for _, c in picked]
            learner = self.learner_logprobs(prompt_ids, completion_ids)
            engine_logp = self.rollout_logprobs(prompt_ids, completion_ids, engine)
            diff = sum(abs(a - b) for row_a, row_b in zip(learner, engine_logp) for a, b in zip(row_a, row_b))
            gap.add(engine, diff, float(sum(len(c) for c in completion_ids)))
        return gap

    def export_policy(self, directory: str) -> str:
        return self.ranks.call("export_hf", directory, stage="the policy's export", deadline=self._learner_deadline)[0]

    def save_learner_state(self, directory: str) -> None:
        """Every rank writes its part (a directory all ranks can reach: one node, or a shared filesystem)."""
        self.ranks.call("save_state", directory, stage="the checkpoint's save", deadline=self._learner_deadline)

    def load_learner_state(self, directory: str) -> None:
        self.ranks.call("load_state", directory, stage="the checkpoint's load", deadline=self._learner_deadline)

    def shutdown(self) -> None:
        """Kill every actor and free the placement group; safe after any failure (dead actors included).

        The engines first stop vLLM's engine core themselves (a kill alone
        leaves its shared memory in /dev/shm); a dead or stuck one is killed anyway.
        """
        stops = [rollout.shutdown.remote() for rollout in self.rollouts]
        ray.wait(stops, num_returns=len(stops), timeout=ENGINE_STOP_GRACE_S)
        for actor in [*self.rollouts, *self.learners]:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.pg)
