"""The run's bookkeeping is used in one order; a call out of it is a bug that must not pass silently."""

from __future__ import annotations

import pytest

from aharl.config import load_config
from aharl.trainer.lifecycle import RunLifecycle


def test_the_run_lifecycle_refuses_calls_out_of_order(tmp_path):
    config = load_config("quickstart", [f"logging.output_dir={tmp_path}"])
    run = RunLifecycle(config, print, progress_bar=False)
    try:
        assert (run.run_dir / "config.yaml").is_file()  # constructed: the directory is open
        with pytest.raises(RuntimeError, match=r"RunLifecycle.begin needs phase 'attached' but the run is 'opened'"):
            run.begin()  # before the actors exist there is nothing to sync or evaluate
        with pytest.raises(RuntimeError, match=r"RunLifecycle.attach needs phase 'tracking'"):
            run.attach(None, None, None, None, [])
        with pytest.raises(RuntimeError, match=r"RunLifecycle.after_step needs phase 'running'"):
            run.after_step(1, {}, [])
        with pytest.raises(RuntimeError, match=r"RunLifecycle.finish needs phase 'running'"):
            run.finish()
    finally:
        run.close()
