"""A clean stop on SIGINT / SIGTERM: finish the step, write a checkpoint, exit.

The handler only sets a flag that the driver loop reads between steps, so a
signal never lands inside a half-applied update or a half-written checkpoint.
A second Ctrl-C aborts at once (without a checkpoint) for a user who cannot
wait for the step to end.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("aharl")


class StopSignals:
    """Context manager: ``requested`` names the signal once one has arrived."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = name
        log.warning("%s: stopping after this step with a checkpoint (Ctrl-C again to quit at once, without one)", name)

    @property
    def exit_code(self) -> int:
        """128 + signal number, the shell's convention for 'ended by this signal'."""
        return 128 + int(getattr(signal, self.requested)) if self.requested else 0
