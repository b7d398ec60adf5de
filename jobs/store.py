"""The job store: creating, reading and cancelling jobs and their results.

Plain functions taking a Session; they flush but never commit (whoever opened the session
owns the transaction). Every read is filtered by tenant, so another tenant's job is simply
not found. Tenants and keys (`jobs.keys`), the worker side (`jobs.chunks`, `jobs.recording`)
and the JSON views (`jobs.views`) are re-exported here so callers have one place to look.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from sqlalchemy import and_, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.chunks import (
    claim_chunk,
    expired_chunks,
    heartbeat,
    pending_requests,
    release_chunk,
    unclaimed_chunks,
)
from jobs.keys import (
    KEY_PREFIX,
    authenticate,
    create_api_key,
    create_tenant,
    hash_api_key,
    revoke_api_key,
)
from jobs.models import (
    Chunk,
    ChunkState,
    IdempotencyKey,
    Job,
    JobRequest,
    JobStats,
    JobStatus,
    Result,
    Tenant,
    utcnow,
)
from jobs.recording import finish_job_if_done, record_chunk_results
from jobs.settings import Settings
from jobs.types import NewJob
from jobs.views import job_view, result_view
from jobs.windows import completion_window
from s4c_engine.config import ChatMessage, Prompt, SamplingParams

__all__ = [
    "KEY_PREFIX",
    "UnknownCursor",
    "authenticate",
    "cancel_job",
    "chunk_ids",
    "claim_chunk",
    "create_api_key",
    "create_job",
    "create_tenant",
    "expired_chunks",
    "find_idempotent_job",
    "finish_job_if_done",
    "get_job",
    "hash_api_key",
    "heartbeat",
    "iter_results",
    "job_view",
    "list_jobs",
    "list_results",
    "params_from_json",
    "pending_requests",
    "prompt_from_json",
    "record_chunk_results",
    "release_chunk",
    "result_view",
    "revoke_api_key",
    "unclaimed_chunks",
]


_INSERT_PAGE = 2000


class UnknownCursor(LookupError):
    """`after` names no job of this tenant."""


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def find_idempotent_job(session: Session, tenant: Tenant, key: str) -> Job | None:
    """The job an earlier request with Idempotency-Key `key` created, if any."""
    job_id = session.scalar(
        select(IdempotencyKey.job_id).where(
            IdempotencyKey.tenant_id == tenant.id, IdempotencyKey.key == key
        )
    )
    return None if job_id is None else get_job(session, tenant, job_id)


def baseline_chunk_seqs(total: int, chunk_size: int, fraction: float, min_count: int) -> set[int]:
    """Which chunks re-run with plain decoding: enough whole chunks (spread evenly over the
    job) to cover max(min_count, ceil(fraction * total)) requests; none when fraction is 0.

    Whole chunks, because the comparison must run at the same batch size as the real run.
    """
    if fraction <= 0 or total == 0:
        return set()
    wanted = min(total, max(min_count, math.ceil(fraction * total)))
    n_chunks = math.ceil(total / chunk_size)
    picked = min(n_chunks, math.ceil(wanted / chunk_size))
    return {(i * n_chunks) // picked for i in range(picked)}


def create_job(
    session: Session, tenant: Tenant, new_job: NewJob, *, settings: Settings | None = None
) -> Job:
    """Store a validated job with its requests, split into chunks of `settings.chunk_size`.

    With an idempotency key already used by this tenant, returns that job and writes nothing.
    The caller commits, then enqueues `chunk_ids(session, job.id)` on
    `messaging.queue_for_model(job.model)`.
    """
    if not new_job.requests:
        raise ValueError("a job needs at least one request")
    cfg = settings or Settings.from_env({})
    if new_job.idempotency_key is not None:
        existing = find_idempotent_job(session, tenant, new_job.idempotency_key)
        if existing is not None:
            return existing
    now = utcnow()
    total = len(new_job.requests)
    chunk_size = max(1, cfg.chunk_size)
    fraction = cfg.baseline_sample if new_job.baseline_sample is None else new_job.baseline_sample
    window = new_job.completion_window or cfg.completion_window
    expires_at = None if window is None else now + completion_window(window)
    job = Job(
        id=new_job_id(),
        tenant_id=tenant.id,
        status=JobStatus.VALIDATING,
        model=new_job.model or cfg.model_name,
        metadata_=dict(new_job.metadata),
        errors=[],
        baseline_sample=fraction,
        completion_window=window,
        expires_at=expires_at,
        total_count=total,
        completed_count=0,
        failed_count=0,
        cancelled_count=0,
        chunks_total=math.ceil(total / chunk_size),
        created_at=now,
    )
    job.stats = JobStats(job_id=job.id)
    session.add(job)
    session.flush()
    if new_job.idempotency_key is not None and not _claim_idempotency_key(
        session, tenant, new_job.idempotency_key, job
    ):
        # A concurrent request with the same key committed first: its job is the answer.
        session.delete(job)
        session.flush()
        winner = find_idempotent_job(session, tenant, new_job.idempotency_key)
        if winner is None:
            raise RuntimeError(f"idempotency key {new_job.idempotency_key!r} race; retry")
        return winner
    for start in range(0, total, _INSERT_PAGE):  # pages keep the row dicts' memory bounded
        session.execute(
            insert(JobRequest),
            [
                {
                    "job_id": job.id,
                    "input_index": r.index,
                    "custom_id": r.custom_id,
                    "prompt": asdict(r.prompt),
                    "params": asdict(r.params),
                }
                for r in new_job.requests[start : start + _INSERT_PAGE]
            ],
        )
    with_baseline = baseline_chunk_seqs(total, chunk_size, fraction, cfg.baseline_min_count)
    session.execute(
        insert(Chunk),
        [
            {
                "job_id": job.id,
                "seq": seq,
                "start_index": start,
                "end_index": min(start + chunk_size, total),
                "state": ChunkState.QUEUED,
                "measure_baseline": seq in with_baseline,
                "attempts": 0,
            }
            for seq, start in enumerate(range(0, total, chunk_size))
        ],
    )
    return job


def _claim_idempotency_key(session: Session, tenant: Tenant, key: str, job: Job) -> bool:
    """Insert (tenant, key) -> job in a savepoint; False if another request took the key."""
    try:
        with session.begin_nested():
            session.add(IdempotencyKey(tenant_id=tenant.id, key=key, job_id=job.id))
            session.flush()
    except IntegrityError:
        return False
    return True


def chunk_ids(session: Session, job_id: str) -> list[int]:
    """Ids of the job's chunks still waiting for a worker, in order (what to enqueue)."""
    return list(
        session.scalars(
            select(Chunk.id)
            .where(Chunk.job_id == job_id, Chunk.state == ChunkState.QUEUED)
            .order_by(Chunk.seq)
        )
    )


def prompt_from_json(data: dict[str, Any]) -> Prompt:
    """Rebuild a Prompt stored with `dataclasses.asdict`."""
    messages = data.get("messages")
    token_ids = data.get("token_ids")
    return Prompt(
        text=data.get("text"),
        messages=None if messages is None else tuple(ChatMessage(**m) for m in messages),
        token_ids=None if token_ids is None else tuple(token_ids),
    )


def params_from_json(data: dict[str, Any]) -> SamplingParams:
    return SamplingParams(**data)


def get_job(session: Session, tenant: Tenant, job_id: str) -> Job | None:
    """The tenant's job `job_id`, or None (also when it belongs to another tenant)."""
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id))


def list_jobs(
    session: Session, tenant: Tenant, after: str | None = None, limit: int = 20
) -> tuple[list[Job], bool]:
    """The tenant's jobs newest first, starting after job `after`; returns (jobs, has_more).

    Raises UnknownCursor if `after` is not one of the tenant's jobs.
    """
    query = select(Job).where(Job.tenant_id == tenant.id)
    if after is not None:
        cursor = get_job(session, tenant, after)
        if cursor is None:
            raise UnknownCursor(after)
        query = query.where(
            or_(
                Job.created_at < cursor.created_at,
                and_(Job.created_at == cursor.created_at, Job.id < cursor.id),
            )
        )
    rows = list(
        session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    )
    return rows[:limit], len(rows) > limit


def _results_query(tenant: Tenant, job_id: str) -> Any:
    return (
        select(Result)
        .join(Job, Job.id == Result.job_id)
        .where(Result.job_id == job_id, Job.tenant_id == tenant.id)
    )


def list_results(
    session: Session, tenant: Tenant, job_id: str, after_index: int | None = None, limit: int = 100
) -> tuple[list[Result], bool]:
    """The job's results in input order after `after_index`; returns (results, has_more).

    Empty for another tenant's job (check `get_job` first to answer 404).
    """
    query = _results_query(tenant, job_id)
    if after_index is not None:
        query = query.where(Result.input_index > after_index)
    rows = list(session.scalars(query.order_by(Result.input_index).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def iter_results(
    session: Session, tenant: Tenant, job_id: str, *, batch_size: int = 500
) -> Iterator[Result]:
    """All of the job's results in input order, streamed `batch_size` rows at a time.

    Memory stays constant (server-side cursor on PostgreSQL; the session's identity map holds
    rows weakly). Use a `db.read_session_factory` session so SQLite writers are not blocked.
    """
    query = _results_query(tenant, job_id).order_by(Result.input_index)
    yield from session.scalars(query.execution_options(yield_per=batch_size))


def cancel_job(session: Session, tenant: Tenant, job_id: str) -> Job | None:
    """Ask the job to stop: `cancelling` now, `cancelled` once no chunk is running (at once
    when none is). Finished results are kept; a job already finished is returned unchanged.
    None when the tenant has no such job."""
    job = session.scalar(
        select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id).with_for_update()
    )
    if job is None:
        return None
    if job.status.is_terminal or job.status == JobStatus.CANCELLING:
        return job
    job.status = JobStatus.CANCELLING
    job.cancelling_at = utcnow()
    session.flush()
    finish_job_if_done(session, job.id)
    session.refresh(job)
    return job
