"""Worker metrics: `record_chunk` folds a chunk's results into the Prometheus metrics, a real
`run_chunk` on the tiny engine moves the process's metrics, and the HTTP endpoint serves them."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from jobs import store
from jobs.db import create_db_engine, session_factory, transaction
from jobs.models import ResultStatus
from jobs.settings import Settings
from jobs.types import ChunkOutcome, NewJob, NewRequest, RequestOutcome
from s4c_engine.config import Prompt, RequestStats, SamplingParams
from worker.generation import run_chunk
from worker.metrics import WORKER_METRICS, WorkerMetrics, record_chunk, serve_metrics


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def succeeded(index: int, stats: RequestStats) -> RequestOutcome:
    return RequestOutcome(
        index, f"r{index}", ResultStatus.SUCCEEDED, text="x", finish_reason="length", stats=stats
    )


def test_record_chunk_counts_tokens_tau_sizes_and_duration() -> None:
    metrics = WorkerMetrics.create()
    stats = RequestStats(completion_tokens=30, target_forwards=12, tree_nodes=9, batch_size=2)
    outcome = ChunkOutcome(
        [
            succeeded(0, stats),
            succeeded(1, RequestStats(completion_tokens=10, target_forwards=8, batch_size=2)),
            RequestOutcome.failure(2, "r2", "invalid_prompt", "too long"),
        ],
        generation_seconds=2.0,
        method="s4c",
    )
    record_chunk(outcome, metrics)

    assert sample(metrics, "s4c_worker_chunks_total", method="s4c") == 1
    assert sample(metrics, "s4c_worker_requests_total", status="succeeded") == 2
    assert sample(metrics, "s4c_worker_requests_total", status="failed") == 1
    assert sample(metrics, "s4c_worker_tokens_generated_total", method="s4c") == 40
    assert sample(metrics, "s4c_worker_target_forwards_total", method="s4c") == 20
    assert sample(metrics, "s4c_worker_tokens_per_second") == 20.0
    assert sample(metrics, "s4c_worker_tau") == 2.0
    assert sample(metrics, "s4c_worker_chunk_duration_seconds_sum", method="s4c") == 2.0
    assert sample(metrics, "s4c_worker_chunk_duration_seconds_bucket", method="s4c", le="1.0") == 0
    assert sample(metrics, "s4c_worker_chunk_duration_seconds_bucket", method="s4c", le="2.5") == 1
    assert sample(metrics, "s4c_worker_batch_size_count", method="s4c") == 2
    assert sample(metrics, "s4c_worker_batch_size_sum", method="s4c") == 4
    # only the request that ran a tree reports one (tree_nodes 0 = not known)
    assert sample(metrics, "s4c_worker_tree_nodes_count", method="s4c") == 1
    assert sample(metrics, "s4c_worker_tree_nodes_sum", method="s4c") == 9
    assert sample(metrics, "s4c_worker_chunk_tau_count", method="s4c") == 1


def test_a_real_chunk_moves_the_process_metrics(
    worker_settings: Settings, worker_model_dir: Path
) -> None:
    from s4c_engine.engine import Engine

    engine: Any = Engine.load(worker_model_dir, method="ar", max_batch_size=4)
    db = create_db_engine(worker_settings.database_url)
    sessions: sessionmaker[Session] = session_factory(db)
    try:
        requests = [
            NewRequest(f"r{i}", Prompt(text=f"Number {i} is"), SamplingParams(max_tokens=5), i)
            for i in range(3)
        ]
        with transaction(sessions) as session:
            tenant = store.create_tenant(session, "metrics")
            job = store.create_job(
                session,
                tenant,
                NewJob(requests, model=worker_settings.model_name),
                settings=worker_settings,
            )
            (chunk_id,) = store.chunk_ids(session, job.id)
        before = {
            name: sample(WORKER_METRICS, name, **labels)
            for name, labels in (
                ("s4c_worker_chunks_total", {"method": "ar"}),
                ("s4c_worker_tokens_generated_total", {"method": "ar"}),
                ("s4c_worker_batch_size_count", {"method": "ar"}),
            )
        }
        report = run_chunk(sessions, engine, chunk_id, "w-metrics", worker_settings)
        assert report.outcome == "recorded"
        with sessions() as session:
            view = store.job_view(store.get_job(session, tenant, job.id))  # type: ignore[arg-type]
    finally:
        db.dispose()
    tokens = view["stats"]["tokens_generated"]
    assert tokens > 0
    assert sample(WORKER_METRICS, "s4c_worker_chunks_total", method="ar") == (
        before["s4c_worker_chunks_total"] + 1
    )
    assert sample(WORKER_METRICS, "s4c_worker_tokens_generated_total", method="ar") == (
        before["s4c_worker_tokens_generated_total"] + tokens
    )
    assert sample(WORKER_METRICS, "s4c_worker_batch_size_count", method="ar") == (
        before["s4c_worker_batch_size_count"] + 3
    )
    assert sample(WORKER_METRICS, "s4c_worker_tau") == 1.0  # plain decoding: one per forward


@pytest.fixture
def served() -> Iterator[tuple[WorkerMetrics, int]]:
    metrics = WorkerMetrics.create()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = serve_metrics(port, "127.0.0.1", metrics)
    assert server is not None
    yield metrics, server.port
    server.stop()


def test_the_endpoint_serves_chunk_metrics_and_memory(served: tuple[WorkerMetrics, int]) -> None:
    metrics, port = served
    stats = RequestStats(completion_tokens=8, target_forwards=4, batch_size=1, tree_nodes=5)
    record_chunk(ChunkOutcome([succeeded(0, stats)], 0.5, "s4c"), metrics)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["s4c_worker_tau"].samples[0].value == 2.0
    assert families["s4c_worker_tokens_per_second"].samples[0].value == 16.0
    memory = {
        (s.labels["device"], s.labels["kind"]): s.value
        for s in families["s4c_worker_device_memory_bytes"].samples
    }
    assert memory[("cpu", "resident")] > 10 * 2**20


def test_port_zero_is_off_and_a_taken_port_is_logged_not_raised(
    served: tuple[WorkerMetrics, int],
) -> None:
    _metrics, port = served
    assert serve_metrics(0) is None
    assert serve_metrics(port, "127.0.0.1", WorkerMetrics.create()) is None
