"""The driver's choreography of a weight sync: which actor calls what, in which order.

The bytes move by one of the transports in :mod:`aharl.sync` (each holds its
sender and receiver side); here each transport has a class that orders the
calls between the learner ranks and the rollout actor, and :data:`TRANSPORTS`
maps ``sync.method`` to it. Every call goes to all learner ranks: under
ZeRO-3, gathering the full weights is collective.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from aharl.runtime.actor_group import Deadline, StageTimeout, get_within
from aharl.runtime.rendezvous import LOOPBACK, free_port
from aharl.sync.shm import shared_memory_dir


class SyncTimeoutError(StageTimeout):
    """A stage of the weight sync did not finish within ``sync.timeout_s``."""


def sync_deadline(timeout_s: float) -> Deadline:
    return Deadline(
        timeout_s,
        "sync.timeout_s",
        cause="a hung collective, a dead GPU peer or an actor stuck in a load",
        advice="raise sync.timeout_s if a large model needs longer",
        kind=SyncTimeoutError,
    )


def wait_for(refs: Any, stage: str, timeout_s: float) -> Any:
    """``ray.get`` with a deadline: a stalled collective or actor call ends the run with the stage named."""
    return get_within(refs, f"weight sync stage '{stage}'", sync_deadline(timeout_s))


def loopback_meeting() -> tuple[str, int]:
    """Rendezvous for a run whose actors all share this node."""
    return LOOPBACK, free_port()


class WeightSync:
    """One transport's choreography; ``__call__`` moves the weights once and reports metrics.

    ``rollouts``: every rollout engine (each receives every sync);
    ``rollout_workers``: one engine's worker processes (its tensor-parallel
    size); ``meet``: where a group hosted by learner rank 0 meets
    (:mod:`aharl.runtime.rendezvous`).
    """

    method: str

    def __init__(
        self,
        learners: list[Any],
        rollouts: list[Any],
        run_id: str,
        timeout_s: float = 600.0,
        rollout_workers: int = 1,
        meet: Callable[[], tuple[str, int]] = loopback_meeting,
    ) -> None:
        self.learners = learners
        self.rollouts = rollouts
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.rollout_workers = rollout_workers
        self.meet = meet

    def wait(self, refs: Any, stage: str) -> Any:
        return wait_for(refs, f"{self.method}: {stage}", self.timeout_s)

    def __call__(self) -> dict[str, float]:
        started = time.perf_counter()
        tensors = self.transfer()
        return {"time/sync": time.perf_counter() - started, "sync/tensors": float(tensors)}

    def transfer(self) -> int:
        """Move every weight into the rollout engine; returns how many tensors it loaded."""
        raise NotImplementedError


class ShmSync(WeightSync):
    """Learner rank 0 writes bucket files in /dev/shm; every rollout engine (all on its node) reloads from them."""

    method = "shm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.directory = Path(shared_memory_dir()) / f"aharl-{self.run_id}"

    def transfer(self) -> int:
        paths = self.wait(
            [learner.export_weight_files.remote(str(self.directory)) for learner in self.learners],
            "learner writes buckets",
        )[0]
        try:
            return self.wait(
                [rollout.load_weight_files.remote(paths) for rollout in self.rollouts], "rollout loads buckets"
            )[0]
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


class CudaIpcSync(WeightSync):
    """Bucket by bucket: the learner packs it on the GPU, the rollout worker maps and loads it, the learner frees it.

    Colocated engine ``e`` shares learner rank ``e``'s GPU, and CUDA IPC maps
    memory of the same GPU, so rank ``e`` packs the bucket for engine ``e``.
    """

    method = "cuda_ipc"

    def transfer(self) -> int:
        count = 0
        engines = len(self.rollouts)
        buckets = self.wait(self.learners[0].weight_buckets.remote(), "plan buckets")
        for index in range(len(buckets)):
            handles = self.wait(
                [
                    learner.export_cuda_ipc_bucket.remote(index, rank < engines)
                    for rank, learner in enumerate(self.learners)
                ],
                f"learner packs bucket {index}",
            )
            final = index == len(buckets) - 1
            # An engine without a rank of its own (more engines than ranks: CPU only) maps rank 0's.
            loads = [
                rollout.load_cuda_ipc_bucket.remote(
                    handles[e] if e < len(handles) and handles[e] else handles[0], final
                )
                for e, rollout in enumerate(self.rollouts)
            ]
            count += self.wait(loads, f"rollout loads bucket {index}")[0]
            self.wait([learner.release_cuda_ipc.remote() for learner in self.learners], f"learner frees bucket {index}")
        return count


class NcclSync(WeightSync):
    """Learner rank 0 broadcasts to every rollout worker over a group formed at the first sync (gloo on CPU).

    Ranks: learner rank 0 is 0, worker ``w`` (its tensor-parallel rank) of
    engine ``e`` is ``1 + e * TP + w``; each worker receives every tensor and
    keeps its shard, so one broadcast serves every engine.
    """

    method = "nccl"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connected = False

    def transfer(self) -> int:
        if not self._connected:
            address, port = self.meet()
            tp = self.rollout_workers
            world = 1 + len(self.rollouts) * tp
            joins = [
                rollout.init_nccl.remote(address, port, 1 + e * tp, world) for e, rollout in enumerate(self.rollouts)
            ]
            self.wait([self.learners[0].init_nccl.remote(address, port, world), *joins], "form the group")
            self._connected = True
        meta = self.wait(self.learners[0].weight_meta.remote(), "describe weights")
        sends = [learner.broadcast_weights.remote() for learner in self.learners]
        received = [rollout.load_from_nccl.remote(meta) for rollout in self.rollouts]
        self.wait(sends, "learner broadcasts")
        return self.wait(received, "rollout receives")[0]


# ``sync.method`` -> its choreography (``auto`` is resolved by :func:`aharl.runtime.topology.choose_sync`).
TRANSPORTS: dict[str, type[WeightSync]] = {cls.method: cls for cls in (ShmSync, CudaIpcSync, NcclSync)}
