"""Every actor call of the runtime has a deadline: a stalled engine ends the call with one line naming the stage, on time.

Real Ray actors that never answer (or are dead) stand in for the rollout
engines of a :class:`aharl.runtime.cluster.Cluster`; the run's driver turns
the error into its last line (``step N: ...; the last complete checkpoint is
...``), as the fault runs of tests/trainer/test_faults_e2e.py show.
"""

from __future__ import annotations

import time

import pytest

from aharl.config import load_config
from aharl.errors import RunFault
from aharl.runtime.actor_group import ActorGroup, StageTimeout
from aharl.runtime.cluster import Cluster

DEADLINE_S = 2


class StuckEngine:
    """An engine whose sleep and wake never return (a hung CUDA call or collective in real life)."""

    def sleep(self, keep_weights: bool) -> None:
        time.sleep(3600)

    def wake_weights(self) -> None:
        time.sleep(3600)

    def wake_kv_cache(self) -> None:
        time.sleep(3600)

    def ready(self) -> bool:
        return True


@pytest.fixture
def stuck_cluster(ray_local):
    """A cluster whose one rollout engine hangs in every sleep and wake; each test gets a fresh engine."""
    engine = ray_local.remote(num_cpus=0)(StuckEngine).remote()
    ray_local.get(engine.ready.remote(), timeout=60)
    cluster = Cluster.__new__(Cluster)  # the methods under test need only the config and the engines
    cluster.config = load_config("quickstart", [f"sync.timeout_s={DEADLINE_S}"])
    cluster.rollouts = [engine]
    cluster.engines = ActorGroup("rollout engine", cluster.rollouts)
    yield cluster
    ray_local.kill(engine, no_restart=True)


@pytest.mark.parametrize(
    ("call", "stage"),
    [
        (lambda c: c.wake_rollout(), "the engines' wake (weights)"),
        (lambda c: c.sleep_rollout(keep_weights=True), "the engines' sleep"),
    ],
    ids=["wake_rollout", "sleep_rollout"],
)
def test_a_stalled_engine_ends_the_call_within_its_deadline_with_one_line(stuck_cluster, call, stage):
    began = time.monotonic()
    with pytest.raises(StageTimeout) as stalled:
        call(stuck_cluster)
    waited = time.monotonic() - began
    assert str(stalled.value) == (
        f"{stage} did not finish within sync.timeout_s={DEADLINE_S}s (a hung engine or collective); "
        "raise sync.timeout_s if it is really that slow"
    )
    assert isinstance(stalled.value, RunFault)  # the run ends with exit code 3 and its checkpoint named
    assert DEADLINE_S <= waited < DEADLINE_S + 10, waited  # the deadline, not the hour the call would take


def test_a_dead_engine_is_named_with_the_stage_it_died_in(stuck_cluster, ray_local):
    ray_local.kill(stuck_cluster.rollouts[0], no_restart=True)
    with pytest.raises(RunFault, match=r"^rollout engine 0 died during the engines' sleep \(") as died:
        stuck_cluster.sleep_rollout()
    assert not isinstance(died.value, StageTimeout) and "\n" not in str(died.value)
