"""What every rollout backend provides, and the sampling settings they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

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


class RolloutEngine(Protocol):
    """A backend that samples groups and reports log-probs of given completions."""

    def generate(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> list[RolloutGroup]:
        """``settings.n`` completions for each prompt, in prompt order."""

    def completion_logprobs(self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]]) -> list[list[float]]:
        """Log-probs of each completion's tokens after its prompt (temperature 1)."""
