"""What a resumed run may change in its config, and what it may not.

A resume promises the run that would have happened without the interruption.
Keys that only say how long to train, what to log, where actors run or how
weights travel keep that promise and may change (each change is noted). Keys
that change what is trained or how (the model, the data and its held-out
split, the group size, the sampling, the seeds, the loss, the optimizer, the
precision and ZeRO partitioning of the saved state) break it: the resume is
refused with a line naming the first such key.

``rollout.num_engines`` may change because every prompt's sampling seed is
its own (the groups do not depend on how prompts are split over engines);
``placement.learner_gpus`` may not, because the optimizer state is saved in
per-rank ZeRO shards.
"""

from __future__ import annotations

from typing import Any

import yaml

MAY_CHANGE_PREFIXES = ("logging.", "checkpoint.")
MAY_CHANGE = {
    "resume",
    "learner.max_steps",
    "learner.epochs",
    "learner.max_skipped_in_a_row",
    "learner.timeout_s",
    "rollout.timeout_s",
    "learner.logprob_chunk_rows",
    "learner.gradient_checkpointing",
    "learner.packing",
    "learner.max_tokens_per_micro_batch",
    "placement.gpu_memory_gib",
    "eval.every_steps",
    "eval.report_questions",
    "rewards.num_workers",
    "rewards.timeout_s",
    "rollout.num_engines",
    "rollout.gpu_memory_utilization",
    "rollout.sleep_during_update",
    "rollout.enforce_eager",
    "placement.layout",
    "placement.rollout_gpus",
    "placement.learner_resources",
    "placement.rollout_resources",
    "sync.method",
    "sync.bucket_mb",
    "sync.logp_diff_warn",
    "sync.on_mismatch",
    "sync.mismatch_steps",
    "sync.timeout_s",
}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def may_change(key: str) -> bool:
    return key in MAY_CHANGE or key.startswith(MAY_CHANGE_PREFIXES)


def config_changes(saved_yaml: str, current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(allowed, refused)``: the keys whose value differs between a checkpoint's config and this run's.

    A key that only one side has (a config of another aharl version) is not a
    change: its default applies.
    """
    saved = flatten(yaml.safe_load(saved_yaml) or {})
    now = flatten(yaml.safe_load(yaml.safe_dump(current)) or {})
    changed = sorted(k for k in saved.keys() & now.keys() if saved[k] != now[k] and k != "resume")
    return [k for k in changed if may_change(k)], [k for k in changed if not may_change(k)]


def describe(key: str, saved_yaml: str, current: dict[str, Any]) -> str:
    """``key`` as ``old -> new`` for a message."""
    old = flatten(yaml.safe_load(saved_yaml) or {}).get(key)
    new = flatten(current).get(key)
    return f"`{key}` ({old!r} in the checkpoint, {new!r} now)"
