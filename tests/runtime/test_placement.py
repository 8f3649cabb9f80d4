"""Placement of actors for both layouts, the sync method per device, and the rollout actor's environment."""

from __future__ import annotations

import pytest

from aharl.config import load_config
from aharl.errors import AharlError
from aharl.runtime.placement import plan_layout
from aharl.runtime.topology import choose_sync
from tests.helpers.paths import CONFIGS

ONE_GPU = CONFIGS / "gsm8k-qwen2.5-0.5b-3090.yaml"
TWO_GPU = CONFIGS / "gsm8k-qwen2.5-0.5b-2gpu.yaml"


def test_colocated_single_gpu_layout_shares_one_bundle():
    config = load_config(ONE_GPU)
    layout = plan_layout(config, "cuda")
    assert layout.bundles == [{"GPU": 1.0, "CPU": 2.0}]
    assert layout.rollouts[0].bundle_index == layout.learners[0].bundle_index == 0
    # Fractional shares of the one GPU that add up to it: vLLM gets its memory fraction.
    assert layout.rollouts[0].num_gpus == 0.3
    assert layout.learners[0].num_gpus + layout.rollouts[0].num_gpus == pytest.approx(1.0)
    assert layout.strategy == "STRICT_PACK"
    assert choose_sync(config, "cuda").method == "cuda_ipc"


@pytest.mark.parametrize("fraction", [0.3, 1 / 3, 0.3333, 0.33335, 0.1, 0.05, 0.99999, 0.00001])
def test_colocated_shares_fit_one_gpu_in_rays_units(fraction):
    """Ray counts GPU shares in 1e-4 units: 0.3333 + 0.667 is 10003 units, and never places."""
    config = load_config(ONE_GPU, [f"rollout.gpu_memory_utilization={fraction}"])
    layout = plan_layout(config, "cuda")
    units = [round(s.num_gpus * 10_000, 6) for s in (layout.learners[0], layout.rollouts[0])]
    assert all(u == int(u) and u >= 1 for u in units)
    assert sum(units) == 10_000
    assert abs(layout.rollouts[0].num_gpus - fraction) < 1e-4


def test_separate_two_gpu_layout_gives_rollout_its_own_gpu():
    config = load_config(TWO_GPU)
    layout = plan_layout(config, "cuda")
    assert layout.bundles == [{"GPU": 1.0, "CPU": 1.0}, {"GPU": 1.0, "CPU": 1.0}]
    assert [s.bundle_index for s in layout.learners] == [0] and layout.learners[0].num_gpus == 1.0
    assert layout.rollouts[0].bundle_index == 1 and layout.rollouts[0].num_gpus == 1.0
    assert choose_sync(config, "cuda").method == "nccl"


def test_multi_gpu_learner_ranks_each_get_a_gpu():
    config = load_config(TWO_GPU, ["placement.learner_gpus=2", "placement.rollout_gpus=2"])
    layout = plan_layout(config, "cuda")
    assert [s.bundle_index for s in layout.learners] == [0, 1]
    assert layout.bundles[-1] == {"GPU": 2.0, "CPU": 1.0} and layout.rollouts[0].bundle_index == 2


@pytest.mark.parametrize("layout_name, rollout_bundle", [("colocate", 0), ("separate", 1)])
def test_both_layouts_run_on_cpu_without_gpus(layout_name, rollout_bundle):
    config = load_config(ONE_GPU, [f"placement.layout={layout_name}", "sync.method=auto"])
    layout = plan_layout(config, "cpu")
    assert all("GPU" not in b for b in layout.bundles)
    assert all(s.num_gpus == 0 for s in [layout.rollouts[0], *layout.learners])
    assert layout.rollouts[0].bundle_index == rollout_bundle
    assert choose_sync(config, "cpu").method == "shm"


@pytest.mark.parametrize("layout_name", ["colocate", "separate"])
@pytest.mark.parametrize("method", ["shm", "cuda_ipc", "nccl"])
def test_every_transport_runs_in_both_layouts_on_cpu(method, layout_name):
    # nccl is a gloo collective and cuda_ipc its shared-memory twin on CPU: no GPU pairing rules apply.
    config = load_config(ONE_GPU, [f"placement.layout={layout_name}", f"sync.method={method}", "placement.device=cpu"])
    assert choose_sync(config, "cpu").method == method


@pytest.mark.parametrize("method, layout_name", [("nccl", "colocate"), ("cuda_ipc", "separate")])
def test_gpu_pairings_that_cannot_work_are_refused(method, layout_name):
    overrides = [f"placement.layout={layout_name}", f"sync.method={method}"]
    with pytest.raises(AharlError, match=f"`sync.method` = {method}"):
        load_config(ONE_GPU, overrides)  # placement.device=auto: a GPU machine would run it
    cpu_only = load_config(ONE_GPU, [*overrides, "placement.device=cpu"])
    with pytest.raises(
        AharlError, match=f"sync.method={method} cannot run with placement.layout={layout_name} on GPUs"
    ):
        choose_sync(cpu_only, "cuda").method


def test_groups_meet_on_loopback_on_one_node_and_at_rank_zeros_node_across_nodes():
    from aharl.runtime.rendezvous import meeting_address

    one_node = {0: "node-a", 1: "node-a", 2: "node-a"}
    assert meeting_address(one_node, 0, [0, 1, 2], "10.0.0.5") == "127.0.0.1"
    two_nodes = {0: "node-a", 1: "node-b", 2: "node-a"}
    assert meeting_address(two_nodes, 0, [0, 1, 2], "10.0.0.5") == "10.0.0.5"  # rank 0's node, not the driver's
    assert meeting_address(two_nodes, 0, [2], "10.0.0.5") == "127.0.0.1"  # only the members matter


def test_tensor_parallel_rollout_gets_every_rollout_gpu():
    from aharl.rollout.vllm_engine import engine_kwargs, rollout_workers

    separate = load_config(TWO_GPU, ["placement.rollout_gpus=2"])
    assert rollout_workers(separate, "cuda") == 2
    assert engine_kwargs(separate, "cuda")["tensor_parallel_size"] == 2
    assert plan_layout(separate, "cuda").rollouts[0].num_gpus == 2
    assert rollout_workers(separate, "cpu") == 1
    assert "tensor_parallel_size" not in engine_kwargs(separate, "cpu")
    with pytest.raises(AharlError, match="placement.rollout_gpus"):
        load_config(ONE_GPU, ["placement.rollout_gpus=2"])  # colocated vLLM shares one GPU


def test_rollout_actor_logs_vllm_warnings_only_unless_the_user_chose(monkeypatch):
    from aharl.runtime.cluster import rollout_env

    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    assert rollout_env() == {"VLLM_LOGGING_LEVEL": "WARNING"}
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    assert rollout_env() == {"VLLM_LOGGING_LEVEL": "DEBUG"}
