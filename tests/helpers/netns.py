"""Two network namespaces joined by a veth pair: two hosts with their own addresses on one machine.

A Ray node started in each has its own node address, so an address bound
on the wrong node fails here as it would between real machines (a second
loopback address would hide that: every process could still reach it).
Needs root and iproute2; everything it creates it removes.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]


def netns_available() -> str | None:
    """Why two namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"aharlprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


@contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    """Namespaces ``a`` and ``b`` with 10.X.Y.1 and 10.X.Y.2 (/24) on a veth pair; X, Y drawn at random."""
    tag = f"{os.getpid() % 100000}"
    subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
    hosts = (Host(f"aharl{tag}a", f"{subnet}.1"), Host(f"aharl{tag}b", f"{subnet}.2"))
    veth = (f"ah{tag}a", f"ah{tag}b")
    created: list[str] = []
    try:
        for host in hosts:
            _ip("netns", "add", host.namespace)
            created.append(host.namespace)
        _ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for host, end in zip(hosts, veth):
            _ip("link", "set", end, "netns", host.namespace)
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", end)
            _ip("-n", host.namespace, "link", "set", end, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        yield hosts
    finally:
        for namespace in created:
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
            for pid in pids:  # whatever still runs in it (its veth end goes with the namespace)
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
