"""The job store, worker side: leasing chunks (claim, heartbeat, release, find expired).

The database is the source of truth; the broker only hints which chunk to look at. A chunk is
claimed with a compare-and-set lease; recording its results (`jobs.recording`) is fenced by
the lease owner, so a frozen worker's late writes are dropped. Plain functions taking a
Session; they never commit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from jobs.models import (
    Chunk,
    ChunkState,
    Job,
    JobRequest,
    JobStatus,
    Result,
    utcnow,
)
from jobs.types import Claim

RUNNABLE_STATUSES = (JobStatus.VALIDATING, JobStatus.IN_PROGRESS)
StopReason = Literal["cancelled", "expired"]
_PAGE = 1000


def rowcount(result: Any) -> int:
    """Rows an UPDATE matched (typed access to the DBAPI count)."""
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
    job = session.execute(
        select(Job.status, Job.expires_at).where(Job.id == job_id).with_for_update()
    ).one()
    if job.status not in RUNNABLE_STATUSES or is_due(job.expires_at, now):
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
    return rowcount(done) == 1


def is_due(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a job with this `expires_at` has run out of its completion window."""
    return expires_at is not None and expires_at <= now


def job_stop_reason(
    session: Session, job_id: str, *, now: datetime | None = None
) -> StopReason | None:
    """Why a running chunk of the job should stop, or None while the job is runnable:
    `expired` once its completion window has ended, `cancelled` once it is cancelling or
    finished (or gone)."""
    job = session.execute(select(Job.status, Job.expires_at).where(Job.id == job_id)).one_or_none()
    if job is None:
        return "cancelled"
    if job.status == JobStatus.EXPIRED or (
        job.status in RUNNABLE_STATUSES and is_due(job.expires_at, now or utcnow())
    ):
        return "expired"
    return None if job.status in RUNNABLE_STATUSES else "cancelled"


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
    return rowcount(done) == 1


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
    now: datetime | None = None,
    limit: int = 1000,
) -> list[int]:
    """Queued chunks of runnable jobs within their completion window, oldest first (to
    re-enqueue if their message was lost).

    `created_before` skips jobs so new that their creator may not have enqueued them yet.
    """
    query = (
        select(Chunk.id)
        .join(Job, Job.id == Chunk.job_id)
        .where(
            Chunk.state == ChunkState.QUEUED,
            Job.status.in_(RUNNABLE_STATUSES),
            or_(Job.expires_at.is_(None), Job.expires_at > (now or utcnow())),
        )
    )
    if model is not None:
        query = query.where(Job.model == model)
    if created_before is not None:
        query = query.where(Job.created_at < created_before)
    return list(session.scalars(query.order_by(Chunk.id).limit(limit)))
