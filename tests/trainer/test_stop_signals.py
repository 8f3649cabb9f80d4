"""Ctrl-C and SIGTERM ask for a stop after the step (with a checkpoint); a second Ctrl-C quits at once."""

from __future__ import annotations

import os
import signal

import pytest

from aharl.trainer.stop import StopSignals


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_is_a_request_read_between_steps_with_the_shells_exit_code(sig, code):
    before = signal.getsignal(sig)
    with StopSignals() as stop:
        assert stop.requested is None and stop.exit_code == 0
        os.kill(os.getpid(), sig)  # delivered before kill() returns on the main thread
        assert stop.requested == sig.name  # the handler only set a flag: we are still here
        assert stop.exit_code == code
    assert signal.getsignal(sig) is before  # the caller's handler is back


def test_a_second_ctrl_c_quits_at_once():
    with pytest.raises(KeyboardInterrupt):
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested == "SIGINT"
            os.kill(os.getpid(), signal.SIGINT)
