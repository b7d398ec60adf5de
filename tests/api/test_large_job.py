"""A 50,000-request JSONL upload is accepted with bounded memory in the API process, and its
50,000 results stream back out without being loaded all at once."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask

from tests.api.support import ApiTenant, assert_job, finish_job

REQUESTS = 50_000
PAGE = 4096  # bytes of /proc/self/statm pages


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


@contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Yields a one-element list that holds, on exit, the peak RSS growth (bytes) seen while
    the block ran (sampled every 20 ms)."""
    baseline = _rss_bytes()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    growth = [0]
    try:
        yield growth
    finally:
        done.set()
        sampler.join()
        growth[0] = max(peak[0], _rss_bytes()) - baseline


def _batch_file() -> bytes:
    line = json.dumps(
        {
            "custom_id": "ID",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "SmolLM2-135M-Instruct",
                "messages": [{"role": "user", "content": "Write a line about the number ID."}],
                "max_tokens": 16,
            },
        }
    )
    return "".join(line.replace("ID", str(i)) + "\n" for i in range(REQUESTS)).encode()


@pytest.mark.slow
def test_fifty_thousand_line_upload_and_streamed_results(
    fresh_app: Callable[..., Flask], tenant: ApiTenant
) -> None:
    app = fresh_app(chunk_size=1000)
    client = app.test_client()
    data = _batch_file()
    started = time.monotonic()
    with peak_rss_growth() as submit_growth:
        response = client.post(
            "/v1/jobs", data=data, content_type="application/jsonl", headers=tenant.headers
        )
    assert response.status_code == 201, response.get_data(as_text=True)[:500]
    job = assert_job(response.get_json())
    assert job["request_counts"]["total"] == REQUESTS
    submit_seconds = time.monotonic() - started
    # The validated requests (plus the store's insert) are what the API may hold: well under
    # 4 KiB per request; the 5 MB body itself is read a line at a time.
    assert submit_growth[0] < REQUESTS * 4096, (submit_growth[0], submit_seconds)

    finish_job(app, job["id"])
    response = client.get(
        f"/v1/jobs/{job['id']}/results.jsonl", headers=tenant.headers, buffered=False
    )
    lines = 0
    # RSS cannot show this (memory freed by the submit is reused); trace allocations instead.
    tracemalloc.start()
    try:
        for chunk in response.response:
            lines += chunk.count(b"\n")
        _, stream_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        response.close()
    assert lines == REQUESTS
    # 50,000 result rows loaded at once take far more; streaming holds one batch at a time.
    assert stream_peak < 20 * 1024 * 1024, stream_peak
