"""The launcher: GPU pinning before torch loads, refusing an un-migrated database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jobs.settings import Settings
from tests.worker.conftest import REPO, settings_env


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_gpu_is_pinned_through_cuda_visible_devices_before_torch_loads() -> None:
    done = _python(
        "import os, sys; from worker.launch import pin_device;"
        "print(pin_device('cuda:3'), pin_device('cpu', gpu=1), os.environ['CUDA_VISIBLE_DEVICES'],"
        " 'torch' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cuda", "cuda", "1", "False"]


def test_pinning_after_torch_was_imported_is_refused() -> None:
    done = _python(
        "import torch; from worker.launch import pin_device, LaunchError\n"
        "try:\n    pin_device('cuda:0')\nexcept LaunchError as e:\n    print('refused:', e)"
    )
    assert "refused: torch was imported before the GPU was pinned" in done.stdout, done.stderr


def test_unknown_device_is_refused() -> None:
    done = _python("from worker.launch import pin_device; pin_device('tpu')")
    assert done.returncode != 0 and "unknown device 'tpu'" in done.stderr


def test_worker_refuses_an_unmigrated_database(tmp_path: Path, redis_url: str) -> None:
    settings = Settings.from_env({}).with_overrides(
        database_url=f"sqlite:///{tmp_path / 'empty.sqlite'}", broker_url=redis_url
    )
    done = subprocess.run(
        [sys.executable, "-m", "worker.launch"],
        cwd=REPO,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "s4c db upgrade" in done.stderr and "empty schema" in done.stderr
