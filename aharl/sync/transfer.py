"""The driver's side of a weight sync: move the learner's weights into the rollout engine.

``shm``: the learner writes safetensors buckets to /dev/shm and the rollout
worker reloads from them (CPU; also any layout on one node).
``cuda_ipc``: bucket by bucket, the learner packs weights in its GPU memory
and the colocated vLLM worker maps the same memory (one GPU, two processes).
``nccl``: learner rank 0 broadcasts to the rollout worker over a NCCL group
formed once (rollout on its own GPUs).
Every call runs on all learner ranks: under ZeRO-3 gathering is collective.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

import ray


class WeightSync:
    def __init__(self, method: str, learners: list, rollout, run_id: str) -> None:
        self.method = method
        self.learners = learners
        self.rollout = rollout
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        self.shm_dir = base / f"aharl-{run_id}"
        self._nccl_ready = False

    def __call__(self) -> dict[str, float]:
        started = time.perf_counter()
        tensors = getattr(self, f"_sync_{self.method}")()
        return {"time/sync": time.perf_counter() - started, "sync/tensors": float(tensors)}

    def _sync_shm(self) -> int:
        paths = ray.get([learner.export_weight_files.remote(str(self.shm_dir)) for learner in self.learners])[0]
        try:
            return ray.get(self.rollout.load_weight_files.remote(paths))
        finally:
            shutil.rmtree(self.shm_dir, ignore_errors=True)

    def _sync_cuda_ipc(self) -> int:
        count = 0
        buckets = ray.get(self.learners[0].weight_buckets.remote())
        for index in range(len(buckets)):
            bucket = ray.get([learner.export_cuda_ipc_bucket.remote(index) for learner in self.learners])[0]
            count += ray.get(self.rollout.load_cuda_ipc_bucket.remote(bucket))
            ray.get([learner.release_cuda_ipc.remote() for learner in self.learners])
        return count

    def _sync_nccl(self) -> int:
        if not self._nccl_ready:
            address = ray.util.get_node_ip_address()
            port = free_port()
            # Rank 0 is the learner, rank 1 the (single-process) rollout worker.
            ray.get([self.learners[0].init_nccl.remote(address, port, 2), self.rollout.init_nccl.remote(address, port, 1, 2)])
            self._nccl_ready = True
        meta = ray.get(self.learners[0].weight_meta.remote())
        sends = [learner.broadcast_weights.remote() for learner in self.learners]
        received = self.rollout.load_from_nccl.remote(meta)
        ray.get(sends)
        return ray.get(received)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
