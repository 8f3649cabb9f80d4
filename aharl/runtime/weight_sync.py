"""The driver's choreography of a weight sync: which actor calls what, in which order.

The bytes move by one of the transports in :mod:`aharl.sync` (each holds its
sender and receiver side); here each transport has a class that orders the
calls between the learner ranks and the rollout actor, and :data:`TRANSPORTS`
maps ``sync.method`` to it. Every call goes to all learner ranks: under
ZeRO-3, gathering the full weights is collective.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray


class WeightSync:
    """One transport's choreography; ``__call__`` moves the weights once and reports metrics."""

    method: str

    def __init__(self, learners: list[Any], rollout: Any, run_id: str) -> None:
        self.learners = learners
        self.rollout = rollout
        self.run_id = run_id

    def __call__(self) -> dict[str, float]:
        started = time.perf_counter()
        tensors = self.transfer()
        return {"time/sync": time.perf_counter() - started, "sync/tensors": float(tensors)}

    def transfer(self) -> int:
        """Move every weight into the rollout engine; returns how many tensors it loaded."""
        raise NotImplementedError


class ShmSync(WeightSync):
    """Learner rank 0 writes bucket files in /dev/shm; the rollout worker reloads from them."""

    method = "shm"

    def __init__(self, learners: list[Any], rollout: Any, run_id: str) -> None:
        super().__init__(learners, rollout, run_id)
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        self.directory = base / f"aharl-{run_id}"

    def transfer(self) -> int:
        paths = ray.get([learner.export_weight_files.remote(str(self.directory)) for learner in self.learners])[0]
        try:
            return ray.get(self.rollout.load_weight_files.remote(paths))
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


class CudaIpcSync(WeightSync):
    """Bucket by bucket: the learner packs it on the GPU, the rollout worker maps and loads it, the learner frees it."""

    method = "cuda_ipc"

    def transfer(self) -> int:
        count = 0
        buckets = ray.get(self.learners[0].weight_buckets.remote())
        for index in range(len(buckets)):
            bucket = ray.get([learner.export_cuda_ipc_bucket.remote(index) for learner in self.learners])[0]
            count += ray.get(self.rollout.load_cuda_ipc_bucket.remote(bucket))
            ray.get([learner.release_cuda_ipc.remote() for learner in self.learners])
        return count


class NcclSync(WeightSync):
    """Learner rank 0 broadcasts to the rollout worker over a group formed at the first sync."""

    method = "nccl"

    def __init__(self, learners: list[Any], rollout: Any, run_id: str) -> None:
        super().__init__(learners, rollout, run_id)
        self._connected = False

    def transfer(self) -> int:
        if not self._connected:
            address = ray.util.get_node_ip_address()
            port = free_port()
            # Rank 0 is the learner, rank 1 the (single-process) rollout worker.
            ray.get([self.learners[0].init_nccl.remote(address, port, 2), self.rollout.init_nccl.remote(address, port, 1, 2)])
            self._connected = True
        meta = ray.get(self.learners[0].weight_meta.remote())
        sends = [learner.broadcast_weights.remote() for learner in self.learners]
        received = self.rollout.load_from_nccl.remote(meta)
        ray.get(sends)
        return ray.get(received)


# ``sync.method`` -> its choreography (``auto`` is resolved by :func:`aharl.runtime.placement.sync_method`).
TRANSPORTS: dict[str, type[WeightSync]] = {cls.method: cls for cls in (ShmSync, CudaIpcSync, NcclSync)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
