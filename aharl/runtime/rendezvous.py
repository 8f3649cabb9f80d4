"""Where a process group meets: the address and port its rank 0 listens on.

Two groups form in a run: DeepSpeed's among the learner ranks, and the
weight broadcast between learner rank 0 and the rollout workers. In both,
rank 0 (learner rank 0) hosts the store, so the address must be that of rank
0's node and the port one that is free there, not on the driver's node (with
``ray job submit`` on a cluster they differ). When every member sits on rank
0's node the group meets on loopback: a node's own non-loopback address is
not always reachable from itself (VMs, sandboxes), and loopback never leaves
the machine.
"""

from __future__ import annotations

import socket
from typing import Sequence

import ray
from ray.util.placement_group import PlacementGroup, placement_group_table
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from aharl.errors import AharlError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing on this node listens on now."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def meeting_address(bundle_nodes: dict[int, str], host_bundle: int, member_bundles: Sequence[int], host_ip: str) -> str:
    """Loopback when every member's bundle is on the host's node, else the host node's address."""
    host_node = bundle_nodes[host_bundle]
    return LOOPBACK if all(bundle_nodes[b] == host_node for b in member_bundles) else host_ip


def bundle_nodes(pg: PlacementGroup) -> dict[int, str]:
    """Placement bundle index -> the Ray node id holding it."""
    return {int(index): node for index, node in placement_group_table(pg)["bundles_to_node_id"].items()}


def _node_ip_and_free_port() -> tuple[str, int]:
    return ray.util.get_node_ip_address(), free_port()


def rendezvous(
    pg: PlacementGroup, host_bundle: int, member_bundles: Sequence[int], timeout_s: float
) -> tuple[str, int]:
    """(address, port) for a group hosted in ``host_bundle`` of ``pg`` with members in ``member_bundles``.

    A zero-CPU task placed in the host's bundle reads its node's address and
    a free port there; the placement group's table says which node holds
    each bundle.
    """
    probe = ray.remote(num_cpus=0)(_node_ip_and_free_port).options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=host_bundle)
    )
    try:
        host_ip, port = ray.get(probe.remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise AharlError(
            f"could not reach the node of placement bundle {host_bundle} within {timeout_s:g}s to pick a rendezvous port"
        ) from None
    return meeting_address(bundle_nodes(pg), host_bundle, member_bundles, host_ip), port
