"""Races on PostgreSQL with committed transactions from several threads: duplicate delivery,
the last chunks finishing at once, cancel while a chunk is recorded."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jobs import store
from jobs.db import create_db_engine, session_factory, transaction
from jobs.models import Job, JobStatus, Result, ResultStatus
from jobs.types import ChunkOutcome, Claim, RequestOutcome
from tests.jobs import factories

T = TypeVar("T")


@pytest.fixture
def sessions(migrated_pg_url: str) -> Iterator[sessionmaker[Session]]:
    db = create_db_engine(migrated_pg_url)
    yield session_factory(db)
    db.dispose()


def at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run the calls in threads released together; re-raise the first error."""
    barrier = threading.Barrier(len(calls))
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


def new_job(sessions: sessionmaker[Session], n: int) -> tuple[str, list[int]]:
    with transaction(sessions) as session:
        owner = factories.tenant(session, "race")
        job = factories.job(session, owner, n, chunk_size=2)
        return job.id, store.chunk_ids(session, job.id)


def claim(sessions: sessionmaker[Session], chunk_id: int, owner: str) -> Claim | None:
    with transaction(sessions) as session:
        return store.claim_chunk(session, chunk_id, owner, lease_seconds=60)


def record(sessions: sessionmaker[Session], claim: Claim) -> bool:
    outcomes = [
        RequestOutcome(i, f"req-{i}", ResultStatus.SUCCEEDED, "ok", "stop")
        for i in range(claim.start_index, claim.end_index)
    ]
    with transaction(sessions) as session:
        return store.record_chunk_results(session, claim, ChunkOutcome(outcomes))


def test_one_chunk_delivered_to_four_workers_at_once_runs_once(
    sessions: sessionmaker[Session],
) -> None:
    _, (chunk_id,) = new_job(sessions, 2)
    claims = at_once([lambda o=f"w{i}": claim(sessions, chunk_id, o) for i in range(4)])
    assert sum(c is not None for c in claims) == 1


def test_last_chunks_recorded_at_once_complete_the_job(sessions: sessionmaker[Session]) -> None:
    job_id, chunk_ids = new_job(sessions, 4)
    claims = [claim(sessions, c, f"w{c}") for c in chunk_ids]
    assert at_once([lambda c=c: record(sessions, c) for c in claims if c]) == [True, True]
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.completed_count) == (JobStatus.COMPLETED, 4)


def test_cancel_racing_a_recording_chunk_ends_consistent(sessions: sessionmaker[Session]) -> None:
    job_id, chunk_ids = new_job(sessions, 6)
    running = claim(sessions, chunk_ids[0], "w")
    assert running is not None

    def cancel() -> bool:
        with transaction(sessions) as session:
            return store.cancel_job(session, factories.tenant(session, "race"), job_id) is not None

    at_once([lambda: record(sessions, running), cancel])
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status == JobStatus.CANCELLED
        assert (job.completed_count, job.cancelled_count) == (2, 4)
        count = session.scalar(select(func.count(Result.id)).where(Result.job_id == job_id))
        assert count == 6
