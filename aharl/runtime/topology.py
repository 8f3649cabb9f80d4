"""What the GPUs allow, found before the actors start, and the weight sync chosen from it.

Users of other trainers hit the same walls on their first GPU run: CUDA IPC
refused (WSL, MIG slices, some hypervisors) and NCCL hanging on consumer
cards whose peer-to-peer path is broken or disabled. With ``sync.method=auto``
aharl probes for both on a GPU of the cluster and picks accordingly, saying
what it chose and why in one line:

| device | layout | found | sync | environment |
|---|---|---|---|---|
| cpu | any | - | shm | - |
| cuda | colocate | CUDA IPC works | cuda_ipc | - |
| cuda | colocate | CUDA IPC refused | shm (staged through shared memory) | - |
| cuda | separate | P2P between two GPUs | nccl | - |
| cuda | separate | no P2P, or unknown on consumer cards | nccl | NCCL_P2P_DISABLE=1 |

An explicit ``sync.method`` is kept as given; the probe then only reports.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass, field
from pathlib import Path

from aharl.config import Config
from aharl.runtime.placement import sync_method

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


def choose_sync(config: Config, device: str, topology: Topology) -> SyncChoice:
    """The decision table above: :func:`~aharl.runtime.placement.sync_method`'s answer for the layout
    (which also refuses a pairing the device cannot run), adjusted by what the probe found."""
    method = sync_method(config, device)
    explicit = config.sync.method != "auto"
    if device != "cuda" or config.rollout.backend == "hf":
        return SyncChoice(method, "CPU run" if device != "cuda" else "the HF rollout backend loads shared-memory files")
    if config.placement.layout == "colocate":
        if explicit:
            return SyncChoice(method, "set by sync.method")
        if topology.cuda_ipc is False:
            where = "WSL" if topology.wsl else "this machine (a VM, MIG slice or driver setting)"
            return SyncChoice("shm", f"CUDA IPC is refused on {where}: staging the weights through shared memory")
        return SyncChoice(
            method, "learner and vLLM share one GPU" + ("" if topology.cuda_ipc else "; CUDA IPC not probed")
        )
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
