"""Real worker processes (`python -m worker.launch`) on real Redis and PostgreSQL.

Each test checks the end state the service promises: the job reaches its terminal state and
every request has exactly one result row.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jobs import messaging, store
from jobs.models import Chunk, ChunkState, Job, JobStatus, Result, ResultStatus, utcnow
from jobs.settings import Settings
from tests.worker.conftest import WorkerProcess, api_client
from tests.worker.test_generation import submit

StartWorker = Callable[[Settings], WorkerProcess]


def enqueue(settings: Settings, chunk_ids: list[int]) -> None:
    celery = messaging.make_celery(settings)
    messaging.enqueue_chunks(celery, chunk_ids, messaging.queue_for_model(settings.model_name))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job_status(sessions: sessionmaker[Session], job_id: str) -> JobStatus:
    with sessions() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        assert status is not None
        return status


def wait_terminal(
    sessions: sessionmaker[Session], job_id: str, workers: list[WorkerProcess]
) -> JobStatus:
    try:
        wait_for(lambda: job_status(sessions, job_id).is_terminal, 120, f"job {job_id}")
    except AssertionError as exc:
        logs = "\n".join(w.log()[-3000:] for w in workers)
        raise AssertionError(f"{exc}\n{logs}") from None
    return job_status(sessions, job_id)


def assert_one_result_per_request(sessions: sessionmaker[Session], job_id: str, n: int) -> None:
    """Exactly one result row per request, and the job's counters and token statistics are
    those of its rows (nothing counted twice, nothing counted that was not stored)."""
    with sessions() as session:
        rows = session.execute(
            select(Result.input_index, func.count(Result.id))
            .where(Result.job_id == job_id)
            .group_by(Result.input_index)
        ).all()
        by_status = dict(
            session.execute(
                select(Result.status, func.count(Result.id))
                .where(Result.job_id == job_id)
                .group_by(Result.status)
            ).all()
        )
        tokens = session.scalar(
            select(func.coalesce(func.sum(Result.completion_tokens), 0)).where(
                Result.job_id == job_id, Result.status == ResultStatus.SUCCEEDED
            )
        )
        job = session.get(Job, job_id)
        assert job is not None
        stats = store.job_view(job)["stats"]
    assert sorted(index for index, _ in rows) == list(range(n))
    assert all(count == 1 for _, count in rows)
    assert job.completed_count + job.failed_count + job.cancelled_count == n
    assert by_status.get(ResultStatus.SUCCEEDED, 0) == job.completed_count
    assert by_status.get(ResultStatus.FAILED, 0) == job.failed_count
    assert by_status.get(ResultStatus.CANCELLED, 0) == job.cancelled_count
    assert (stats["tokens_generated"] or 0) == tokens


def running_chunk(sessions: sessionmaker[Session], job_id: str) -> bool:
    with sessions() as session:
        query = select(func.count(Chunk.id)).where(
            Chunk.job_id == job_id, Chunk.state == ChunkState.RUNNING
        )
        return bool(session.scalar(query))


def freeze_mid_chunk(
    sessions: sessionmaker[Session], job_id: str, worker: WorkerProcess, timeout: float = 60
) -> None:
    """SIGSTOP the worker while it runs one of the job's chunks (checked once it is frozen,
    so the chunk cannot end meanwhile); the caller sends SIGCONT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wait_for(lambda: running_chunk(sessions, job_id), timeout, "a running chunk", poll=0.02)
        worker.signal(signal.SIGSTOP)
        if running_chunk(sessions, job_id):
            return
        worker.signal(signal.SIGCONT)
    raise AssertionError(f"timed out after {timeout}s freezing the worker mid-chunk")


@pytest.mark.slow
@pytest.mark.parametrize("worker_db_url", ["postgresql", "sqlite"], indirect=True)
def test_worker_runs_jobs_and_recovers_lost_messages(
    sessions: sessionmaker[Session], worker_settings: Settings, start_worker: StartWorker
) -> None:
    worker = start_worker(worker_settings)
    worker.wait_ready()
    job_id, chunk_ids = submit(sessions, worker_settings, 10, baseline_sample=0.3)
    enqueue(worker_settings, chunk_ids)
    # a second job whose messages were lost (never sent): the sweep finds it in the database
    lost_id, _ = submit(sessions, worker_settings, 5)
    assert wait_terminal(sessions, job_id, [worker]) == JobStatus.COMPLETED
    assert wait_terminal(sessions, lost_id, [worker]) == JobStatus.COMPLETED
    assert_one_result_per_request(sessions, job_id, 10)
    assert_one_result_per_request(sessions, lost_id, 5)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        stats = store.job_view(job)["stats"]
    assert stats["tokens_generated"] > 0 and stats["baseline"]["measured"]
    assert worker.stop() == 0


@pytest.mark.slow
def test_sigterm_hands_back_the_running_chunk(
    sessions: sessionmaker[Session], worker_settings: Settings, start_worker: StartWorker
) -> None:
    first = start_worker(worker_settings)
    first.wait_ready()
    # Ten chunks of long answers, polled often: speculative decoding of the tiny model can
    # finish a small job between two polls, and the SIGTERM must land mid-chunk.
    job_id, chunk_ids = submit(sessions, worker_settings, 40, max_tokens=150)
    enqueue(worker_settings, chunk_ids)
    wait_for(lambda: running_chunk(sessions, job_id), 60, "a running chunk", poll=0.02)
    first.signal(signal.SIGTERM)
    assert first.process.wait(60) == 0, first.log()[-3000:]
    with sessions() as session:
        chunks = session.scalars(select(Chunk).where(Chunk.job_id == job_id)).all()
    assert not any(c.state == ChunkState.RUNNING for c in chunks)  # finished or handed back
    assert all(c.attempts <= 1 for c in chunks)
    second = start_worker(worker_settings)
    assert wait_terminal(sessions, job_id, [first, second]) == JobStatus.COMPLETED
    assert_one_result_per_request(sessions, job_id, 40)


@pytest.mark.slow
def test_killed_and_frozen_workers_lose_their_chunks_to_a_live_one(
    sessions: sessionmaker[Session], worker_settings: Settings, start_worker: StartWorker
) -> None:
    settings = worker_settings.with_overrides(lease_seconds=3)
    killed, frozen = start_worker(settings), start_worker(settings)
    killed.wait_ready()
    frozen.wait_ready()
    job_id, chunk_ids = submit(sessions, settings, 8, max_tokens=120)
    enqueue(settings, chunk_ids)

    def owners() -> set[str]:
        with sessions() as session:
            query = select(Chunk.lease_owner).where(
                Chunk.job_id == job_id, Chunk.state == ChunkState.RUNNING
            )
            return {owner for owner in session.scalars(query) if owner}

    wait_for(lambda: len(owners()) == 2, 60, "both workers running a chunk")
    killed.signal(signal.SIGKILL)
    frozen.signal(signal.SIGSTOP)
    alive = start_worker(settings)
    try:
        assert wait_terminal(sessions, job_id, [killed, frozen, alive]) == JobStatus.COMPLETED
    finally:
        frozen.signal(signal.SIGCONT)
    time.sleep(3)  # the frozen worker wakes up: its heartbeat fails and its writes are fenced
    assert_one_result_per_request(sessions, job_id, 8)
    with sessions() as session:
        attempts = session.scalars(select(Chunk.attempts).where(Chunk.job_id == job_id)).all()
    assert max(attempts) == 2  # stolen chunks ran again, once, and nothing ran a third time


@pytest.mark.slow
def test_cancel_mid_job_is_cancelling_then_cancelled_and_keeps_finished_results(
    sessions: sessionmaker[Session], worker_settings: Settings, start_worker: StartWorker
) -> None:
    client, headers = api_client(worker_settings)
    worker = start_worker(worker_settings)
    worker.wait_ready()
    job_id, chunk_ids = submit(sessions, worker_settings, 40, max_tokens=120)
    enqueue(worker_settings, chunk_ids)
    # The cancel must meet a running chunk: freeze the worker mid-chunk (a chunk of the tiny
    # model can end between a poll and the request), cancel, then let it go on.
    freeze_mid_chunk(sessions, job_id, worker)
    try:
        response = client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    finally:
        worker.signal(signal.SIGCONT)
    assert response.status_code == 200 and response.get_json()["status"] == "cancelling"
    assert wait_terminal(sessions, job_id, [worker]) == JobStatus.CANCELLED
    view = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
    assert view["status"] == "cancelled" and view["cancelling_at"] <= view["cancelled_at"]
    assert_one_result_per_request(sessions, job_id, 40)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.cancelled_count >= 16  # at least the untouched chunks
        chunks = session.scalars(select(Chunk).where(Chunk.job_id == job_id)).all()
        last_write = session.scalar(
            select(func.max(Result.created_at)).where(Result.job_id == job_id)
        )
    assert not {c.state for c in chunks} & {ChunkState.RUNNING, ChunkState.QUEUED}
    # No more work for it: chunks not started by the cancel never ran, and nothing was
    # written after the job became cancelled, not even a moment later.
    assert sum(c.attempts == 0 for c in chunks) >= 4
    time.sleep(2)
    with sessions() as session:
        later = session.scalar(select(func.count(Result.id)).where(Result.job_id == job_id))
    assert later == 40 and last_write is not None and job.cancelled_at is not None
    assert last_write <= job.cancelled_at
    assert worker.stop() == 0


@pytest.mark.slow
def test_a_job_past_its_window_stops_mid_chunk_keeps_its_results_and_expires(
    sessions: sessionmaker[Session], worker_settings: Settings, start_worker: StartWorker
) -> None:
    client, headers = api_client(worker_settings)
    worker = start_worker(worker_settings)
    worker.wait_ready()
    job_id, chunk_ids = submit(
        sessions, worker_settings, 40, max_tokens=120, completion_window="3s"
    )
    enqueue(worker_settings, chunk_ids)
    # Hold the worker mid-chunk until the window has ended, so the window ends for sure while
    # a chunk runs (the tiny model could otherwise finish the job first).
    freeze_mid_chunk(sessions, job_id, worker)
    try:
        with sessions() as session:
            expires_at = session.scalar(select(Job.expires_at).where(Job.id == job_id))
        assert expires_at is not None
        time.sleep(max(0.0, (expires_at - utcnow()).total_seconds()) + 0.5)
    finally:
        worker.signal(signal.SIGCONT)
    assert wait_terminal(sessions, job_id, [worker]) == JobStatus.EXPIRED
    view = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
    assert view["status"] == "expired" and view["expired_at"] >= view["expires_at"]
    assert view["completion_window"] == "3s"
    assert_one_result_per_request(sessions, job_id, 40)
    lines = client.get(f"/v1/jobs/{job_id}/results.jsonl", headers=headers)
    outputs = [json.loads(line) for line in lines.get_data(as_text=True).splitlines()]
    assert len(outputs) == 40
    expired = [o for o in outputs if o["error"] is not None]
    assert expired and all(o["error"]["code"] == "batch_expired" for o in expired)
    assert len(expired) == view["request_counts"]["cancelled"] >= 16  # the untouched chunks
    # the frozen chunk's finished rows were kept: succeeded results are the rest
    assert view["request_counts"]["completed"] == 40 - len(expired)
    with sessions() as session:
        chunks = session.scalars(select(Chunk).where(Chunk.job_id == job_id)).all()
    assert sum(c.attempts == 0 for c in chunks) >= 4  # chunks not started in time never ran
    # the chunk that was running stopped part-way: the worker wrote batch_expired for its
    # unfinished rows (a worker that ignored the window would have finished all of them)
    started = {i for c in chunks if c.attempts > 0 for i in range(c.start_index, c.end_index)}
    assert any(o["custom_id"] in {f"r{i}" for i in started} for o in expired)
    assert worker.stop() == 0
