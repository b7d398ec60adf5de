"""`WorkerRuntime`: the engine is loaded once, with the torch thread count Settings asks for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobs.settings import Settings
from worker.runtime import WorkerRuntime


@pytest.fixture
def restored_torch_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_engine_loads_once_with_the_configured_torch_threads(
    worker_settings: Settings, restored_torch_threads: None
) -> None:
    import torch

    torch.set_num_threads(2)
    runtime = WorkerRuntime(worker_settings.with_overrides(torch_threads=1))
    engine = runtime.engine()
    assert torch.get_num_threads() == 1
    assert engine.method == "s4c" and runtime.engine() is engine
    runtime.close()


def test_torch_threads_zero_leaves_torchs_default(
    worker_settings: Settings, restored_torch_threads: None
) -> None:
    import torch

    torch.set_num_threads(2)
    WorkerRuntime(worker_settings.with_overrides(torch_threads=0)).engine()
    assert torch.get_num_threads() == 2
