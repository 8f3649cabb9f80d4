"""The fault-injection points the reliability tests arm: parsing, counting, once-only firing."""

from __future__ import annotations

import errno

import pytest

from aharl import faults


@pytest.fixture
def armed(monkeypatch):
    def arm(spec: str, marks=None):
        monkeypatch.setenv(faults.ENV, spec)
        if marks is not None:
            monkeypatch.setenv(faults.MARK_DIR_ENV, str(marks))
        faults.reset()

    yield arm
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reset()


def test_a_point_fires_on_its_calls_only(armed):
    armed("learner.loss:nan@2-3;driver.log:raise@4-")
    assert [faults.reached("learner.loss") for _ in range(5)] == [None, "nan", "nan", None, None]
    assert [faults.reached("driver.log") for _ in range(3)] == [None, None, None]
    with pytest.raises(OSError) as info:
        faults.reached("driver.log")
    assert info.value.errno == errno.ENOSPC
    assert faults.reached("unarmed.point") is None


def test_a_list_of_calls(armed):
    armed("p:nan@1,3")
    assert [faults.reached("p") for _ in range(4)] == ["nan", None, "nan", None]


def test_with_a_mark_directory_each_call_fires_once_across_processes(armed, tmp_path):
    armed("p:nan@1", marks=tmp_path)
    assert faults.reached("p") == "nan"
    faults.reset()  # a restarted process counts from the start again...
    assert faults.reached("p") is None  # ...but the mark says call 1 has fired


@pytest.mark.parametrize("spec", ["nocalls", "p:explode@1", "p:kill@x"])
def test_a_malformed_spec_is_an_error(armed, spec):
    armed(spec)
    with pytest.raises(ValueError):
        faults.reached("p")
