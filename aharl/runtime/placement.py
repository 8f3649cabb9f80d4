"""Which actor gets which resources: the two layouts, as data that tests can read.

``colocate``: one bundle per learner GPU; learner rank ``e`` and rollout
engine ``e`` share bundle ``e`` with fractional GPU shares (vLLM sleeps
during the update, so the two never need their memory at the same time).
``separate``: learner bundles, then one bundle per rollout engine with its
own GPUs. On CPU both layouts run with CPU-only bundles.
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
    rollouts: list[ActorSlot]  # one per rollout engine
    strategy: str  # Ray placement strategy: keep colocated actors on one node


def _with(bundle: dict[str, float], *extra: dict[str, float]) -> dict[str, float]:
    merged = dict(bundle)
    for resources in extra:
        for name, amount in resources.items():
            merged[name] = merged.get(name, 0.0) + float(amount)
    return merged


def plan_layout(config: Config, device: str) -> Layout:
    """Bundles and slots for ``learner_gpus`` ranks and ``rollout.num_engines`` engines.

    Colocated, engine ``e`` shares bundle ``e`` with learner rank ``e`` (on a
    GPU: the same GPU, so its sync stays on the device); separate, the
    engines' bundles follow the learners'. On CPU every actor takes half a
    core of Ray's accounting: the actors take turns, so the cores are shared
    in time rather than in space. ``placement.learner_resources`` /
    ``rollout_resources`` are added to the bundles of that role, which pins
    them to the nodes that advertise those resources.
    """
    p = config.placement
    ranks, engines = p.learner_gpus, config.rollout.num_engines
    lres, rres = p.learner_resources, p.rollout_resources
    if device != "cuda":
        if p.layout == "colocate":
            count = max(ranks, engines)
            bundles = [
                _with({"CPU": 1.0}, lres if i < ranks else {}, rres if i < engines else {}) for i in range(count)
            ]
            return Layout(
                bundles,
                [ActorSlot(i, 0.5, 0.0) for i in range(ranks)],
                [ActorSlot(e, 0.5, 0.0) for e in range(engines)],
                "PACK",
            )
        bundles = [_with({"CPU": 0.5}, lres) for _ in range(ranks)] + [
            _with({"CPU": 0.5}, rres) for _ in range(engines)
        ]
        return Layout(
            bundles,
            [ActorSlot(i, 0.5, 0.0) for i in range(ranks)],
            [ActorSlot(ranks + e, 0.5, 0.0) for e in range(engines)],
            "PACK",
        )
    if p.layout == "colocate":
        if engines > ranks:
            raise AharlError(
                f"rollout.num_engines={engines} colocated engines need as many GPUs, but placement.learner_gpus={ranks}; "
                "use at most one engine per learner GPU, or placement.layout=separate"
            )
        learner_share, rollout_share = split_gpu(config.rollout.gpu_memory_utilization)
        bundles = [
            _with({"GPU": 1.0, "CPU": 2.0 if i < engines else 1.0}, lres, rres if i < engines else {})
            for i in range(ranks)
        ]
        learners = [ActorSlot(i, 1.0, learner_share if i < engines else 1.0) for i in range(ranks)]
        # One node unless the job asks for more GPUs than a node has: then PACK spreads the bundles.
        return Layout(
            bundles,
            learners,
            [ActorSlot(e, 1.0, rollout_share) for e in range(engines)],
            "STRICT_PACK" if ranks == 1 else "PACK",
        )
    bundles = [_with({"GPU": 1.0, "CPU": 1.0}, lres) for _ in range(ranks)]
    bundles += [_with({"GPU": float(p.rollout_gpus), "CPU": 1.0}, rres) for _ in range(engines)]
    learners = [ActorSlot(i, 1.0, 1.0) for i in range(ranks)]
    return Layout(bundles, learners, [ActorSlot(ranks + e, 1.0, float(p.rollout_gpus)) for e in range(engines)], "PACK")
