"""LoRA in the learner: adapters train, the base stays, and every copy that leaves is the merged policy.

A real ``Learner`` (DeepSpeed ZeRO-2 on gloo) with ``model.lora`` takes two
updates of a tiny Llama in a subprocess (DeepSpeed's process group is
per-process). What must hold, each checked against an independent path:

- only the adapters move; the base weights stay bit-identical to the file;
- the merged weights the rollout engine receives equal PEFT's own
  ``merge_and_unload`` of the learner's model, and a plain transformers model
  holding them gives the learner's log-probs (the sync check's premise);
- the KL reference (adapters off) is the base model's forward;
- the checkpoint holds the adapters, not the base, and a fresh learner that
  loads it hands out the same merged weights;
- the export loads in transformers as the merged model and, under
  ``adapter/``, in PEFT on top of the base.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO

PROBE = r"""
import copy, json, os, sys, tempfile
import torch, torch.distributed
from safetensors.torch import load_file
from aharl.config import load_config
from aharl.grpo.batch import build_micro_batches
from aharl.learner.learner import Learner
from aharl.types import Completion, Prompt, RolloutGroup, ScoredGroup

model_dir, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = load_config(None, [f"model.path={model_dir}", "placement.device=cpu", "learner.prompts_per_step=2", "learner.micro_batch_prompts=1",
                            "rollout.n=4", "grpo.beta=0.04", "learner.lr=5e-2", "learner.warmup_ratio=0", "learner.max_grad_norm=10",
                            "learner.gradient_checkpointing=false", "model.lora.r=4", "model.lora.alpha=8"])
learner = Learner(config, total_steps=4, master_port=port)
initial = load_file(os.path.join(model_dir, "model.safetensors"))

groups, totals = [], []
gen = torch.Generator().manual_seed(0)
for index in range(2):
    prompt = torch.randint(5, 500, (6,), generator=gen).tolist()
    comps = [Completion(torch.randint(5, 500, (5 + k,), generator=gen).tolist(), "x", "stop", [-1.0] * (5 + k)) for k in range(4)]
    groups.append(ScoredGroup(RolloutGroup(Prompt(index, "q", "1", "t", prompt), comps), {}, [0.0] * 4))
advantages = torch.tensor([1.0, -1.0, 0.5, -0.5] * 2)  # [8]
batches = build_micro_batches(groups, advantages, 1, 0, packing="padded")
prompt_ids = [g.group.prompt.token_ids for g in groups for _ in g.group.completions]
completion_ids = [c.token_ids for g in groups for c in g.group.completions]

def reference_logp():
    return torch.cat([learner._reference_logp(mb.to("cpu")).flatten() for mb in batches])

before = {name: t.clone() for name, t in learner.named_weights()}
ref_before = reference_logp()
for _ in range(2):
    metrics = learner.train_step(batches, num_sequences=8, num_tokens=float(sum(b.completion_mask.sum() for b in batches))).metrics
after = {name: t.clone() for name, t in learner.named_weights()}
peft_model = learner.engine.module
trainable = sorted({("lora" if "lora_" in n else n) for n, p in peft_model.named_parameters() if p.requires_grad})
base_unchanged = all(torch.equal(p.detach(), initial[n.removeprefix("base_model.model.").replace(".base_layer.", ".")])
                     for n, p in peft_model.named_parameters() if "lora_" not in n)

independent = copy.deepcopy(peft_model).merge_and_unload().state_dict()
merge_gap = max((after[n] - independent[n]).abs().max().item() for n in after)
changed = sorted(n for n in after if not torch.equal(after[n], before[n]))

from transformers import AutoModelForCausalLM
plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
plain.load_state_dict(after, strict=False)
plain.eval()
from aharl.learner.forward import completion_logprobs
ours = learner.completion_logprobs(prompt_ids, completion_ids)
theirs = [completion_logprobs(plain, mb, 1024)[0] for mb in batches]
theirs = [row[: len(c)].tolist() for t in theirs for row, c in zip(t, completion_ids)]
sync_gap = max(abs(a - b) for ra, rb in zip(ours, theirs) for a, b in zip(ra, rb))

base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
base_logp = torch.cat([completion_logprobs(base, mb, 1024)[0].flatten() for mb in batches])
ref_gap = max((reference_logp() - base_logp).abs().max().item(), (ref_before - base_logp).abs().max().item())
merged_logp = torch.cat([completion_logprobs(plain, mb, 1024)[0].flatten() for mb in batches])
policy_vs_base = (merged_logp - base_logp).abs().max().item()

ckpt = tempfile.mkdtemp()
learner.save_state(ckpt)
ckpt_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ckpt) for f in fs if "model_states" in f)
fresh = Learner(config, total_steps=4, master_port=port)
fresh_before = max((t - before[n]).abs().max().item() for n, t in fresh.named_weights())
fresh.load_state(ckpt)
resume_gap = max((t - after[n]).abs().max().item() for n, t in fresh.named_weights())

export = os.path.join(tempfile.mkdtemp(), "final")
learner.export_hf(export)
loaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).state_dict()
export_gap = max((loaded[n] - after[n]).abs().max().item() for n in after)
from peft import PeftModel
adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), os.path.join(export, "adapter"))
adapter_state = adapter.merge_and_unload().state_dict()
adapter_gap = max((adapter_state[n] - after[n]).abs().max().item() for n in after)

json.dump({"trainable": trainable, "base_unchanged": base_unchanged, "merge_gap": merge_gap, "changed": changed,
           "sync_gap": sync_gap, "ref_gap": ref_gap, "policy_vs_base": policy_vs_base, "ckpt_bytes": ckpt_bytes,
           "model_bytes": os.path.getsize(os.path.join(model_dir, "model.safetensors")), "fresh_before": fresh_before,
           "resume_gap": resume_gap, "export_gap": export_gap, "adapter_gap": adapter_gap, "loss": metrics["loss"],
           "exported": sorted(os.listdir(export)), "adapter_files": sorted(os.listdir(os.path.join(export, "adapter")))}, open(out, "w"))
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_lora_trains_adapters_only_and_every_copy_out_is_the_merged_policy(tmp_path, smollm2_tokenizer):
    from aharl.runtime.rendezvous import free_port
    from tests.helpers.toy import build_tiny_model

    model = build_tiny_model(tmp_path / "model", smollm2_tokenizer)
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(model), str(free_port()), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    r = json.loads(out.read_text())

    assert r["trainable"] == ["lora"], "only the adapters may be trainable"
    assert r["base_unchanged"], "a frozen base weight moved"
    # Every targeted linear layer's merged weight moved; embeddings and norms did not.
    assert r["changed"] and all(n.endswith("proj.weight") for n in r["changed"])
    assert r["merge_gap"] < 1e-6, "the weights sent to vLLM are not PEFT's merge of the learner's model"
    assert r["policy_vs_base"] > 1e-2, "the updates did not change the policy: the checks below would prove nothing"
    assert r["sync_gap"] < 1e-5, "a plain model with the merged weights does not reproduce the learner's log-probs"
    assert r["ref_gap"] < 1e-5, "the KL reference is not the base model"
    assert r["ckpt_bytes"] < r["model_bytes"] / 10, "the checkpoint holds the frozen base, not the adapters only"
    assert r["fresh_before"] == 0.0 and r["resume_gap"] == 0.0, "the adapter checkpoint did not restore the policy"
    assert r["export_gap"] < 1e-6 and r["adapter_gap"] < 1e-6
    assert "model.safetensors" in r["exported"] and "adapter_config.json" in r["adapter_files"]
