"""The job store, worker side: recording a chunk's results and finishing jobs.

Results are inserted with ON CONFLICT DO NOTHING on (job_id, custom_id) and only while the
writer still holds the chunk's lease: at-least-once execution, exactly-once results. Counts,
statistics and the job's final state change under the job's row lock. Plain functions taking
a Session; they never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobs.chunks import RUNNABLE_STATUSES, is_due, rowcount
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

_PAGE = 1000


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
    if rowcount(session.execute(fence.execution_options(synchronize_session=False))) != 1:
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


def cancelling_jobs(session: Session, *, model: str | None = None) -> list[str]:
    """Jobs waiting in `cancelling` (the sweep finishes those whose workers are gone)."""
    query = select(Job.id).where(Job.status == JobStatus.CANCELLING)
    if model is not None:
        query = query.where(Job.model == model)
    return list(session.scalars(query))


def due_jobs(
    session: Session, *, model: str | None = None, now: datetime | None = None
) -> list[str]:
    """Runnable jobs whose completion window has ended (the sweep expires them)."""
    query = select(Job.id).where(
        Job.status.in_(RUNNABLE_STATUSES), Job.expires_at <= (now or utcnow())
    )
    if model is not None:
        query = query.where(Job.model == model)
    return list(session.scalars(query))


def finish_job_if_done(session: Session, job_id: str, *, now: datetime | None = None) -> JobStatus:
    """Move the job to its terminal state when nothing is left to run; returns its status.

    cancelling -> cancelled once no chunk holds a live lease (requests without a result get a
    `cancelled` result); when every chunk is done: finalizing -> completed, or failed when
    every request failed; a job past its `expires_at` with work left -> expired once no chunk
    holds a live lease (requests without a result get a `batch_expired` one).
    """
    now = now or utcnow()
    job = _lock_job(session, job_id)
    if job.status.is_terminal:
        return job.status
    if job.status == JobStatus.CANCELLING:
        if not _has_live_lease(session, job_id, now):
            _stop_remaining(session, job, now, JobStatus.CANCELLED)
        return job.status
    unfinished = session.scalar(
        select(func.count(Chunk.id)).where(
            Chunk.job_id == job_id, Chunk.state.in_((ChunkState.QUEUED, ChunkState.RUNNING))
        )
    )
    if unfinished:
        if is_due(job.expires_at, now) and not _has_live_lease(session, job_id, now):
            _stop_remaining(session, job, now, JobStatus.EXPIRED)
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


def _has_live_lease(session: Session, job_id: str, now: datetime) -> bool:
    live = session.scalar(
        select(func.count(Chunk.id)).where(
            Chunk.job_id == job_id,
            Chunk.state == ChunkState.RUNNING,
            Chunk.lease_expires_at >= now,
        )
    )
    return bool(live)


def _stop_remaining(session: Session, job: Job, now: datetime, status: JobStatus) -> None:
    """End the job in `status` (cancelled or expired): every request without a result gets a
    `cancelled` one (error code `cancelled` or `batch_expired`); unfinished chunks stop."""
    # One INSERT ... SELECT over all the job's requests; those that have a result already are
    # skipped by ON CONFLICT DO NOTHING (no planner-sensitive anti-join over results).
    expired = status == JobStatus.EXPIRED
    marker = RequestOutcome.expired(0, "") if expired else RequestOutcome.cancelled(0, "")
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
    job.status = status
    if expired:
        job.expired_at = now
    else:
        job.cancelled_at = now
    session.flush()
