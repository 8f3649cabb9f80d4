"""The learner's tensor layout: left-padded prompts, right-padded completions, real positions."""

from __future__ import annotations

import torch

from aharl.grpo.batch import build_micro_batches, pad_sequences
from aharl.rollout.hf_engine import completion_length
from aharl.types import Completion, Prompt, RolloutGroup, ScoredGroup

PAD = 0


def test_pad_sequences_layout():
    ids, attention, positions, comp, mask = pad_sequences([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], PAD)
    assert ids.tolist() == [[5, 6, 7, 1, 2, 0], [0, 0, 8, 3, 4, 9]]
    assert attention.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    # Real tokens count from 0 whatever the padding, as in vLLM.
    assert positions[1, 2:].tolist() == [0, 1, 2, 3]
    assert positions[0, :5].tolist() == [0, 1, 2, 3, 4]
    assert comp.tolist() == [[1, 2, 0], [3, 4, 9]] and mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def _group(prompt_ids, completions, index=0):
    prompt = Prompt(index, "q", "1", "t", prompt_ids)
    group = RolloutGroup(prompt, [Completion(c, "x", "stop", [-0.5] * len(c)) for c in completions])
    return ScoredGroup(group, {"r": [0.0] * len(completions)}, [0.0] * len(completions))


def test_micro_batches_hold_whole_groups_with_their_advantages():
    scored = [_group([1, 2], [[3], [4, 5]]), _group([6], [[7, 8, 9], [1]], 1), _group([2], [[3], [3]], 2)]
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0, 3.0, -3.0])
    batches = build_micro_batches(scored, adv, groups_per_micro_batch=2, pad_id=PAD)
    assert [b.input_ids.shape[0] for b in batches] == [4, 2]
    assert batches[0].advantages.tolist() == [1.0, -1.0, 2.0, -2.0]
    assert batches[1].advantages.tolist() == [3.0, -3.0]
    assert batches[0].rollout_logp[2].tolist() == [-0.5, -0.5, -0.5]
    assert batches[0].rollout_logp[3].tolist() == [-0.5, 0.0, 0.0]  # padding carries no log-prob
    assert batches[0].completion_mask.sum().item() == 1 + 2 + 3 + 1


def test_completion_length_counts_up_to_and_including_the_first_eos():
    eos = 2
    assert completion_length([5, 6, eos, eos, eos], eos) == 3  # padding after EOS excluded
    assert completion_length([5, 6, 7], eos) == 3  # no EOS: hit max_tokens
    assert completion_length([eos, 5], eos) == 1
    assert completion_length([5, eos, 6], eos, ignore_eos=True) == 3
