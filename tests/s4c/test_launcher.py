"""`s4c serve`'s launcher: a part that cannot start is reported with its log, and everything
that was started is stopped again; workers get torch threads that share the cores."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from jobs.settings import Settings
from s4c.launcher import (
    LaunchError,
    ServiceStack,
    child_environment,
    torch_threads_per_worker,
)


def test_an_api_that_cannot_start_is_reported_and_everything_is_stopped(tmp_path: Path) -> None:
    empty_model_dir = tmp_path / "no-model"
    empty_model_dir.mkdir()
    environ = {
        **os.environ,
        "S4C_HOME": str(tmp_path / "home"),
        "S4C_MODEL_DIR": str(empty_model_dir),
    }
    environ.pop("S4C_BROKER_URL", None)
    environ.pop("S4C_DATABASE_URL", None)
    settings = Settings.from_env(environ)
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with pytest.raises(LaunchError) as caught:
        ServiceStack.start(settings, workers=1, device="cpu", environ=environ)
    after = {child.pid for child in psutil.Process().children(recursive=True)}
    message = str(caught.value)
    assert "api exited" in message
    assert "no model tokenizer" in message
    assert after <= before  # the API, the worker and the Redis it started are all gone
    assert (tmp_path / "home" / "logs" / "api.log").is_file()


@pytest.mark.parametrize(
    ("workers", "cores", "threads"),
    [(1, 1, 1), (1, 2, 1), (1, 16, 15), (3, 16, 5), (8, 4, 1)],
)
def test_workers_share_all_cores_but_one_without_oversubscribing(
    workers: int, cores: int, threads: int
) -> None:
    assert torch_threads_per_worker(workers, cores) == threads


def test_children_inherit_the_torch_thread_count(tmp_path: Path) -> None:
    settings = Settings.from_env({"S4C_HOME": str(tmp_path)})
    assert "S4C_TORCH_THREADS" not in child_environment(settings, {})
    env = child_environment(settings.with_overrides(torch_threads=3), {})
    assert Settings.from_env(env).torch_threads == 3
