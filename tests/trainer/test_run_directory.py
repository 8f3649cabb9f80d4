"""A run directory belongs to one run: earlier files are kept aside, a second run is refused, a resume keeps its config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
import yaml

from aharl.config import dump_config, load_config
from aharl.errors import AharlError
from aharl.launch.main import main
from aharl.tracking.checkpoints import STATE_FILE, TrainerState, checkpoint_name
from aharl.trainer.lifecycle import LOCK_FILE, lock_run_directory, prepare_run_directory
from aharl.trainer.resume_rules import config_changes
from tests.helpers.paths import EMPTY_CONFIG, REPO
from tests.helpers.toy import toy_overrides, toy_workspace


def test_earlier_run_files_are_kept_aside(tmp_path):
    run = tmp_path / "quickstart"
    prepare_run_directory(run)
    assert list(run.iterdir()) == []
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "config.yaml").write_text("a: 1\n")
    prepare_run_directory(run)
    assert not (run / "metrics.jsonl").exists()
    (kept,) = [p for p in run.iterdir() if p.name.startswith("previous-")]
    assert (kept / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert (kept / "config.yaml").read_text() == "a: 1\n"


def toy_train_argv(tmp_path, smollm2_tokenizer, *overrides: str) -> list[str]:
    model_dir, reward_file = toy_workspace(tmp_path, smollm2_tokenizer)
    return ["train", str(EMPTY_CONFIG), *toy_overrides(model_dir, tmp_path / "runs", reward_file, *overrides)]


def test_a_second_run_on_the_same_directory_is_refused_and_touches_nothing(tmp_path, smollm2_tokenizer, capsys):
    run_dir = tmp_path / "runs" / "toy"
    argv = toy_train_argv(tmp_path, smollm2_tokenizer)
    first = lock_run_directory(run_dir)  # the run that is already there
    try:
        (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"run directory {run_dir} is in use by another aharl run (pid {os.getpid()}" in err
        # Nothing of the first run's moved aside, replaced or added to.
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE, "metrics.jsonl"]
        assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'
    finally:
        os.close(first)
    os.close(lock_run_directory(run_dir))  # free again once the first run ends


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from aharl.trainer.lifecycle import lock_run_directory as l; l(__import__('pathlib').Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(AharlError, match="in use by another aharl run"):
            lock_run_directory(run_dir)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    os.close(lock_run_directory(run_dir))


def test_resume_with_a_changed_math_key_is_refused_naming_the_key(tmp_path, smollm2_tokenizer, capsys):
    argv = toy_train_argv(tmp_path, smollm2_tokenizer, "resume=auto")
    config = load_config(EMPTY_CONFIG, argv[2:])
    checkpoint = tmp_path / "runs" / "toy" / "checkpoints" / checkpoint_name(3)
    shutil.copytree(config.model.path, checkpoint / "hf")  # a whole checkpoint's parts
    (checkpoint / "learner").mkdir()
    (checkpoint / "learner" / "latest").write_text("global_step3")
    torch.save({}, checkpoint / "learner" / "mp_rank_00_model_states.pt")
    sampler = {"epoch": 0, "position": 3, "num_prompts": 400, "seed": config.data.seed}
    (checkpoint / STATE_FILE).write_text(json.dumps(asdict(TrainerState(step=3, total_steps=16, sampler=sampler))))
    saved = dump_config(load_config(EMPTY_CONFIG, [*argv[2:], "rollout.n=4"]))
    (checkpoint / "config.yaml").write_text(saved)
    (tmp_path / "runs" / "toy" / "config.yaml").write_text(saved)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert (
        f"cannot resume from {checkpoint} with a changed `rollout.n` (4 in the checkpoint, {config.rollout.n} now)"
        in err
    )
    # The run's own config.yaml still describes the run that wrote the checkpoint.
    assert (tmp_path / "runs" / "toy" / "config.yaml").read_text() == saved


@pytest.mark.parametrize(
    "changed, allowed",
    [
        (["learner.max_steps=40", "logging.every_steps=5", "rollout.num_engines=2", "sync.timeout_s=60"], True),
        (["model.path=other"], False),
        (["data.seed=1"], False),
        (["rollout.n=4"], False),
        (["rollout.temperature=0.5"], False),
        (["grpo.beta=0.1"], False),
        (["learner.lr=1e-3"], False),
        (["placement.learner_gpus=2", "learner.prompts_per_step=4", "learner.micro_batch_prompts=1"], False),
        (["eval.num_questions=7"], False),  # the held-out split decides the training prompts
    ],
)
def test_what_a_resume_may_change(changed, allowed):
    saved = dump_config(load_config(None, []))
    allowed_keys, refused = config_changes(saved, load_config(None, changed).to_dict())
    assert (not refused) == allowed, refused
    if allowed:
        assert allowed_keys == sorted(c.split("=")[0] for c in changed)


def test_a_key_of_another_version_is_not_a_change():
    saved = yaml.safe_load(dump_config(load_config(None, [])))
    saved["learner"]["a_key_from_the_future"] = 1
    del saved["learner"]["max_skipped_in_a_row"]
    assert config_changes(yaml.safe_dump(saved), load_config(None, []).to_dict()) == ([], [])


def test_two_earlier_runs_within_one_second_are_kept_apart(tmp_path):
    run = tmp_path / "quickstart"
    for text in ("first", "second"):
        prepare_run_directory(run)
        (run / "logs").mkdir()
        (run / "logs" / "driver.log").write_text(text)
        os.utime(run / "logs", (1_700_000_000, 1_700_000_000))  # both "started" in the same second
    prepare_run_directory(run)
    kept = sorted(p for p in run.iterdir() if p.name.startswith("previous-"))
    assert len(kept) == 2
    assert sorted((p / "logs" / "driver.log").read_text() for p in kept) == ["first", "second"]
