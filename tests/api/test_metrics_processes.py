"""`/metrics` under `s4c api --processes 2` (gunicorn, two forked workers): every scrape,
whichever process answers it, reports the requests of all processes, through the metric files
in PROMETHEUS_MULTIPROC_DIR (stale files from an earlier run are cleared at start)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from jobs import migrate
from jobs.settings import Settings
from s4c.embedded import find_free_port

REPO = Path(__file__).resolve().parents[2]
HEALTH = {"route": "/healthz", "method": "GET", "status": "200"}


def healthz_count(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "s4c_api_requests_total" and sample.labels == HEALTH:
                return float(sample.value)
    return 0.0


@pytest.fixture
def two_process_api(
    redis_url: str, model_dir: Path, tmp_path: Path
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left over from an earlier run")
    database_url = f"sqlite:///{tmp_path / 's4c.sqlite'}"
    migrate.upgrade(Settings.from_env({}).with_overrides(database_url=database_url))
    port = find_free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S4C_", "PROMETHEUS_"))}
    env |= {
        "S4C_HOME": str(tmp_path / "home"),
        "S4C_DATABASE_URL": database_url,
        "S4C_BROKER_URL": redis_url,
        "S4C_MODEL_DIR": str(model_dir),
        "S4C_API_URL": f"http://127.0.0.1:{port}",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    log = (tmp_path / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "s4c", "api", "--processes", "2", "--threads", "2"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "api.log").read_text()
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("the API did not start:\n" + (tmp_path / "api.log").read_text())
        yield url, metrics_dir, process
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def test_every_scrape_counts_the_requests_of_all_processes(
    two_process_api: tuple[str, Path, subprocess.Popen[bytes]],
) -> None:
    url, metrics_dir, _process = two_process_api
    assert not (metrics_dir / "counter_999999.db").exists()
    before = healthz_count(url)
    calls = 40
    for _ in range(calls):  # a new connection each: the kernel spreads them over both workers
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    scrapes = [healthz_count(url) for _ in range(8)]
    assert scrapes == [before + calls] * len(scrapes)
    assert len(list(metrics_dir.glob("counter_*.db"))) >= 1
