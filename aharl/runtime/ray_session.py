"""Joining or starting the Ray cluster a run's actors live in."""

from __future__ import annotations

import os

import ray


def connect_ray(stream_actor_logs: bool = True) -> None:
    """Join the cluster of ``ray job submit`` (RAY_ADDRESS is set) or start one in-process.

    ``stream_actor_logs``: print the actors' output in the driver; off when it
    goes to the run's log files, and then Ray's own start-up warnings (token
    authentication, resources) stay off the console too, at ERROR.
    """
    if not ray.is_initialized():
        level = "WARNING" if stream_actor_logs else "ERROR"
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=stream_actor_logs, logging_level=level)
