"""Collective broadcast: learner rank 0 sends every tensor to the rollout worker(s).

Both sides join one group formed once (:class:`Group`, same call on each side
with its own rank; the learner is rank 0). The receiver learns names,
dtypes and shapes first (``meta``), then takes the tensors in that order.

On GPUs the group is NCCL (vLLM's ``PyNcclCommunicator`` over its stateless
group, which leaves torch.distributed's default group to DeepSpeed). On CPU
the same rendezvous, rank arithmetic, metadata and per-tensor loads run over
a gloo group (vLLM's stateless torch process group), so ``sync.method=nccl``
on CPU means "collective over gloo" and the suite runs this transport end to
end. Only :meth:`Group.broadcast` and :meth:`Group.finish` differ by device.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from typing import Any, Iterable, Iterator, MutableMapping, Sequence

import torch

# (name, dtype name, shape) of each tensor, in broadcast order.
WeightMeta = tuple[str, str, list[int]]


class Group:
    """One member of the broadcast group; rank 0 is the sender."""

    def __init__(self, address: str, port: int, rank: int, world_size: int, device: Any) -> None:
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        if self.device.type == "cuda":
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup

            store_group = StatelessProcessGroup.create(host=address, port=port, rank=rank, world_size=world_size)
            self._nccl = PyNcclCommunicator(store_group, device=self.device)
        else:
            from vllm.distributed.utils import stateless_init_torch_distributed_process_group

            pin_gloo_interface(address)
            self._gloo = stateless_init_torch_distributed_process_group(address, port, rank, world_size, "gloo")

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0's ``tensor`` into every member's ``tensor`` (same shape and dtype on each side)."""
        if self.device.type == "cuda":
            self._nccl.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
        else:
            self._gloo.broadcast(tensor, 0).wait()

    def finish(self) -> None:
        """Wait until every broadcast issued so far has landed (NCCL runs on a stream; gloo already waited)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ioctl that reads an interface's IPv4 address (linux/sockios.h).
SIOCGIFADDR = 0x8915


def _ipv4_of(interface: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", interface[:15].encode()))
        except OSError:  # no IPv4 address on it
            return None
    return socket.inet_ntoa(packed[20:24])


def interface_towards(address: str) -> str | None:
    """This host's network interface that traffic to ``address`` leaves by; None for loopback or when unknown."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((address, 9))  # UDP: picks the route, sends nothing
            local = s.getsockname()[0]
        except OSError:
            return None
    if local.startswith("127."):
        return None
    return next((name for _, name in socket.if_nameindex() if _ipv4_of(name) == local), None)


def pin_gloo_interface(address: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Make gloo announce the interface that reaches ``address``, not the one the hostname resolves to.

    gloo tells its peers to connect to the address of this host's name;
    many hosts (Debian's default ``/etc/hosts`` among them) map the name to
    127.0.1.1, so peers on other nodes are told to connect to their own
    loopback and the group never forms ("Connection refused"). A user's
    ``GLOO_SOCKET_IFNAME`` wins; a group that meets on loopback is left alone.
    """
    if "GLOO_SOCKET_IFNAME" not in environ and (interface := interface_towards(address)):
        environ["GLOO_SOCKET_IFNAME"] = interface


def meta_of(shapes: Iterable[tuple[str, torch.dtype, Sequence[int]]]) -> list[WeightMeta]:
    """What the receiver allocates: the full shapes (under ZeRO-3, ``ds_shape``, not the ``[0]`` placeholder)."""
    return [(name, str(dtype).removeprefix("torch."), list(shape)) for name, dtype, shape in shapes]


def send(group: Group, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
    count = 0
    for _, tensor in weights:
        group.broadcast(tensor.contiguous())
        count += 1
    group.finish()
    return count


def receive(group: Group, meta: Sequence[WeightMeta]) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor of ``meta`` in order, received into a fresh buffer on the group's device."""
    for name, dtype, shape in meta:
        tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=group.device)
        group.broadcast(tensor)
        yield name, tensor
    group.finish()
