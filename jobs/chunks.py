"""The job store, worker side: leasing chunks, recording their results, finishing jobs.

The database is the source of truth; the broker only hints which chunk to look at. A chunk is
claimed with a compare-and-set lease, every write of its results is fenced by the lease owner
(so a frozen worker's late writes are dropped), and results are inserted with ON CONFLICT DO
NOTHING on (job_id, custom_id): at-least-once execution, exactly-once results.
Plain functions taking a Session; they never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Insert, and_, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobs.models import (
    Chunk,
    ChunkState,
    Job,
    JobRequest,
    JobStatus,
    Result,
    ResultStatus,
    utcnow,
)
from jobs.stats import fold_outcomes, request_stats_json
from jobs.types import ChunkOutcome, Claim, RequestOutcome

RUNNABLE_STATUSES = (JobStatus.VALIDATING, JobStatus.IN_PROGRESS)
_PAGE = 1000


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def claim_chunk(
    session: Session,
    chunk_id: int,
    owner: str,
    *,
    lease_seconds: int,
    now: datetime | None = None,
) -> Claim | None:
    """Lease chunk `chunk_id` to `owner` for `lease_seconds` (attempts + 1).

    Succeeds only if the chunk is queued, its lease has expired or is already `owner`'s,
    and its job is still runnable; otherwise returns None (done, leased by someone else,
    job cancelled), which makes a duplicate delivery a cheap no-op. The job moves
    validating -> in_progress on first claim.
    """
    now = now or utcnow()
    job_id = session.scalar(select(Chunk.job_id).where(Chunk.id == chunk_id))
    if job_id is None:
        return None
    # Lock order everywhere: the job row, then its chunk rows (no deadlock with cancel).
    status = session.scalar(select(Job.status).where(Job.id == job_id).with_for_update())
    if status not in RUNNABLE_STATUSES:
        return None
    row = session.execute(
        update(Chunk)
        .where(
            Chunk.id == chunk_id,
            or_(
                Chunk.state == ChunkState.QUEUED,
                and_(Chunk.state == ChunkState.RUNNING, Chunk.lease_expires_at < now),
                # the same worker retrying (e.g. after a database outage) takes its lease back
                and_(Chunk.state == ChunkState.RUNNING, Chunk.lease_owner == owner),
            ),
        )
        .values(
            state=ChunkState.RUNNING,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Chunk.attempts + 1,
            claimed_at=now,
        )
        .returning(
            Chunk.attempts,
            Chunk.start_index,
            Chunk.end_index,
            Chunk.measure_baseline,
            Chunk.lease_expires_at,
        )
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return None
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.VALIDATING)
        .values(status=JobStatus.IN_PROGRESS, in_progress_at=now)
        .execution_options(synchronize_session=False)
    )
    return Claim(
        chunk_id=chunk_id,
        job_id=job_id,
        owner=owner,
        attempt=row.attempts,
        start_index=row.start_index,
        end_index=row.end_index,
        measure_baseline=row.measure_baseline,
        lease_expires_at=row.lease_expires_at,
    )


def heartbeat(
    session: Session, claim: Claim, *, lease_seconds: int, now: datetime | None = None
) -> bool:
    """Extend the lease; False when `claim.owner` no longer holds it (stop working then)."""
    now = now or utcnow()
    done = session.execute(
        update(Chunk)
        .where(
            Chunk.id == claim.chunk_id,
            Chunk.lease_owner == claim.owner,
            Chunk.state == ChunkState.RUNNING,
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return _rowcount(done) == 1


def is_job_runnable(session: Session, job_id: str) -> bool:
    """False once the job is cancelling or finished: running chunks should stop."""
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return status in RUNNABLE_STATUSES


def pending_requests(session: Session, claim: Claim) -> list[JobRequest]:
    """The claimed chunk's requests that have no result yet, in input order."""
    # Two index range scans rather than an anti-join: the planner's statistics on a freshly
    # filled results table can turn an anti-join into a scan per row.
    done = set(
        session.scalars(
            select(Result.input_index).where(
                Result.job_id == claim.job_id,
                Result.input_index >= claim.start_index,
                Result.input_index < claim.end_index,
            )
        )
    )
    requests = session.scalars(
        select(JobRequest)
        .where(
            JobRequest.job_id == claim.job_id,
            JobRequest.input_index >= claim.start_index,
            JobRequest.input_index < claim.end_index,
        )
        .order_by(JobRequest.input_index)
    )
    return [r for r in requests if r.input_index not in done]


def _insert_ignoring_duplicates(session: Session) -> Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(Result).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(Result).on_conflict_do_nothing()
    raise NotImplementedError(f"no ON CONFLICT support for {dialect}")


def _result_row(job_id: str, outcome: RequestOutcome, now: datetime) -> dict[str, Any]:
    error = None
    if outcome.error_code is not None:
        error = {"code": outcome.error_code, "message": outcome.error_message or ""}
    stats = outcome.stats
    return {
        "job_id": job_id,
        "custom_id": outcome.custom_id,
        "input_index": outcome.index,
        "status": outcome.status,
        "text": outcome.text,
        "finish_reason": outcome.finish_reason,
        "prompt_tokens": None if stats is None else stats.prompt_tokens,
        "completion_tokens": None if stats is None else stats.completion_tokens,
        "stats": None if stats is None else request_stats_json(stats),
        "error": error,
        "created_at": now,
    }


def insert_results(
    session: Session, job_id: str, outcomes: Sequence[RequestOutcome], now: datetime
) -> list[RequestOutcome]:
    """Insert results, skipping requests that already have one; returns those inserted."""
    if not outcomes:
        return []
    inserted: set[int] = set()
    for start in range(0, len(outcomes), _PAGE):
        page = outcomes[start : start + _PAGE]
        rows = session.execute(
            _insert_ignoring_duplicates(session).returning(Result.input_index),
            [_result_row(job_id, o, now) for o in page],
        )
        inserted.update(rows.scalars())
    return [o for o in outcomes if o.index in inserted]


def _lock_job(session: Session, job_id: str) -> Job:
    # One row lock per job serialises chunk completions, so counts, statistics and the
    # "was this the last chunk?" decision never race (PostgreSQL; SQLite has one writer).
    # Every writer takes it before any chunk row, so cancel, claim and record never deadlock.
    return session.execute(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()


def _count_outcomes(job: Job, inserted: Sequence[RequestOutcome]) -> None:
    for outcome in inserted:
        if outcome.status == ResultStatus.SUCCEEDED:
            job.completed_count += 1
        elif outcome.status == ResultStatus.FAILED:
            job.failed_count += 1
        else:
            job.cancelled_count += 1


def record_chunk_results(
    session: Session,
    claim: Claim,
    outcome: ChunkOutcome,
    *,
    complete: bool = True,
    now: datetime | None = None,
) -> bool:
    """Write a chunk's results, counts and statistics; with `complete`, mark the chunk done
    and finish the job if it was the last one.

    Fenced: does nothing and returns False unless `claim.owner` still holds the lease.
    Requests that already have a result keep it (their new outcome is dropped, not counted).
    """
    now = now or utcnow()
    job = _lock_job(session, claim.job_id)  # job row first: the lock order of claim_chunk
    fence = update(Chunk).where(
        Chunk.id == claim.chunk_id,
        Chunk.lease_owner == claim.owner,
        Chunk.state == ChunkState.RUNNING,
    )
    if complete:
        fence = fence.values(
            state=ChunkState.DONE, lease_owner=None, lease_expires_at=None, finished_at=now
        )
    else:
        fence = fence.values(lease_owner=claim.owner)  # a no-op write that takes the row lock
    if _rowcount(session.execute(fence.execution_options(synchronize_session=False))) != 1:
        return False
    inserted = insert_results(session, claim.job_id, outcome.results, now)
    _count_outcomes(job, inserted)
    fold_outcomes(
        job.stats,
        inserted,
        generation_seconds=outcome.generation_seconds,
        method=outcome.method,
        baseline=outcome.baseline,
    )
    session.flush()
    if complete:
        finish_job_if_done(session, claim.job_id, now=now)
    return True


def release_chunk(
    session: Session,
    chunk_id: int,
    owner: str | None,
    *,
    count_attempt: bool = True,
    now: datetime | None = None,
) -> bool:
    """Hand a running chunk back to the queue.

    With `owner`, only if that owner still holds it (a worker shutting down; pass
    `count_attempt=False` so the hand-back does not use up an attempt). With `owner=None`,
    only if its lease has expired (the sweep). The old owner is fenced off either way.
    """
    now = now or utcnow()
    query = update(Chunk).where(Chunk.id == chunk_id, Chunk.state == ChunkState.RUNNING)
    if owner is not None:
        query = query.where(Chunk.lease_owner == owner)
    else:
        query = query.where(Chunk.lease_expires_at < now)
    values: dict[str, Any] = {
        "state": ChunkState.QUEUED,
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if not count_attempt:
        values["attempts"] = Chunk.attempts - 1
    done = session.execute(query.values(**values).execution_options(synchronize_session=False))
    return _rowcount(done) == 1


def expired_chunks(
    session: Session, *, model: str | None = None, now: datetime | None = None, limit: int = 500
) -> list[int]:
    """Running chunks whose lease has expired (their worker died or froze)."""
    now = now or utcnow()
    query = (
        select(Chunk.id)
        .join(Job, Job.id == Chunk.job_id)
        .where(Chunk.state == ChunkState.RUNNING, Chunk.lease_expires_at < now)
    )
    if model is not None:
        query = query.where(Job.model == model)
    return list(session.scalars(query.order_by(Chunk.id).limit(limit)))


def unclaimed_chunks(
    session: Session,
    *,
    model: str | None = None,
    created_before: datetime | None = None,
    limit: int = 1000,
) -> list[int]:
    """Queued chunks of runnable jobs, oldest first (to re-enqueue if their message was lost).

    `created_before` skips jobs so new that their creator may not have enqueued them yet.
    """
    query = (
        select(Chunk.id)
        .join(Job, Job.id == Chunk.job_id)
        .where(Chunk.state == ChunkState.QUEUED, Job.status.in_(RUNNABLE_STATUSES))
    )
    if model is not None:
        query = query.where(Job.model == model)
    if created_before is not None:
        query = query.where(Job.created_at < created_before)
    return list(session.scalars(query.order_by(Chunk.id).limit(limit)))


def cancelling_jobs(session: Session, *, model: str | None = None) -> list[str]:
    """Jobs waiting in `cancelling` (the sweep finishes those whose workers are gone)."""
    query = select(Job.id).where(Job.status == JobStatus.CANCELLING)
    if model is not None:
        query = query.where(Job.model == model)
    return list(session.scalars(query))


def finish_job_if_done(session: Session, job_id: str, *, now: datetime | None = None) -> JobStatus:
    """Move the job to its terminal state when nothing is left to run; returns its status.

    cancelling -> cancelled once no chunk holds a live lease (requests without a result get a
    `cancelled` result); otherwise, when every chunk is done: finalizing -> completed, or
    failed when every request failed.
    """
    now = now or utcnow()
    job = _lock_job(session, job_id)
    if job.status.is_terminal:
        return job.status
    if job.status == JobStatus.CANCELLING:
        live = session.scalar(
            select(func.count(Chunk.id)).where(
                Chunk.job_id == job_id,
                Chunk.state == ChunkState.RUNNING,
                Chunk.lease_expires_at >= now,
            )
        )
        if live:
            return job.status
        _cancel_remaining(session, job, now)
        return job.status
    unfinished = session.scalar(
        select(func.count(Chunk.id)).where(
            Chunk.job_id == job_id, Chunk.state.in_((ChunkState.QUEUED, ChunkState.RUNNING))
        )
    )
    if unfinished:
        return job.status
    job.finalizing_at = now
    if job.completed_count == 0 and job.failed_count > 0:
        job.status = JobStatus.FAILED
        job.failed_at = now
        job.errors = [
            *job.errors,
            {"code": "all_requests_failed", "message": "every request of the job failed"},
        ]
    else:
        job.status = JobStatus.COMPLETED
        job.completed_at = now
    session.flush()
    return job.status


def _cancel_remaining(session: Session, job: Job, now: datetime) -> None:
    """Give every request without a result a `cancelled` one; stop all unfinished chunks."""
    # One INSERT ... SELECT over all the job's requests; those that have a result already are
    # skipped by ON CONFLICT DO NOTHING (no planner-sensitive anti-join over results).
    marker = RequestOutcome.cancelled(0, "")
    error = {"code": marker.error_code, "message": marker.error_message}
    source = select(
        JobRequest.job_id,
        JobRequest.custom_id,
        JobRequest.input_index,
        literal(ResultStatus.CANCELLED, Result.__table__.c.status.type),
        literal(error, Result.__table__.c.error.type),
        literal(now, Result.__table__.c.created_at.type),
    ).where(JobRequest.job_id == job.id)
    columns = ["job_id", "custom_id", "input_index", "status", "error", "created_at"]
    session.execute(_insert_ignoring_duplicates(session).from_select(columns, source))
    # Every request now has exactly one result, so the cancelled ones are the rest.
    job.cancelled_count = job.total_count - job.completed_count - job.failed_count
    session.execute(
        update(Chunk)
        .where(Chunk.job_id == job.id, Chunk.state.in_((ChunkState.QUEUED, ChunkState.RUNNING)))
        .values(state=ChunkState.CANCELLED, lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    job.status = JobStatus.CANCELLED
    job.cancelled_at = now
    session.flush()
