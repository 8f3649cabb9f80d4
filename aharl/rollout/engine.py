"""What every rollout backend provides, the sampling settings they share, and the one place that builds them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from aharl.config import RolloutConfig
from aharl.types import Prompt, RolloutGroup


@dataclass(frozen=True)
class SamplingSettings:
    """One generation request's knobs, identical for every backend."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    # Benchmarks only: keep sampling past EOS so every completion has max_tokens.
    ignore_eos: bool = False

    @classmethod
    def from_config(cls, config: RolloutConfig, step: int = 0) -> "SamplingSettings":
        # A different seed per step: the same seed would resample the same noise.
        return cls(config.n, config.temperature, config.top_p, config.max_tokens, config.seed + step)

    def prompt_seed(self, prompt_index: int) -> int:
        """The seed of one prompt's group: the step's seed and the prompt's index, nothing else.

        A group then does not depend on which engine sampled it or what else
        was in that engine's batch, so a run samples the same groups with one
        rollout engine or several.
        """
        return (self.seed * 1_000_003 + prompt_index) % 2**63


class RolloutEngine(Protocol):
    """Every method the runtime, the evaluation and the benchmarks call on a rollout backend.

    The weight-receiving methods are one per transport of :mod:`aharl.sync`;
    a backend that cannot take a transport says so in one line.
    """

    eos_id: int | None

    def generate(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> list[RolloutGroup]:
        """``settings.n`` completions for each prompt, in prompt order."""

    def completion_logprobs(
        self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]]
    ) -> list[list[float]]:
        """Log-probs of each completion's tokens after its prompt (temperature 1)."""

    def sleep(self, keep_weights: bool = True) -> None:
        """Free the accelerator's memory for the update (colocated layout); a no-op where not supported.

        ``keep_weights=False`` when a weight sync follows: the weights may be
        discarded, and generating before the sync refills them is refused.
        """

    def wake_weights(self) -> None:
        """Bring the weights back so a sync can overwrite them."""

    def wake_kv_cache(self) -> None:
        """After a sync: drop stale cached prefixes and restore the KV cache."""

    def load_weight_files(self, paths: list[str]) -> int:
        """Receive side of :mod:`aharl.sync.shm`; returns the tensor count."""

    def load_cuda_ipc_bucket(self, bucket: dict[str, Any], final: bool = True) -> int:
        """Receive side of :mod:`aharl.sync.cuda_ipc`, one bucket; ``final``: the sync's last bucket."""

    def init_nccl(self, master_address: str, master_port: int, first_rank: int, world_size: int) -> None:
        """Join the broadcast group of :mod:`aharl.sync.nccl`: each engine worker as ``first_rank`` + its rank."""

    def load_from_nccl(self, meta: list[tuple[str, str, list[int]]]) -> int:
        """Receive side of :mod:`aharl.sync.nccl`."""

    def parameter_checksum(self) -> float:
        """Sum of |w| over the parameters: a fingerprint to compare across a sync."""
