"""The sync chosen from what the GPUs allow: every row of the decision table, and the probe on a machine without GPUs."""

from __future__ import annotations

import pytest

from aharl.config import load_config
from aharl.runtime.topology import Topology, choose_sync, probe_topology
from tests.helpers.paths import CONFIGS

ONE_GPU = CONFIGS / "gsm8k-qwen2.5-0.5b-3090.yaml"
TWO_GPU = CONFIGS / "gsm8k-qwen2.5-0.5b-2gpu.yaml"
AUTO = ["sync.method=auto"]  # what the shipped GPU configs say


@pytest.mark.parametrize(
    "config_file, topology, method, env, reason",
    [
        (ONE_GPU, Topology(("NVIDIA GeForce RTX 3090",), cuda_ipc=True), "cuda_ipc", {}, "share one GPU"),
        (ONE_GPU, Topology(("NVIDIA GeForce RTX 3090",), wsl=True, cuda_ipc=False), "shm", {}, "refused on WSL"),
        (ONE_GPU, Topology(("NVIDIA A100-SXM4-40GB MIG 1g.5gb",), cuda_ipc=False), "shm", {}, "VM, MIG slice"),
        (ONE_GPU, Topology(), "cuda_ipc", {}, "not probed"),
        (TWO_GPU, Topology(("NVIDIA H100 80GB HBM3",) * 2, peer_to_peer=True), "nccl", {}, "their own GPUs"),
        (
            TWO_GPU,
            Topology(("NVIDIA GeForce RTX 4090",) * 2, peer_to_peer=False),
            "nccl",
            {"NCCL_P2P_DISABLE": "1"},
            "no peer-to-peer",
        ),
        (TWO_GPU, Topology(("NVIDIA GeForce RTX 3090",)), "nccl", {"NCCL_P2P_DISABLE": "1"}, "consumer cards"),
        (TWO_GPU, Topology(("NVIDIA H100 80GB HBM3",)), "nccl", {}, "their own GPUs"),
    ],
)
def test_auto_sync_follows_the_decision_table(config_file, topology, method, env, reason):
    choice = choose_sync(load_config(config_file, AUTO), "cuda", topology)
    assert (choice.method, choice.env) == (method, env)
    assert reason in choice.reason
    assert choice.line().startswith(f"weight sync: {method} (")


def test_an_explicit_method_is_kept_and_cpu_runs_use_shared_memory_files():
    refused = Topology(("NVIDIA GeForce RTX 3090",), cuda_ipc=False)
    assert choose_sync(load_config(ONE_GPU, ["sync.method=cuda_ipc"]), "cuda", refused).method == "cuda_ipc"
    assert choose_sync(load_config(ONE_GPU, AUTO), "cpu", Topology()).method == "shm"
    assert (
        choose_sync(load_config(ONE_GPU, ["sync.method=nccl", "placement.device=cpu"]), "cpu", Topology()).method
        == "nccl"
    )
    assert choose_sync(load_config(TWO_GPU, [*AUTO, "rollout.backend=hf"]), "cuda", Topology()).method == "shm"


def test_the_probe_on_a_machine_without_gpus_finds_none():
    found = probe_topology()
    assert found.gpu_names == () and found.cuda_ipc is None and found.peer_to_peer is None
