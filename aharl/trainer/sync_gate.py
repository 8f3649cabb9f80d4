"""The weight-sync gate: a run whose sampler stays out of step with its learner stops, instead of training on.

``sync/logp_diff`` is the mean |learner log-prob - rollout log-prob| over the
step's sampled tokens, measured before the update. Right after a sync both
hold the same weights, so it is round-off: ~1e-5 in fp32 on CPU (measured by
the quickstart and the test suite). A sync that silently did not land (the
failure users of other trainers report: sampling from the base weights for
hundreds of steps while the learner moves) makes it grow with every update.
A warning alone is easy to miss overnight; ``sync.on_mismatch=stop`` ends the
run after ``sync.mismatch_steps`` such steps in a row.
"""

from __future__ import annotations

import logging

from aharl.config import SyncConfig
from aharl.errors import AharlError

log = logging.getLogger("aharl")


class SyncMismatchError(AharlError):
    """The rollout engine kept sampling with weights other than the learner's."""


class SyncGate:
    def __init__(self, config: SyncConfig) -> None:
        self.config = config
        self.recent: list[float] = []

    def check(self, step: int, logp_diff: float, after_sync: bool) -> None:
        """Judge one step's ``sync/logp_diff``; ``after_sync``: a sync came right before its generation.

        Between syncs (``sync.interval_steps > 1``) the sampler is behind by
        design, so only steps that follow a sync count.
        """
        if not after_sync:
            return
        limit = self.config.logp_diff_warn
        if logp_diff <= limit:
            self.recent.clear()
            return
        self.recent.append(logp_diff)
        log.warning(
            "sync/logp_diff %.4f > sync.logp_diff_warn %.4f at step %d: the rollout engine's log-probs "
            "differ from the learner's; it may be sampling with stale weights",
            logp_diff,
            limit,
            step,
        )
        if self.config.on_mismatch == "stop" and len(self.recent) >= self.config.mismatch_steps:
            seen = ", ".join(f"{d:.3f}" for d in self.recent)
            raise SyncMismatchError(
                f"sync/logp_diff stayed above sync.logp_diff_warn={limit} for {len(self.recent)} synced steps in a row "
                f"(up to step {step}: {seen}): the rollout engine samples with weights other than the learner's, so the "
                "weight sync is not landing (a failed or skipped load in vLLM, a stale prefix cache, or a learner/rollout "
                "dtype mismatch); the run stopped and its last checkpoint is intact (resume=auto continues it); "
                "sync.on_mismatch=warn trains on regardless"
            )
