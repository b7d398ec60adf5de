"""Test-suite wiring: the shared fixture modules and the `gpu` marker's skip rule.

Service fixtures (Redis, PostgreSQL, SQLite) live in tests/service_fixtures.py, model fixtures
in tests/model_fixtures.py. Tests marked `gpu` are skipped only when no CUDA device exists;
every other test runs everywhere (no test is skipped for a missing service).
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.service_fixtures", "tests.model_fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch  # only when gpu tests were collected: most runs never pay for it here

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run `make gpu-check` on a GPU host)")
    for item in gpu_items:
        item.add_marker(skip)
