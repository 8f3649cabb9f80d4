"""Running `aharl` as a user does, in a session of its own, and checking what it leaves behind.

After the command ends (or is killed), every process it started must go
with it, and it must leave no shared memory in /dev/shm: ``run`` records both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.paths import EMPTY_CONFIG, REPO

# Ray's own agents notice their raylet's death and exit by themselves (after
# five checks and a last report to the GCS, up to a couple of minutes); every
# other process of a run (workers, engines, the raylet) must go with the driver.
SELF_REAPING = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
# What vLLM, Python's multiprocessing and aharl's shm sync put in /dev/shm.
SHARED_MEMORY_PREFIXES = ("psm_", "sem.mp-", "aharl-")


def aharl_train(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "aharl.launch.main", "train", str(EMPTY_CONFIG), *overrides]


def session_processes(session: int) -> list[str]:
    """The command lines of the processes still in process group ``session``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == session:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip())
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return found


def shared_memory_entries() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith(SHARED_MEMORY_PREFIXES)}


def run(
    command: list[str], log: Path, failpoints: str = "", marks: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``command`` in its own session with ``AHARL_FAILPOINTS=failpoints``; output to ``log``.

    On the result: ``orphans``, the command lines of its processes that
    outlived it by a minute (Ray's self-reaping agents aside; all are killed
    after), and ``leaked_shm``, the /dev/shm entries it created and left.
    """
    full_env = {**os.environ, **(env or {}), "AHARL_FAILPOINTS": failpoints}
    if marks is not None:
        full_env["AHARL_FAILPOINT_DIR"] = str(marks)
    shm_before = shared_memory_entries()
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=full_env, start_new_session=True
        )
        left: list[str] = []
        try:
            proc.wait(timeout=900)
        finally:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                left = [cmd for cmd in session_processes(proc.pid) if not cmd.startswith(SELF_REAPING)]
                if not left:
                    break
                time.sleep(0.5)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the self-reaping agents too: the next run needs no company
            except ProcessLookupError:
                pass
    done = subprocess.CompletedProcess(command, proc.returncode)
    done.orphans = left
    done.leaked_shm = sorted(shared_memory_entries() - shm_before)
    return done


def run_to_end(
    command: list[str], log: Path, failpoints: str = "", marks: Path | None = None, env: dict[str, str] | None = None
) -> str:
    """``run`` that must succeed and leave nothing behind; returns its output."""
    done = run(command, log, failpoints, marks, env)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert not done.orphans, f"processes of the run outlived it by a minute: {done.orphans}"
    assert not done.leaked_shm, f"the run left shared memory in /dev/shm: {done.leaked_shm}"
    return text


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]
