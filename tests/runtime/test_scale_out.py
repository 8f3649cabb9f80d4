"""Several learner ranks and rollout engines: placement, the prompts' split, the pooled metrics, the transport across nodes."""

from __future__ import annotations

import pytest

from aharl.config import load_config
from aharl.errors import AharlError
from aharl.learner.learner import UpdateOutcome
from aharl.rollout.engine import SamplingSettings
from aharl.rollout.vllm_engine import core_share
from aharl.runtime.cluster import engine_core_shares, pool_rank_outcomes, split_evenly
from aharl.runtime.placement import plan_layout
from aharl.runtime.topology import SyncChoice, choose_sync
from aharl.types import SyncGap
from tests.helpers.paths import CONFIGS

ONE_GPU = CONFIGS / "gsm8k-qwen2.5-0.5b-3090.yaml"


def config_with(*overrides: str):
    return load_config(
        ONE_GPU, ["placement.device=cpu", "learner.prompts_per_step=4", "learner.micro_batch_prompts=1", *overrides]
    )


def test_prompts_split_in_order_with_sizes_differing_by_at_most_one():
    items = list(range(7))
    runs = split_evenly(items, 3)
    assert runs == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([0, 1], 3) == [[0], [1], []]


def test_a_groups_seed_depends_on_the_step_and_the_prompt_only():
    step3 = SamplingSettings(n=2, temperature=1.0, top_p=1.0, max_tokens=4, seed=3)
    assert step3.prompt_seed(17) == SamplingSettings(n=8, temperature=0.5, top_p=0.9, max_tokens=9, seed=3).prompt_seed(
        17
    )
    seeds = {SamplingSettings(2, 1.0, 1.0, 4, s).prompt_seed(i) for s in range(20) for i in range(500)}
    assert len(seeds) == 20 * 500  # no two (step, prompt) pairs share noise


@pytest.mark.parametrize("layout", ["colocate", "separate"])
def test_cpu_layouts_place_every_rank_and_engine(layout):
    plan = plan_layout(
        config_with(f"placement.layout={layout}", "placement.learner_gpus=2", "rollout.num_engines=2"), "cpu"
    )
    assert len(plan.learners) == 2 and len(plan.rollouts) == 2
    if layout == "colocate":  # engine e beside rank e
        assert [s.bundle_index for s in plan.learners] == [s.bundle_index for s in plan.rollouts] == [0, 1]
    else:
        assert [s.bundle_index for s in plan.rollouts] == [2, 3]
    used = {}
    for slot in [*plan.learners, *plan.rollouts]:
        used[slot.bundle_index] = used.get(slot.bundle_index, 0.0) + slot.num_cpus
    assert all(used[i] <= bundle["CPU"] for i, bundle in enumerate(plan.bundles))


def test_colocated_gpus_each_hold_a_rank_and_an_engine():
    config = load_config(ONE_GPU, ["placement.learner_gpus=4", "rollout.num_engines=4"])
    plan = plan_layout(config, "cuda")
    assert len(plan.bundles) == 4 and all(b["GPU"] == 1.0 for b in plan.bundles)
    for rank, engine in zip(plan.learners, plan.rollouts):
        assert rank.bundle_index == engine.bundle_index
        assert rank.num_gpus + engine.num_gpus == pytest.approx(1.0)
    with pytest.raises(AharlError, match="one engine per learner GPU"):
        plan_layout(
            load_config(
                ONE_GPU,
                [
                    "placement.learner_gpus=2",
                    "rollout.num_engines=3",
                    "learner.prompts_per_step=4",
                    "learner.micro_batch_prompts=1",
                ],
            ),
            "cuda",
        )


def test_separate_engines_get_their_own_tensor_parallel_gpus():
    config = load_config(
        ONE_GPU,
        [
            "placement.layout=separate",
            "placement.learner_gpus=2",
            "placement.rollout_gpus=2",
            "rollout.num_engines=3",
            "sync.method=auto",
        ],
    )
    plan = plan_layout(config, "cuda")
    assert plan.bundles[2:] == [{"GPU": 2.0, "CPU": 1.0}] * 3
    assert [s.bundle_index for s in plan.rollouts] == [2, 3, 4]


def test_custom_resources_pin_each_role_to_its_nodes():
    plan = plan_layout(
        config_with(
            "placement.layout=separate",
            "placement.learner_resources={learner_node: 0.01}",
            "placement.rollout_resources={rollout_node: 0.01}",
            "sync.method=auto",
        ),
        "cpu",
    )
    assert plan.bundles[0] == {"CPU": 0.5, "learner_node": 0.01}
    assert plan.bundles[1] == {"CPU": 0.5, "rollout_node": 0.01}


@pytest.mark.parametrize("bad", ["{CPU: 1}", "{node: -1}", "{node: fast}"])
def test_bad_custom_resources_are_one_line(bad):
    with pytest.raises(AharlError, match="placement.learner_resources"):
        config_with(f"placement.learner_resources={bad}")


def test_sync_gap_is_pooled_per_engine_over_ranks_and_reported_as_the_worst():
    # Rank 0 saw 10 tokens of engine 0 (gap sum 1.0); rank 1 saw 30 tokens of engine 0 (sum 1.0) and 10 of engine 1 (sum 5.0).
    rank0 = UpdateOutcome({"loss": 0.25, "grad_norm": 2.0}, SyncGap({0: 1.0}, {0: 10.0}))
    rank1 = UpdateOutcome({"loss": 0.5, "grad_norm": 2.0}, SyncGap({0: 1.0, 1: 5.0}, {0: 30.0, 1: 10.0}))
    pooled = pool_rank_outcomes([rank0, rank1])
    assert pooled.metrics == {"loss": 0.75, "grad_norm": 2.0}  # each rank's loss is its share of the step's
    metrics = pooled.gap.metrics(num_engines=2)
    assert metrics["sync/logp_diff/engine0"] == pytest.approx(2.0 / 40)  # token-weighted, not a mean of rank means
    assert metrics["sync/logp_diff/engine1"] == pytest.approx(0.5)
    assert metrics["sync/logp_diff"] == pytest.approx(0.5)  # the worst engine
    assert SyncGap({0: 1.0}, {0: 4.0}).metrics(num_engines=1) == {"sync/logp_diff": 0.25}
    assert SyncGap().metrics(num_engines=1, name="rollout/lag_logp_diff") == {"rollout/lag_logp_diff": 0.0}


def test_the_shared_memory_transport_is_kept_on_one_node_and_replaced_across_nodes():
    config = config_with("placement.layout=separate", "sync.method=auto")
    same, apart = {"learner_nodes": ["a"], "engine_nodes": ["a"]}, {"learner_nodes": ["a"], "engine_nodes": ["b"]}
    assert choose_sync(config, "cpu", **same) == SyncChoice("shm", "CPU run")
    moved = choose_sync(config, "cpu", **apart)
    assert moved.method == "nccl" and "another node" in moved.line()
    explicit = config_with("placement.layout=separate", "sync.method=shm")
    with pytest.raises(AharlError, match="sync.method=shm needs each rollout engine on its learner's node"):
        choose_sync(explicit, "cpu", **apart)
    nccl = config_with("placement.layout=separate", "sync.method=nccl")
    assert choose_sync(nccl, "cpu", **apart).method == "nccl"


def test_colocated_cuda_ipc_pairs_are_judged_per_gpu():
    config = load_config(ONE_GPU, ["placement.learner_gpus=2", "rollout.num_engines=2"])
    # Two nodes, one colocated pair on each: every engine is beside the rank that packs its buckets.
    assert choose_sync(config, "cuda", learner_nodes=["a", "b"], engine_nodes=["a", "b"]).method == "cuda_ipc"
    # Swapped, engine 0 is away from rank 0: auto moves to the collective transport.
    assert choose_sync(config, "cuda", learner_nodes=["a", "b"], engine_nodes=["b", "a"]).method == "nccl"


def test_engines_on_one_node_split_its_cores():
    shares = engine_core_shares(["a", "b", "a"])
    assert shares == {
        0: {"AHARL_CPU_CORE_SHARE": "0/2"},
        1: {"AHARL_CPU_CORE_SHARE": "0/1"},
        2: {"AHARL_CPU_CORE_SHARE": "1/2"},
    }
    cores = [0, 1, 2, 3, 4]
    assert core_share(cores, "0/1") == cores
    assert core_share(cores, "0/2") + core_share(cores, "1/2") == cores
    assert core_share([0, 1], "2/3") == [0]  # fewer cores than engines: one core each, shared


def test_gloo_announces_the_interface_that_reaches_the_group(monkeypatch):
    from aharl.sync import nccl

    environ: dict[str, str] = {}  # the process's own environment stays untouched
    nccl.pin_gloo_interface("127.0.0.1", environ)  # a group on loopback: gloo's default is right
    assert environ == {}
    monkeypatch.setattr(nccl, "interface_towards", lambda address: "veth7")
    nccl.pin_gloo_interface("10.1.2.3", environ)
    assert environ == {"GLOO_SOCKET_IFNAME": "veth7"}
    user = {"GLOO_SOCKET_IFNAME": "ib0"}  # the user's choice wins
    nccl.pin_gloo_interface("10.1.2.3", user)
    assert user == {"GLOO_SOCKET_IFNAME": "ib0"}
