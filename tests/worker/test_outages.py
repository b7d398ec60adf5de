"""Service outages under a real worker: PostgreSQL stopped and restarted, Redis restarted
(losing its queue). Each test starts private servers; the shared ones are never touched.
The database is the source of truth, so the job still completes with one result per request.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from jobs import migrate
from jobs.db import create_db_engine, session_factory
from jobs.models import Chunk, ChunkState, Job, JobStatus
from jobs.settings import Settings
from s4c.embedded import PostgresCluster, RedisServer, create_database
from tests.worker.conftest import WorkerProcess, api_client
from tests.worker.test_generation import submit
from tests.worker.test_worker_process import assert_one_result_per_request, enqueue

StartWorker = Callable[[Settings], WorkerProcess]
INLINE_JOB = {"requests": [{"custom_id": "a", "prompt": "Hello.", "max_tokens": 4}]}


@pytest.fixture
def private_postgres(
    postgres_cluster_factory: Callable[[], PostgresCluster],
) -> tuple[PostgresCluster, str]:
    cluster = postgres_cluster_factory()
    url = create_database(cluster.url(), f"s4c_outage_{uuid.uuid4().hex[:8]}")
    migrate.upgrade(url)
    return cluster, url


@contextmanager
def open_sessions(url: str) -> Iterator[sessionmaker[Session]]:
    db = create_db_engine(url)
    try:
        yield session_factory(db)
    finally:
        db.dispose()


def poll(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    worker: WorkerProcess,
    every: float = 0.3,
) -> None:
    """Wait for `predicate`, treating a database that is down as 'not yet'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OperationalError:
            pass
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}\n{worker.log()[-4000:]}")


def status_of(sessions: sessionmaker[Session], job_id: str) -> JobStatus | None:
    with sessions() as session:
        return session.scalar(select(Job.status).where(Job.id == job_id))


def a_chunk_runs(sessions: sessionmaker[Session], job_id: str) -> bool:
    with sessions() as session:
        query = select(func.count(Chunk.id)).where(
            Chunk.job_id == job_id, Chunk.state == ChunkState.RUNNING
        )
        return bool(session.scalar(query))


@pytest.mark.slow
def test_postgres_down_mid_job_then_back_the_job_completes(
    private_postgres: tuple[PostgresCluster, str],
    worker_settings: Settings,
    start_worker: StartWorker,
) -> None:
    cluster, url = private_postgres
    settings = worker_settings.with_overrides(database_url=url)
    client, headers = api_client(settings)
    with open_sessions(url) as sessions:
        worker = start_worker(settings)
        worker.wait_ready()
        # Many chunks of long answers, polled often: speculative decoding of the tiny model
        # can finish a small job between two polls, and the outage must hit it mid-job.
        job_id, chunk_ids = submit(sessions, settings, 40, max_tokens=150)
        enqueue(settings, chunk_ids)
        poll(lambda: a_chunk_runs(sessions, job_id), 60, "a running chunk", worker, every=0.02)
        cluster.kill()
        # Meanwhile the API says it is not ready and answers with a 503 problem, no trace.
        for path in ("/readyz", f"/v1/jobs/{job_id}", "/v1/jobs"):
            response = client.get(path, headers=headers)
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.mimetype == "application/problem+json"
            assert "Traceback" not in response.get_data(as_text=True)
        response = client.post("/v1/jobs", json=INLINE_JOB, headers=headers)
        assert response.status_code == 503 and response.headers["Retry-After"]
        time.sleep(3)
        cluster.restart()
        poll(
            lambda: status_of(sessions, job_id) == JobStatus.COMPLETED,
            180,
            "the job to complete after the outage",
            worker,
        )
        assert_one_result_per_request(sessions, job_id, 40)
        assert worker.process.poll() is None  # the worker rode out the outage
        # ... and the API recovered without a restart.
        assert client.get("/readyz").status_code == 200
        view = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
        assert view["status"] == "completed" and view["request_counts"]["completed"] == 40
        worker.signal(signal.SIGTERM)
        assert worker.process.wait(60) == 0


@pytest.mark.slow
def test_redis_restarted_mid_job_loses_its_queue_and_the_job_completes(
    redis_server_factory: Callable[[], RedisServer],
    worker_settings: Settings,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    redis = redis_server_factory()
    settings = worker_settings.with_overrides(broker_url=redis.url())
    with open_sessions(settings.database_url) as sessions:
        worker = start_worker(settings)
        worker.wait_ready()
        job_id, chunk_ids = submit(sessions, settings, 40, max_tokens=150)
        enqueue(settings, chunk_ids)
        poll(lambda: a_chunk_runs(sessions, job_id), 60, "a running chunk", worker, every=0.02)
        redis.kill()  # this Redis persists nothing: the queued messages are gone
        time.sleep(2)
        redis.restart()
        poll(
            lambda: status_of(sessions, job_id) == JobStatus.COMPLETED,
            180,
            "the job to complete after the broker restart",
            worker,
        )
        assert_one_result_per_request(sessions, job_id, 40)
