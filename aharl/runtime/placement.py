"""Which actor gets which resources: the two layouts, as data that tests can read.

``colocate``: one bundle per learner GPU; learner rank 0 and the rollout
engine share bundle 0 with fractional GPU shares (vLLM sleeps during the
update, so the two never need their memory at the same time).
``separate``: learner bundles, then one rollout bundle with its own GPUs.
On CPU both layouts run with CPU-only bundles.
"""

from __future__ import annotations

from dataclasses import dataclass

from aharl.config import Config
from aharl.errors import AharlError


# Ray counts fractional resources in units of 1e-4: two shares of one GPU fit
# only if their unit counts add up to at most this.
GPU_SHARE_UNITS = 10_000


def split_gpu(rollout_fraction: float) -> tuple[float, float]:
    """(learner share, rollout share) of one GPU that Ray can place together.

    Rounding each share to decimals separately can overshoot by a unit (0.3333
    + 0.667 > 1): the placement group is then never ready. The rollout share is
    floored to whole units and the learner takes exactly the rest.
    """
    rollout_units = max(1, min(GPU_SHARE_UNITS - 1, int(rollout_fraction * GPU_SHARE_UNITS)))
    return (GPU_SHARE_UNITS - rollout_units) / GPU_SHARE_UNITS, rollout_units / GPU_SHARE_UNITS


@dataclass(frozen=True)
class ActorSlot:
    """Where one actor goes: a bundle of the placement group and its share of it."""

    bundle_index: int
    num_cpus: float
    num_gpus: float


@dataclass(frozen=True)
class Layout:
    bundles: list[dict[str, float]]
    learners: list[ActorSlot]  # one per data-parallel rank
    rollout: ActorSlot
    strategy: str  # Ray placement strategy: keep colocated actors on one node


def plan_layout(config: Config, device: str) -> Layout:
    p = config.placement
    ranks = p.learner_gpus if device == "cuda" else 1
    if device != "cuda":
        if p.layout == "colocate":
            bundles = [{"CPU": 2.0}]
            return Layout(bundles, [ActorSlot(0, 1.0, 0.0)], ActorSlot(0, 1.0, 0.0), "PACK")
        bundles = [{"CPU": 1.0}, {"CPU": 1.0}]
        return Layout(bundles, [ActorSlot(0, 1.0, 0.0)], ActorSlot(1, 1.0, 0.0), "PACK")
    if p.layout == "colocate":
        learner_share, rollout_share = split_gpu(config.rollout.gpu_memory_utilization)
        bundles = [{"GPU": 1.0, "CPU": 2.0 if i == 0 else 1.0} for i in range(ranks)]
        learners = [ActorSlot(i, 1.0, learner_share if i == 0 else 1.0) for i in range(ranks)]
        return Layout(bundles, learners, ActorSlot(0, 1.0, rollout_share), "STRICT_PACK")
    bundles = [{"GPU": 1.0, "CPU": 1.0} for _ in range(ranks)]
    bundles.append({"GPU": float(p.rollout_gpus), "CPU": 1.0})
    learners = [ActorSlot(i, 1.0, 1.0) for i in range(ranks)]
    return Layout(bundles, learners, ActorSlot(ranks, 1.0, float(p.rollout_gpus)), "PACK")


def sync_method(config: Config, device: str) -> str:
    """The weight transport for this layout when ``sync.method=auto``."""
    if config.sync.method != "auto":
        method, layout = config.sync.method, config.placement.layout
        # The config checks these pairings unless placement.device=cpu; here the device is known.
        if device == "cuda" and (method, layout) in (("nccl", "colocate"), ("cuda_ipc", "separate")):
            raise AharlError(
                f"sync.method={method} cannot run with placement.layout={layout} on GPUs "
                "(NCCL needs one process per GPU; CUDA IPC maps memory of the same GPU); use sync.method=auto"
            )
        return method
    if device != "cuda" or config.rollout.backend == "hf":
        return "shm"
    return "cuda_ipc" if config.placement.layout == "colocate" else "nccl"
