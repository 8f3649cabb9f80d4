"""The tree as ruff formats it (120 columns, sorted imports): a diff shows the change, not its reflow.

Runs in the fast lane; ``ruff format . && ruff check --fix .`` repairs what it reports.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.paths import REPO


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_the_tree_is_as_ruff_leaves_it(command):
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (
        f"ruff {' '.join(command)} (fix with: ruff format . && ruff check --fix .):\n{done.stdout}{done.stderr}"
    )
