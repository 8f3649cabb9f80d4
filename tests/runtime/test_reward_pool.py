"""The reward pool on real Ray actors: bad reward code never stops a run, and is counted."""

from __future__ import annotations

import textwrap
import time

import pytest

from aharl.config import RewardsConfig
from aharl.rewards.calling import RewardBatch
from aharl.runtime.reward_pool import RewardPool, _split

GOOD = "<reasoning>\nx\n</reasoning>\n<answer>\n7\n</answer>\n"

USER_REWARDS = textwrap.dedent(
    """
    import os, time

    def boom(completions, answers):
        raise ValueError("reward bug")

    def slow(completions, answers):
        time.sleep(60)
        return [1.0] * len(completions)

    def sees_no_gpu(completions, answers):
        return [1.0 if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else 0.0] * len(completions)

    def die_once(completions, answers):
        # Kills its own worker process the first time, as a segfaulting reward would.
        marker = os.environ.get("AHARL_TEST_MARKER") or __file__ + ".died"
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return [1.0] * len(completions)
    """
)


@pytest.fixture
def rewards_file(tmp_path):
    path = tmp_path / "user_rewards.py"
    path.write_text(USER_REWARDS)
    return path


def test_split_covers_every_row_once():
    assert _split(5, 2) == [(0, 3), (3, 5)]
    assert _split(1, 3) == [(0, 1), (1, 1), (1, 1)]


def test_pool_scores_in_order_across_workers(ray_local):
    pool = RewardPool(RewardsConfig(functions=["correctness", "int"], num_workers=3))
    try:
        completions = [GOOD, "<answer>8</answer>", GOOD, "nothing", GOOD]
        scores, errors = pool.score(RewardBatch.of_texts(completions, ["7"] * 5))
        assert scores.per_function["correctness"] == [2.0, 0.0, 2.0, 0.0, 2.0]
        assert scores.total == [2.5, 0.5, 2.5, 0.0, 2.5]
        assert errors["reward/errors"] == 0.0
    finally:
        pool.shutdown()


def test_raising_reward_scores_zero_and_is_counted_while_others_count(ray_local, rewards_file, caplog):
    pool = RewardPool(RewardsConfig(functions=["correctness", f"{rewards_file}:boom"], num_workers=2))
    try:
        scores, errors = pool.score(RewardBatch.of_texts([GOOD] * 4, ["7"] * 4))
        assert scores.per_function["correctness"] == [2.0] * 4  # unaffected
        assert scores.per_function[f"{rewards_file}:boom"] == [0.0] * 4
        assert errors[f"reward_errors/fn/{rewards_file}:boom"] == 2.0  # once per worker chunk
        assert "reward bug" in caplog.text
    finally:
        pool.shutdown()


def test_reward_past_the_timeout_scores_zero_and_the_worker_is_replaced(ray_local, rewards_file):
    pool = RewardPool(RewardsConfig(functions=["correctness", f"{rewards_file}:slow"], num_workers=1, timeout_s=2))
    try:
        started = time.monotonic()
        scores, errors = pool.score(RewardBatch.of_texts([GOOD, GOOD], ["7", "7"]))
        assert time.monotonic() - started < 30  # did not wait for the 60 s sleep
        assert scores.total == [0.0, 0.0] and errors["reward_errors/timeout"] == 1.0
        # The replacement worker answers (and times out again on the same slow code, counted again).
        _, again = pool.score(RewardBatch.of_texts([GOOD], ["7"]))
        assert again["reward_errors/timeout"] == 1.0
    finally:
        pool.shutdown()


def test_worker_killed_mid_call_is_replaced_and_the_chunk_retried(ray_local, rewards_file, tmp_path, monkeypatch):
    pool = RewardPool(RewardsConfig(functions=["correctness", f"{rewards_file}:die_once"], num_workers=1, timeout_s=60))
    try:
        scores, errors = pool.score(RewardBatch.of_texts([GOOD, GOOD], ["7", "7"]))
        assert errors["reward_errors/worker_restarted"] == 1.0
        assert scores.per_function["correctness"] == [2.0, 2.0]  # the retry scored the chunk
        assert scores.per_function[f"{rewards_file}:die_once"] == [1.0, 1.0]
        scores, errors = pool.score(RewardBatch.of_texts([GOOD], ["7"]))
        assert errors["reward/errors"] == 0.0 and scores.total == [3.0]
    finally:
        pool.shutdown()


def test_reward_code_sees_no_gpu(ray_local, rewards_file):
    """A reward that touched CUDA would otherwise land on GPU 0, beside vLLM (Ray sets nothing for 0-GPU actors)."""
    pool = RewardPool(RewardsConfig(functions=[f"{rewards_file}:sees_no_gpu"], num_workers=1))
    try:
        scores, _ = pool.score(RewardBatch.of_texts([GOOD, GOOD], ["7", "7"]))
        assert scores.total == [1.0, 1.0]
    finally:
        pool.shutdown()
