"""What the GPUs allow, found before the actors start, and the weight sync chosen from it.

Users of other trainers hit the same walls on their first GPU run: CUDA IPC
refused (WSL, MIG slices, some hypervisors) and NCCL hanging on consumer
cards whose peer-to-peer path is broken or disabled. With ``sync.method=auto``
aharl probes for both on a GPU of the cluster and picks accordingly, saying
what it chose and why in one line. :func:`choose_sync` is the one place the
transport is decided; its docstring is the decision table.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from aharl.config import Config
from aharl.errors import AharlError

# Card names NCCL's peer-to-peer path is unreliable on (disabled in the
# driver, or routed through the CPU on PCIe-only boards).
CONSUMER_MARKERS = ("GeForce", "RTX 30", "RTX 40", "RTX 50", "TITAN")


@dataclass(frozen=True)
class Topology:
    """Facts about the GPUs a run gets; ``None`` where the probe could not tell."""

    gpu_names: tuple[str, ...] = ()
    wsl: bool = False
    cuda_ipc: bool | None = None
    peer_to_peer: bool | None = None  # between two GPUs of one node; None with fewer than two visible


@dataclass(frozen=True)
class SyncChoice:
    method: str
    reason: str
    env: dict[str, str] = field(default_factory=dict)  # for the learner and rollout actors

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.env.items())
        return f"weight sync: {self.method} ({self.reason})" + (f"; {extra}" if extra else "")


def consumer_cards(names: tuple[str, ...]) -> bool:
    return any(marker.lower() in name.lower() for name in names for marker in CONSUMER_MARKERS)


def choose_sync(
    config: Config,
    device: str,
    topology: Topology = Topology(),
    learner_nodes: Sequence[str] | None = None,
    engine_nodes: Sequence[str] | None = None,
) -> SyncChoice:
    """The weight transport, why, and the environment its actors need; refuses what cannot run.

    Read top to bottom, the first matching row decides:

    | sync.method | device, backend | layout | found | sync | environment |
    |---|---|---|---|---|---|
    | nccl / cuda_ipc | cuda | colocate / separate | - | refused (one process per GPU / same GPU only) | - |
    | shm / cuda_ipc | any | any | an engine on another node than its learner | refused | - |
    | explicit | any | any | - | as given | NCCL_P2P_DISABLE=1 as below when separate |
    | auto | any | any | an engine on another node than its learner | nccl (the only one across nodes) | kept |
    | auto | cpu, or the hf backend | any | - | shm | - |
    | auto | cuda | colocate | CUDA IPC refused | shm (staged through shared memory) | - |
    | auto | cuda | colocate | CUDA IPC works or not probed | cuda_ipc | - |
    | auto | cuda | separate | no P2P, or unknown on consumer cards | nccl | NCCL_P2P_DISABLE=1 |
    | auto | cuda | separate | P2P between the GPUs | nccl | - |

    ``learner_nodes`` / ``engine_nodes``: where each learner rank and rollout
    engine was placed, once the placement group is ready (None before).
    "Its learner": ``shm`` files are written by rank 0, so every engine
    needs rank 0's node; ``cuda_ipc`` buckets of engine ``e`` are packed by
    rank ``e`` (rank 0 past the last rank).
    """
    explicit = config.sync.method != "auto"
    layout = config.placement.layout
    if (
        explicit
        and device == "cuda"
        and (config.sync.method, layout) in (("nccl", "colocate"), ("cuda_ipc", "separate"))
    ):
        raise AharlError(
            f"sync.method={config.sync.method} cannot run with placement.layout={layout} on GPUs "
            "(NCCL needs one process per GPU; CUDA IPC maps memory of the same GPU); use sync.method=auto"
        )
    choice = _sync_for_device(config, device, topology)
    apart = engines_apart(choice.method, learner_nodes, engine_nodes)
    if not apart:
        return choice
    if explicit:
        raise AharlError(
            f"sync.method={config.sync.method} needs each rollout engine on its learner's node, but engine {apart[0]} was "
            "placed on another node; use sync.method=auto (the collective transport across nodes) or pin both with "
            "placement.*_resources"
        )
    reason = f"rollout engine {apart[0]} is on another node than its learner: collective transport across nodes"
    return SyncChoice("nccl", reason, choice.env)


def engines_apart(method: str, learner_nodes: Sequence[str] | None, engine_nodes: Sequence[str] | None) -> list[int]:
    """The engines placed on another node than the learner rank that feeds them under ``method`` (none for nccl)."""
    if learner_nodes is None or engine_nodes is None:
        return []
    if method == "shm":
        return [e for e, node in enumerate(engine_nodes) if node != learner_nodes[0]]
    if method == "cuda_ipc":
        feeder = [learner_nodes[e] if e < len(learner_nodes) else learner_nodes[0] for e in range(len(engine_nodes))]
        return [e for e, node in enumerate(engine_nodes) if node != feeder[e]]
    return []


def _sync_for_device(config: Config, device: str, topology: Topology) -> SyncChoice:
    """The rows of :func:`choose_sync`'s table that do not depend on where the actors landed."""
    explicit = config.sync.method != "auto"
    if device != "cuda" or config.rollout.backend == "hf":
        method = config.sync.method if explicit else "shm"
        return SyncChoice(method, "CPU run" if device != "cuda" else "the HF rollout backend loads shared-memory files")
    if config.placement.layout == "colocate":
        if explicit:
            return SyncChoice(config.sync.method, "set by sync.method")
        if topology.cuda_ipc is False:
            where = "WSL" if topology.wsl else "this machine (a VM, MIG slice or driver setting)"
            return SyncChoice("shm", f"CUDA IPC is refused on {where}: staging the weights through shared memory")
        return SyncChoice(
            "cuda_ipc", "learner and vLLM share one GPU" + ("" if topology.cuda_ipc else "; CUDA IPC not probed")
        )
    method = config.sync.method if explicit else "nccl"
    if topology.peer_to_peer is False:
        return SyncChoice(
            method, "no peer-to-peer path between the GPUs: NCCL goes through host memory", {"NCCL_P2P_DISABLE": "1"}
        )
    if topology.peer_to_peer is None and consumer_cards(topology.gpu_names):
        return SyncChoice(
            method, f"consumer cards ({topology.gpu_names[0]}) with peer-to-peer unverified", {"NCCL_P2P_DISABLE": "1"}
        )
    return SyncChoice(method, "learner and vLLM on their own GPUs")


# ---------------------------------------------------------------------------
# The probe (runs in a process that sees the GPUs it asked for)


def _rebuild_in_child(handle, queue) -> None:
    try:
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        tensor = rebuild_cuda_tensor(*handle)
        queue.put(float(tensor.sum().item()))
    except Exception as exc:  # the answer is "refused", whatever the reason
        queue.put(f"{type(exc).__name__}: {exc}")


def cuda_ipc_works(timeout_s: float = 120) -> bool:
    """Whether another process can open this process's GPU memory (a real round trip)."""
    import torch
    from torch.multiprocessing.reductions import reduce_tensor

    tensor = torch.arange(16, dtype=torch.float32, device="cuda")
    _, handle = reduce_tensor(tensor)
    context = mp.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_rebuild_in_child, args=(handle, queue))
    child.start()
    try:
        answer = queue.get(timeout=timeout_s)
    except Exception:
        answer = "no answer"
    child.join(timeout=10)
    if child.is_alive():
        child.kill()
    return answer == float(tensor.sum().item())


def probe_topology() -> Topology:
    """What this process sees: GPU names, WSL, CUDA IPC, and P2P between its first two GPUs."""
    import torch

    wsl = "microsoft" in Path("/proc/version").read_text().lower() if Path("/proc/version").exists() else False
    if not torch.cuda.is_available():
        return Topology(wsl=wsl)
    count = torch.cuda.device_count()
    names = tuple(torch.cuda.get_device_name(i) for i in range(count))
    peer = torch.cuda.can_device_access_peer(0, 1) if count >= 2 else None
    return Topology(names, wsl, cuda_ipc_works(), peer)
