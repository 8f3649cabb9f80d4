"""A new run never appends to, or overwrites, an earlier run's files of the same name."""

from __future__ import annotations

from aharl.trainer.lifecycle import prepare_run_directory


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
