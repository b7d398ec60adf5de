"""Real worker processes on real Redis and PostgreSQL against faults of delivery and of the
engine: every chunk delivered twice to two workers, requests the engine rejects, and a chunk
whose worker dies every time it runs it (retries stop after `max_attempts`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs.models import Chunk, ChunkState, JobStatus, Result, ResultStatus
from jobs.settings import Settings
from tests.worker.conftest import WorkerProcess
from tests.worker.test_generation import submit
from tests.worker.test_worker_process import (
    assert_one_result_per_request,
    enqueue,
    wait_for,
    wait_terminal,
)

StartWorker = Callable[[Settings], WorkerProcess]


def chunk_attempts(sessions: sessionmaker[Session], job_id: str) -> list[int]:
    with sessions() as session:
        query = select(Chunk.attempts).where(Chunk.job_id == job_id).order_by(Chunk.seq)
        return list(session.scalars(query))


def results_by_index(sessions: sessionmaker[Session], job_id: str) -> dict[int, Result]:
    with sessions() as session:
        rows = session.scalars(select(Result).where(Result.job_id == job_id))
        return {row.input_index: row for row in rows}


@pytest.mark.slow
def test_every_chunk_delivered_twice_to_two_workers_runs_once(
    sessions: sessionmaker[Session], worker_settings: Settings, start_worker: StartWorker
) -> None:
    workers = [start_worker(worker_settings), start_worker(worker_settings)]
    for worker in workers:
        worker.wait_ready()
    job_id, chunk_ids = submit(sessions, worker_settings, 24, max_tokens=8)
    enqueue(worker_settings, chunk_ids)
    enqueue(worker_settings, chunk_ids)  # a redelivery of every message, at once
    assert wait_terminal(sessions, job_id, workers) == JobStatus.COMPLETED

    def skipped() -> int:
        return sum(worker.log().count("not claimable") for worker in workers)

    wait_for(lambda: skipped() >= 6, 60, "every duplicate to arrive")  # and be skipped
    assert_one_result_per_request(sessions, job_id, 24)
    assert chunk_attempts(sessions, job_id) == [1] * 6  # each chunk claimed and run once


@pytest.mark.slow
def test_requests_the_engine_rejects_fail_alone_without_retries(
    sessions: sessionmaker[Session], worker_settings: Settings, start_worker: StartWorker
) -> None:
    worker = start_worker(worker_settings)
    worker.wait_ready()
    # Prompts longer than the tiny model's context: the engine raises for them mid-batch.
    bad = {3, 13, 14}
    job_id, chunk_ids = submit(sessions, worker_settings, 24, max_tokens=8, bad=bad)
    enqueue(worker_settings, chunk_ids)
    assert wait_terminal(sessions, job_id, [worker]) == JobStatus.COMPLETED
    assert_one_result_per_request(sessions, job_id, 24)
    results = results_by_index(sessions, job_id)
    for index, result in results.items():
        if index in bad:
            assert result.status == ResultStatus.FAILED
            assert result.error is not None and result.error["code"] == "invalid_prompt"
        else:
            assert result.status == ResultStatus.SUCCEEDED and result.completion_tokens
    assert chunk_attempts(sessions, job_id) == [1] * 6  # an engine error is not retried
    assert worker.process.poll() is None


@pytest.mark.slow
def test_a_chunk_that_kills_its_worker_stops_after_max_attempts(
    sessions: sessionmaker[Session], worker_settings: Settings, start_worker: StartWorker
) -> None:
    settings = worker_settings.with_overrides(lease_seconds=2, max_attempts=2)
    job_id, (chunk_id,) = submit(sessions, settings, 4, max_tokens=200)

    def running_attempt(attempt: int) -> bool:
        with sessions() as session:
            chunk = session.get(Chunk, chunk_id)
            assert chunk is not None
            return chunk.state == ChunkState.RUNNING and chunk.attempts == attempt

    workers: list[WorkerProcess] = []
    enqueue(settings, [chunk_id])
    # The "poison": whatever worker runs this chunk dies (kill -9) mid-chunk, twice.
    for attempt in (1, 2):
        workers.append(start_worker(settings))
        wait_for(lambda a=attempt: running_attempt(a), 90, f"attempt {attempt} running")
        workers[-1].signal(signal.SIGKILL)
        workers[-1].process.wait(10)
    # The next worker finds the lease expired with max_attempts spent: it fails the request
    # that was running when the last attempt died and runs the others one at a time.
    workers.append(start_worker(settings))
    assert wait_terminal(sessions, job_id, workers) == JobStatus.COMPLETED
    assert_one_result_per_request(sessions, job_id, 4)
    assert chunk_attempts(sessions, job_id) == [3]  # max_attempts, plus the careful last run
    results = results_by_index(sessions, job_id).values()
    failed = [r for r in results if r.status == ResultStatus.FAILED]
    assert len(failed) == 1 and failed[0].error is not None
    assert failed[0].error["code"] == "attempts_exhausted"
    assert sum(r.status == ResultStatus.SUCCEEDED for r in results) == 3
