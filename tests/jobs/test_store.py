"""The job store's API side on SQLite and PostgreSQL: keys, jobs, tenancy, pagination, cancel."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs import store
from jobs.models import ApiKey, Chunk, ChunkState, Job, JobRequest, JobStatus, Result, ResultStatus
from jobs.types import ChunkOutcome, RequestOutcome
from tests.jobs import factories


def test_api_key_is_stored_only_as_a_hash_and_authenticates(db_session: Session) -> None:
    name = factories.tenant(db_session).name
    key, plaintext = store.create_api_key(db_session, name)
    assert plaintext.startswith(store.KEY_PREFIX)
    stored = db_session.scalars(select(ApiKey).where(ApiKey.tenant_id == key.tenant_id)).all()
    assert [k.key_hash for k in stored] == [store.hash_api_key(plaintext)]
    assert all(plaintext not in (k.key_hash, k.prefix) for k in stored)
    tenant = store.authenticate(db_session, plaintext)
    assert tenant is not None and tenant.name == name
    assert key.last_used_at is not None


@pytest.mark.parametrize("wrong", ["", "s4c_nope", "Bearer x", "s4c_" + "A" * 43])
def test_unknown_keys_do_not_authenticate(db_session: Session, wrong: str) -> None:
    store.create_api_key(db_session, "acme")
    assert store.authenticate(db_session, wrong) is None


def test_revoked_key_no_longer_authenticates(db_session: Session) -> None:
    key, plaintext = store.create_api_key(db_session, "acme")
    assert store.revoke_api_key(db_session, key.id)
    db_session.expire_all()
    assert store.authenticate(db_session, plaintext) is None
    assert not store.revoke_api_key(db_session, key.id)


def test_create_job_stores_requests_and_splits_chunks(db_session: Session) -> None:
    owner = factories.tenant(db_session)
    job = factories.job(db_session, owner, 5, chunk_size=2, metadata={"team": "x"})
    view = store.job_view(job)
    assert view["id"].startswith("job_") and view["object"] == "job"
    assert view["status"] == "validating"
    assert view["request_counts"] == {"total": 5, "completed": 0, "failed": 0, "cancelled": 0}
    assert view["metadata"] == {"team": "x"}
    assert view["stats"]["tokens_generated"] is None
    assert view["stats"]["baseline"]["measured"] is False
    chunks = db_session.scalars(select(Chunk).where(Chunk.job_id == job.id).order_by(Chunk.seq))
    assert [(c.start_index, c.end_index, c.state) for c in chunks] == [
        (0, 2, ChunkState.QUEUED),
        (2, 4, ChunkState.QUEUED),
        (4, 5, ChunkState.QUEUED),
    ]
    assert len(store.chunk_ids(db_session, job.id)) == 3
    rows = db_session.scalars(
        select(JobRequest).where(JobRequest.job_id == job.id).order_by(JobRequest.input_index)
    ).all()
    original = factories.new_job(5).requests
    assert [store.prompt_from_json(r.prompt) for r in rows] == [r.prompt for r in original]
    assert [store.params_from_json(r.params) for r in rows] == [r.params for r in original]


def test_same_idempotency_key_returns_the_existing_job(db_session: Session) -> None:
    owner = factories.tenant(db_session)
    first = factories.job(db_session, owner, 3, idempotency_key="abc")
    again = factories.job(db_session, owner, 7, idempotency_key="abc")
    assert again.id == first.id
    assert store.find_idempotent_job(db_session, owner, "abc") is not None
    other = factories.tenant(db_session)
    second = factories.job(db_session, other, 1, idempotency_key="abc")
    assert second.id != first.id
    stored = select(func.count(JobRequest.id)).where(JobRequest.job_id.in_([first.id, second.id]))
    assert db_session.scalar(stored) == 3 + 1
    assert db_session.scalar(select(func.count(Job.id)).where(Job.tenant_id == owner.id)) == 1


def test_another_tenants_job_is_not_found(db_session: Session) -> None:
    owner, intruder = factories.tenant(db_session), factories.tenant(db_session)
    job = factories.job(db_session, owner, 3)
    assert store.get_job(db_session, intruder, job.id) is None
    assert store.cancel_job(db_session, intruder, job.id) is None
    assert store.list_jobs(db_session, intruder) == ([], False)
    assert store.list_results(db_session, intruder, job.id) == ([], False)
    assert list(store.iter_results(db_session, intruder, job.id)) == []
    with pytest.raises(store.UnknownCursor):
        store.list_jobs(db_session, intruder, after=job.id)
    assert store.get_job(db_session, owner, job.id) is job


def test_list_jobs_pages_newest_first(db_session: Session) -> None:
    owner = factories.tenant(db_session)
    jobs = [factories.job(db_session, owner, 1) for _ in range(5)]
    for age, job in enumerate(reversed(jobs)):  # distinct created_at, newest = jobs[-1]
        job.created_at = job.created_at - timedelta(seconds=age)
    db_session.flush()
    page, more = store.list_jobs(db_session, owner, limit=2)
    assert [j.id for j in page] == [jobs[4].id, jobs[3].id] and more
    page, more = store.list_jobs(db_session, owner, after=page[-1].id, limit=2)
    assert [j.id for j in page] == [jobs[2].id, jobs[1].id] and more
    page, more = store.list_jobs(db_session, owner, after=page[-1].id, limit=2)
    assert [j.id for j in page] == [jobs[0].id] and not more


def _finish_chunk(session: Session, chunk_id: int) -> None:
    claim = store.claim_chunk(session, chunk_id, "w", lease_seconds=60)
    assert claim is not None
    outcomes = [
        RequestOutcome(r.input_index, r.custom_id, ResultStatus.SUCCEEDED, "ok", "stop")
        for r in store.pending_requests(session, claim)
    ]
    assert store.record_chunk_results(session, claim, ChunkOutcome(outcomes))


def test_results_page_and_stream_in_input_order(db_session: Session) -> None:
    owner = factories.tenant(db_session)
    job = factories.job(db_session, owner, 5, chunk_size=2)
    for chunk_id in reversed(store.chunk_ids(db_session, job.id)):
        _finish_chunk(db_session, chunk_id)
    page, more = store.list_results(db_session, owner, job.id, limit=3)
    assert [r.input_index for r in page] == [0, 1, 2] and more
    page, more = store.list_results(db_session, owner, job.id, after_index=2, limit=3)
    assert [r.input_index for r in page] == [3, 4] and not more
    streamed = [
        store.result_view(r) for r in store.iter_results(db_session, owner, job.id, batch_size=2)
    ]
    assert [r["custom_id"] for r in streamed] == [f"req-{i}" for i in range(5)]
    assert streamed[0]["response"]["text"] == "ok" and streamed[0]["error"] is None
    assert store.job_view(store.get_job(db_session, owner, job.id))["status"] == "completed"  # type: ignore[arg-type]


def test_cancel_without_running_chunks_cancels_at_once(db_session: Session) -> None:
    owner = factories.tenant(db_session)
    job = factories.job(db_session, owner, 5, chunk_size=2)
    _finish_chunk(db_session, store.chunk_ids(db_session, job.id)[0])
    cancelled = store.cancel_job(db_session, owner, job.id)
    assert cancelled is not None and cancelled.status == JobStatus.CANCELLED
    view = store.job_view(cancelled)
    assert view["request_counts"] == {"total": 5, "completed": 2, "failed": 0, "cancelled": 3}
    assert view["cancelling_at"] is not None and view["cancelled_at"] is not None
    statuses = db_session.scalars(
        select(Result.status).where(Result.job_id == job.id).order_by(Result.input_index)
    ).all()
    assert statuses == [ResultStatus.SUCCEEDED] * 2 + [ResultStatus.CANCELLED] * 3
    assert store.chunk_ids(db_session, job.id) == []
    assert store.cancel_job(db_session, owner, job.id) is cancelled  # idempotent


def test_cancel_waits_for_the_running_chunk(db_session: Session) -> None:
    owner = factories.tenant(db_session)
    job = factories.job(db_session, owner, 4, chunk_size=2)
    first, second = store.chunk_ids(db_session, job.id)
    claim = store.claim_chunk(db_session, first, "w", lease_seconds=60)
    assert claim is not None
    assert store.cancel_job(db_session, owner, job.id).status == JobStatus.CANCELLING  # type: ignore[union-attr]
    assert store.claim_chunk(db_session, second, "w2", lease_seconds=60) is None
    outcomes = [
        RequestOutcome(0, "req-0", ResultStatus.SUCCEEDED, "ok", "stop"),
        RequestOutcome.cancelled(1, "req-1"),
    ]
    assert store.record_chunk_results(db_session, claim, ChunkOutcome(outcomes))
    db_session.refresh(job)
    assert job.status == JobStatus.CANCELLED
    assert (job.completed_count, job.failed_count, job.cancelled_count) == (1, 0, 3)
