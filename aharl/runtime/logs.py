"""Where the libraries' output goes: a run's ``logs/`` directory, so the console keeps aharl's own lines.

Ray, vLLM, DeepSpeed and transformers print start-up banners, INFO lines and
warnings from every actor. With ``library_logs`` on (``aharl train`` without
``--verbose``), each actor's stdout and stderr, and those of the processes it
starts (vLLM's engine core), go to ``<run>/logs/<role>.log``, and the
driver's library loggers and Python warnings to ``<run>/logs/driver.log``.
What needs the user's attention is aharl's own (the ``aharl`` logger and the
step lines), and an actor's crash still reaches the console with the error
that Ray raises in the driver.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

DRIVER_LOG = "driver.log"


def redirect_output(path: str) -> None:
    """Point this process's stdout and stderr (file descriptors 1 and 2) at ``path``, appending."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (1, 2):
        os.dup2(fd, stream)
    os.close(fd)


def logged_actor(cls: type, log_file: Path | None) -> type:
    """``cls`` as an actor body whose output goes to ``log_file`` (``None``: Ray's own log streaming)."""
    if log_file is None:
        return cls
    path = str(log_file)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        redirect_output(path)
        cls.__init__(self, *args, **kwargs)

    return type(
        cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    )


def capture_driver_logs(log_dir: Path) -> Path:
    """Send the driver's library loggers and Python warnings to ``log_dir/driver.log``; returns its path."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / DRIVER_LOG
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return path
