"""Rollout with plain ``transformers`` ``generate``: the baseline vLLM is measured against.

It has the same interface as the vLLM engine, so the benchmark and the
trainer can swap one for the other, and it needs nothing beyond transformers
(a fallback where vLLM does not install). Weights arrive as safetensors files
or straight as tensors, since it lives in an ordinary process.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from aharl.config import Config
from aharl.device import rollout_dtype
from aharl.errors import AharlError
from aharl.grpo.batch import pad_sequences
from aharl.grpo.logprobs import token_logprobs
from aharl.modelhub import resolve_model_path
from aharl.rollout.engine import SamplingSettings
from aharl.types import Completion, Prompt, RolloutGroup

GPU_SYNC_UNSUPPORTED = (
    "rollout.backend=hf takes weights through shared-memory files only; set sync.method=shm (or auto)"
)


class HFEngine:
    """``model.generate`` over left-padded prompts, one call per batch of prompts."""

    def __init__(self, config: Config, device: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model_path(config.model.path)
        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=rollout_dtype(config, device)).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> list[RolloutGroup]:
        from transformers import GenerationConfig

        torch.manual_seed(settings.seed)
        repeated = [p.token_ids for p in prompts for _ in range(settings.n)]
        width = max(len(ids) for ids in repeated)
        input_ids = torch.full((len(repeated), width), self.pad_id, dtype=torch.long)  # [S, P], left-padded
        attention = torch.zeros_like(input_ids)
        for i, ids in enumerate(repeated):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention[i, width - len(ids) :] = 1
        greedy = settings.temperature == 0  # evaluation's greedy mode; training always samples
        sampling = {} if greedy else {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
        generation = GenerationConfig(
            do_sample=not greedy,
            **sampling,
            max_new_tokens=settings.max_tokens,
            eos_token_id=None if settings.ignore_eos else self.eos_id,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), generation_config=generation
        )
        new_tokens = out.sequences[:, width:].cpu()  # [S, T]
        logits = torch.stack(out.logits, dim=1).float().cpu()  # [S, T, V], raw (before temperature)
        logp = token_logprobs(logits, new_tokens)  # [S, T]
        completions = []
        for row, row_logp in zip(new_tokens.tolist(), logp):
            length = completion_length(row, self.eos_id, settings.ignore_eos)
            ids = row[:length]
            finish = (
                "stop"
                if length < len(row) or (ids and ids[-1] == self.eos_id and not settings.ignore_eos)
                else "length"
            )
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            completions.append(Completion(ids, text, finish, row_logp[:length].tolist()))
        n = settings.n
        return [RolloutGroup(p, completions[i * n : (i + 1) * n]) for i, p in enumerate(prompts)]

    @torch.no_grad()
    def completion_logprobs(
        self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]]
    ) -> list[list[float]]:
        ids, attention, positions, comp, _ = pad_sequences(prompt_ids, completion_ids, self.pad_id)
        logits = self.model(
            input_ids=ids.to(self.device),
            attention_mask=attention.to(self.device),
            position_ids=positions.to(self.device),
            logits_to_keep=comp.shape[1] + 1,
        ).logits[:, :-1]
        logp = token_logprobs(logits, comp.to(self.device)).float().cpu()
        return [row[: len(c)].tolist() for row, c in zip(logp, completion_ids)]

    def load_weight_files(self, paths: list[str]) -> int:
        from safetensors.torch import load_file

        state = {}
        for path in paths:
            state.update(load_file(path))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"unexpected weights: {unexpected[:3]}")
        return len(state)

    def load_cuda_ipc_bucket(self, bucket: dict[str, Any], final: bool = True) -> int:
        raise AharlError(GPU_SYNC_UNSUPPORTED)

    def init_nccl(self, master_address: str, master_port: int, first_rank: int, world_size: int) -> None:
        raise AharlError(GPU_SYNC_UNSUPPORTED)

    def load_from_nccl(self, meta: list[tuple[str, str, list[int]]]) -> int:
        raise AharlError(GPU_SYNC_UNSUPPORTED)

    def sleep(self, keep_weights: bool = True) -> None:
        pass

    def wake_weights(self) -> None:
        pass

    def wake_kv_cache(self) -> None:
        pass

    def shutdown(self) -> None:
        """Nothing to stop: the model lives in this process (vLLM's engine has a process of its own)."""

    def parameter_checksum(self) -> float:
        return float(sum(p.double().abs().sum().item() for p in self.model.parameters()))


def completion_length(token_ids: Sequence[int], eos_id: int | None, ignore_eos: bool = False) -> int:
    """Tokens up to and including the first EOS; padding after it does not count."""
    if ignore_eos or eos_id is None:
        return len(token_ids)
    for i, token in enumerate(token_ids):
        if token == eos_id:
            return i + 1
    return len(token_ids)
