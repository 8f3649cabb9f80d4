"""What a user watches: the ETA, the plots, the samples log, wandb in offline mode (no network)."""

from __future__ import annotations

import json
import os

import pytest

from aharl.config import load_config
from aharl.errors import AharlError
from aharl.tracking.plots import moving_average, plot_run
from aharl.tracking.progress import Progress, eta_seconds, format_duration
from aharl.tracking.wandb_run import WandbRun


def test_eta_uses_recent_steps_and_skips_the_slow_first_one():
    assert eta_seconds([], 10) is None
    assert eta_seconds([30.0], 4) == 120.0
    assert eta_seconds([30.0, 10.0, 12.0], 5) == 55.0  # mean of 10 and 12
    assert [format_duration(s) for s in (5, 125, 3 * 3600 + 120)] == ["5s", "2m05s", "3h02m"]


def test_step_lines_carry_the_eta_when_there_is_no_terminal():
    lines = []
    progress = Progress(total_steps=4, first_step=1, print_fn=lines.append, bar=False)
    progress.step_done(1, 20.0, 0.5, "step 1/4")
    progress.step_done(2, 10.0, 0.6, None)  # not shown (logging.every_steps)
    progress.step_done(3, 10.0, 0.6, "step 3/4")
    assert lines == ["step 1/4 | eta 1m00s", "step 3/4 | eta 10s"]


def write_metrics(run_dir, steps: int) -> None:
    rows = [{"step": 0, "eval/accuracy_numeric": 0.1, "eval/accuracy_exact": 0.0}]
    for s in range(1, steps + 1):
        rows.append(
            {
                "step": s,
                "reward/total": s / steps,
                "reward/answer_number": s / (2 * steps),
                "reward/brevity": 0.25,
                "reward/errors": 0.0,
                "reward/zero_spread_groups": 0.5,
                "kl": 0.001 * s,
                "completion/length": 40 - s,
                "completion/max_length": 48,
                "time/step": 17.5,
                "time/generate": 2.0,
                "time/reward": 0.01,
                "time/reference": 0.0,
                "time/train": 15.0,
                "time/sync": 0.5,
            }
        )
    rows.append({"step": steps, "eval/accuracy_numeric": 0.6, "eval/accuracy_exact": 0.1})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 99, "rew')


def test_plot_writes_one_png_per_view_from_the_metrics_file(tmp_path):
    write_metrics(tmp_path, 30)
    paths = plot_run(tmp_path)
    assert sorted(p.name for p in paths) == ["eval.png", "kl.png", "length.png", "rewards.png", "timings.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_plot_of_a_directory_without_metrics_is_a_one_line_error(tmp_path):
    with pytest.raises(AharlError, match="metrics.jsonl does not exist"):
        plot_run(tmp_path)


def test_moving_average_is_a_trailing_mean():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


@pytest.fixture
def isolated_wandb(tmp_path, monkeypatch):
    """wandb with no state from the environment or from an earlier test in this process.

    ``wandb.teardown()`` first drops the process-wide wandb singleton (its settings
    were read from the environment when it was made) and stops the service an earlier
    test may have started, clearing that service's ``WANDB_SERVICE``; one still set
    then belongs to a parent process, and is hidden (restored after the test).
    """
    import wandb

    wandb.teardown()
    for name in list(os.environ):
        if name.startswith("WANDB_") and name != "WANDB_SERVICE":
            monkeypatch.delenv(name)
    if "WANDB_SERVICE" in os.environ:  # a service of a parent process, not ours
        monkeypatch.delenv("WANDB_SERVICE")
    home = tmp_path / "wandb-home"
    for var, sub in (
        ("WANDB_DIR", "dir"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ):
        (home / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield wandb
    wandb.teardown()


def test_wandb_offline_writes_a_run_directory_with_metrics_and_sample_tables(tmp_path, isolated_wandb):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = load_config(None, ["logging.wandb_mode=offline", "logging.wandb_project=aharl-test"])
    run = WandbRun(config, run_dir)
    run.log(
        1,
        {"reward/total": 0.25, "kl": 0.0},
        [{"question": "2 + 2?", "gold": "4", "completion": "It is 4.", "reward": 1.0}],
    )
    run.log(2, {"reward/total": 0.5, "kl": 0.01})
    run_id = run.run_id
    run.finish()  # returns once the data is on disk: the file is read at once, in this process
    (offline,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    history = (offline / f"run-{run_id}.wandb").read_bytes()
    assert b"reward/total" in history
    (table,) = (offline / "files" / "media" / "table").glob("samples_*.table.json")
    assert json.loads(table.read_text())["data"] == [[1, "2 + 2?", "4", "It is 4.", 1.0]]
    assert not (tmp_path / "wandb-home" / "dir" / "wandb").exists()  # the run went to run_dir, not WANDB_DIR


def test_wandb_off_needs_nothing_and_logs_nothing(tmp_path):
    run = WandbRun(load_config(None, []), tmp_path)
    run.log(1, {"reward/total": 1.0})
    run.finish()
    assert run.run_id is None and not (tmp_path / "wandb").exists()
