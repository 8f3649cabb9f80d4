"""docs/reliability.md names only tests that exist: every test id in it is collected by pytest.

The table is the promise to users; a renamed or deleted test would leave a
row that no longer proves anything, so the suite checks the names.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.helpers.paths import REPO

DOC = REPO / "docs" / "reliability.md"
TEST_ID = re.compile(r"`(tests/[\w/]+\.py::[\w]+(?:\[[^\]`]+\])?)`")


def named_tests() -> set[str]:
    return set(TEST_ID.findall(DOC.read_text()))


def test_every_test_the_reliability_table_names_exists():
    names = named_tests()
    assert len(names) >= 20
    files = sorted({name.split("::")[0] for name in names})
    missing_files = [f for f in files if not (REPO / f).is_file()]
    assert not missing_files, missing_files
    # The ids are read from -q's one-id-a-line listing: options from the caller's
    # PYTEST_ADDOPTS (-v, say) would change that listing, so they are left out.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=env,
    ).stdout.splitlines()
    ids = {line.strip() for line in collected}
    # A name without parameters stands for all of its parametrized cases.
    bare = {i.split("[")[0] for i in ids}
    missing = sorted(n for n in names if n not in ids and n not in bare)
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_every_fault_row_names_a_test():
    section = DOC.read_text().split("<!-- faults:begin -->")[1].split("<!-- faults:end -->")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| fault", "|---"))]
    assert len(rows) >= 15
    assert all(TEST_ID.search(row.rsplit("|", 2)[-2]) for row in rows), [r[:60] for r in rows if not TEST_ID.search(r)]
