"""The worker side of the store: leases, fencing, exactly-once results, job completion, stats."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs import store
from jobs.chunks import job_stop_reason
from jobs.models import Chunk, ChunkState, JobStatus, Result, ResultStatus, utcnow
from jobs.recording import cancelling_jobs, due_jobs
from jobs.store import baseline_chunk_seqs
from jobs.types import BaselineRun, ChunkOutcome, Claim, RequestOutcome
from s4c_engine.config import RequestStats
from tests.jobs import factories

LEASE = 60


def _succeeded(session: Session, claim: Claim, tokens: int = 4) -> list[RequestOutcome]:
    stats = RequestStats(
        prompt_tokens=3,
        completion_tokens=tokens,
        target_forwards=2,
        accepted_per_depth=(2, 1),
        attempted_per_depth=(2, 2),
        tree_nodes=7,
        batch_size=2,
    )
    return [
        RequestOutcome(r.input_index, r.custom_id, ResultStatus.SUCCEEDED, "out", "length", stats)
        for r in store.pending_requests(session, claim)
    ]


def test_claim_is_compare_and_set(db_session: Session) -> None:
    job = factories.job(db_session, factories.tenant(db_session), 4, chunk_size=2)
    chunk_id = store.chunk_ids(db_session, job.id)[0]
    claim = store.claim_chunk(db_session, chunk_id, "w1", lease_seconds=LEASE)
    assert (
        claim is not None and claim.attempt == 1 and (claim.start_index, claim.end_index) == (0, 2)
    )
    assert store.claim_chunk(db_session, chunk_id, "w2", lease_seconds=LEASE) is None
    db_session.refresh(job)
    assert job.status == JobStatus.IN_PROGRESS and job.in_progress_at is not None


def test_expired_lease_is_reclaimed_and_the_old_owner_fenced_off(db_session: Session) -> None:
    job = factories.job(db_session, factories.tenant(db_session), 2, chunk_size=2)
    chunk_id = store.chunk_ids(db_session, job.id)[0]
    old = store.claim_chunk(db_session, chunk_id, "frozen", lease_seconds=LEASE)
    assert old is not None
    later = utcnow() + timedelta(seconds=LEASE + 1)
    # the database may hold other tests' jobs: look for this chunk, not for a whole list
    assert chunk_id in store.expired_chunks(db_session, now=later)
    assert chunk_id not in store.expired_chunks(db_session, now=later, model="other-model")
    new = store.claim_chunk(db_session, chunk_id, "alive", lease_seconds=LEASE, now=later)
    assert new is not None and new.attempt == 2
    # the frozen worker wakes up: its heartbeat and its writes are refused
    assert not store.heartbeat(db_session, old, lease_seconds=LEASE)
    assert not store.record_chunk_results(
        db_session, old, ChunkOutcome(_succeeded(db_session, old))
    )
    assert db_session.scalar(select(func.count(Result.id)).where(Result.job_id == job.id)) == 0
    assert store.heartbeat(db_session, new, lease_seconds=LEASE)
    assert store.record_chunk_results(db_session, new, ChunkOutcome(_succeeded(db_session, new)))
    assert db_session.scalar(select(func.count(Result.id)).where(Result.job_id == job.id)) == 2


def test_recording_twice_never_duplicates_results_or_counts(db_session: Session) -> None:
    job = factories.job(db_session, factories.tenant(db_session), 2, chunk_size=2)
    chunk_id = store.chunk_ids(db_session, job.id)[0]
    claim = store.claim_chunk(db_session, chunk_id, "w", lease_seconds=LEASE)
    assert claim is not None
    outcomes = _succeeded(db_session, claim)
    assert store.record_chunk_results(db_session, claim, ChunkOutcome(outcomes[:1]), complete=False)
    assert store.pending_requests(db_session, claim)[0].input_index == 1
    # a re-run produces both again: the first keeps its original row
    assert store.record_chunk_results(db_session, claim, ChunkOutcome(outcomes, 1.0, "s4c"))
    db_session.refresh(job)
    assert db_session.scalar(select(func.count(Result.id)).where(Result.job_id == job.id)) == 2
    assert (job.completed_count, job.status) == (2, JobStatus.COMPLETED)
    assert job.stats.tokens_generated == 8
    # the chunk is done: any late duplicate delivery is a no-op
    assert store.claim_chunk(db_session, chunk_id, "late", lease_seconds=LEASE) is None


def test_released_chunk_returns_to_the_queue(db_session: Session) -> None:
    job = factories.job(db_session, factories.tenant(db_session), 2, chunk_size=2)
    chunk_id = store.chunk_ids(db_session, job.id)[0]
    claim = store.claim_chunk(db_session, chunk_id, "w", lease_seconds=LEASE)
    assert claim is not None
    assert chunk_id not in store.unclaimed_chunks(db_session)
    assert not store.release_chunk(db_session, chunk_id, None)  # lease still live
    assert store.release_chunk(db_session, chunk_id, "w", count_attempt=False)
    chunk = db_session.get(Chunk, chunk_id)
    assert chunk is not None
    db_session.refresh(chunk)
    assert (chunk.state, chunk.lease_owner, chunk.attempts) == (ChunkState.QUEUED, None, 0)
    assert chunk_id in store.unclaimed_chunks(db_session)
    assert not store.record_chunk_results(
        db_session, claim, ChunkOutcome(_succeeded(db_session, claim))
    )


def test_job_fails_when_every_request_failed(db_session: Session) -> None:
    owner = factories.tenant(db_session)
    job = factories.job(db_session, owner, 2, chunk_size=2)
    claim = store.claim_chunk(
        db_session, store.chunk_ids(db_session, job.id)[0], "w", lease_seconds=LEASE
    )
    assert claim is not None
    failures = [RequestOutcome.failure(i, f"req-{i}", "engine_error", "boom") for i in range(2)]
    assert store.record_chunk_results(db_session, claim, ChunkOutcome(failures))
    db_session.refresh(job)
    view = store.job_view(job)
    assert view["status"] == "failed" and view["failed_at"] is not None
    assert view["errors"][0]["code"] == "all_requests_failed"
    assert view["request_counts"]["failed"] == 2
    result = store.list_results(db_session, owner, job.id)[0][0]
    assert store.result_view(result)["error"] == {"code": "engine_error", "message": "boom"}
    assert store.result_view(result)["response"] is None


def test_statistics_aggregate_over_chunks_with_a_measured_baseline(db_session: Session) -> None:
    owner = factories.tenant(db_session)
    job = factories.job(db_session, owner, 4, chunk_size=2)
    first, second = store.chunk_ids(db_session, job.id)
    claim = store.claim_chunk(db_session, first, "w", lease_seconds=LEASE)
    assert claim is not None
    baseline = BaselineRun(
        sample_size=2, tokens=8, seconds=2.0, sample_tokens=8, sample_seconds=1.0,
        greedy_checked=2, greedy_matched=2, plain_runs=1, sample_runs=2,
    )  # fmt: skip
    store.record_chunk_results(
        db_session, claim, ChunkOutcome(_succeeded(db_session, claim), 1.0, "s4c", baseline)
    )
    claim = store.claim_chunk(db_session, second, "w", lease_seconds=LEASE)
    assert claim is not None
    store.record_chunk_results(
        db_session, claim, ChunkOutcome(_succeeded(db_session, claim), 3.0, "s4c")
    )
    db_session.refresh(job)
    stats = store.job_view(job)["stats"]
    assert stats["method"] == "s4c"
    assert stats["tokens_generated"] == 16 and stats["generation_seconds"] == 4.0
    assert stats["tokens_per_second"] == 4.0
    assert stats["target_forwards"] == 8 and stats["tau"] == 2.0
    assert stats["acceptance_per_depth"] == [1.0, 0.5]
    assert stats["tree_sizes"] == [7] and stats["batch_sizes"] == [2]
    assert stats["baseline"] == {
        "measured": True,
        "method": "ar",
        "sample_size": 2,
        "tokens_per_second": 4.0,
        "sample_tokens_per_second": 8.0,
        "speedup": 2.0,
        "plain_runs": 1,
        "sample_runs": 2,
        "greedy_checked": 2,
        "greedy_matched": 2,
    }
    one = store.list_results(db_session, owner, job.id)[0][0]
    assert store.result_view(one)["response"]["stats"]["tau"] == 2.0


def test_cancelling_job_is_finished_once_its_running_lease_expires(db_session: Session) -> None:
    owner = factories.tenant(db_session)
    job = factories.job(db_session, owner, 2, chunk_size=2)
    chunk_id = store.chunk_ids(db_session, job.id)[0]
    assert store.claim_chunk(db_session, chunk_id, "dead", lease_seconds=LEASE) is not None
    store.cancel_job(db_session, owner, job.id)
    assert job_stop_reason(db_session, job.id) == "cancelled"
    assert job_stop_reason(db_session, "job_gone") == "cancelled"  # a deleted job stops too
    assert cancelling_jobs(db_session) == [job.id]
    later = utcnow() + timedelta(seconds=LEASE + 1)
    assert store.finish_job_if_done(db_session, job.id) == JobStatus.CANCELLING
    assert store.finish_job_if_done(db_session, job.id, now=later) == JobStatus.CANCELLED
    results = db_session.scalars(select(Result.status).where(Result.job_id == job.id)).all()
    assert results == [ResultStatus.CANCELLED] * 2


def test_baseline_sample_is_whole_chunks_spread_over_the_job() -> None:
    assert baseline_chunk_seqs(100, 16, 0.0, 2) == set()
    assert baseline_chunk_seqs(100, 16, 0.05, 2) == {0}  # 5 requests -> one chunk
    assert baseline_chunk_seqs(100, 10, 0.25, 2) == {0, 3, 6}  # 25 -> 3 of 10 chunks
    assert baseline_chunk_seqs(3, 16, 0.01, 2) == {0}
    assert baseline_chunk_seqs(40, 4, 1.0, 2) == set(range(10))


def test_a_window_sets_expires_at_and_the_settings_give_the_default(db_session: Session) -> None:
    owner = factories.tenant(db_session)
    windowed = factories.job(db_session, owner, 2, completion_window="24h")
    assert windowed.completion_window == "24h" and windowed.expires_at is not None
    assert windowed.expires_at - windowed.created_at == timedelta(hours=24)
    assert factories.job(db_session, owner, 2).expires_at is None  # no window: never expires
    by_default = store.create_job(
        db_session,
        owner,
        factories.new_job(2),
        settings=factories.settings(completion_window="90m"),
    )
    assert by_default.completion_window == "90m"
    assert by_default.expires_at == by_default.created_at + timedelta(minutes=90)
    view = store.job_view(windowed)
    assert view["completion_window"] == "24h"
    assert view["expires_at"] == int(windowed.created_at.timestamp()) + 86400


def test_a_job_past_its_window_is_not_claimed_and_expires_with_batch_expired_results(
    db_session: Session,
) -> None:
    owner = factories.tenant(db_session)
    job = factories.job(db_session, owner, 4, chunk_size=2, completion_window="1h")
    first, second = store.chunk_ids(db_session, job.id)
    claim = store.claim_chunk(db_session, first, "w1", lease_seconds=LEASE)
    assert claim is not None and job_stop_reason(db_session, job.id) is None
    store.record_chunk_results(db_session, claim, ChunkOutcome(_succeeded(db_session, claim)))
    assert store.finish_job_if_done(db_session, job.id) == JobStatus.IN_PROGRESS
    later = utcnow() + timedelta(hours=1, seconds=1)
    assert job.id in due_jobs(db_session, now=later)
    assert job.id not in due_jobs(db_session, now=utcnow())
    assert job_stop_reason(db_session, job.id, now=later) == "expired"
    assert store.claim_chunk(db_session, second, "w2", lease_seconds=LEASE, now=later) is None
    assert second not in store.unclaimed_chunks(db_session, now=later)
    assert store.finish_job_if_done(db_session, job.id, now=later) == JobStatus.EXPIRED
    db_session.refresh(job)
    assert job.expired_at == later and job.cancelled_at is None
    assert (job.completed_count, job.failed_count, job.cancelled_count) == (2, 0, 2)
    results = {
        r.input_index: r for r in db_session.scalars(select(Result).where(Result.job_id == job.id))
    }
    assert [results[i].status for i in range(4)] == [ResultStatus.SUCCEEDED] * 2 + [
        ResultStatus.CANCELLED
    ] * 2
    assert {results[i].error["code"] for i in (2, 3)} == {"batch_expired"}  # type: ignore[index]
    states = db_session.scalars(select(Chunk.state).where(Chunk.job_id == job.id)).all()
    assert sorted(states) == sorted([ChunkState.DONE, ChunkState.CANCELLED])
    assert job_stop_reason(db_session, job.id) == "expired"
    assert store.cancel_job(db_session, owner, job.id).status == JobStatus.EXPIRED  # type: ignore[union-attr]


def test_expiry_waits_for_a_live_lease_and_keeps_what_the_chunk_recorded(
    db_session: Session,
) -> None:
    owner = factories.tenant(db_session)
    job = factories.job(db_session, owner, 4, chunk_size=2, completion_window="10s")
    first, _ = store.chunk_ids(db_session, job.id)
    claim = store.claim_chunk(db_session, first, "w1", lease_seconds=LEASE)
    assert claim is not None
    later = utcnow() + timedelta(seconds=11)
    # the running chunk's worker stops at its next check and records; until then: in progress
    assert store.finish_job_if_done(db_session, job.id, now=later) == JobStatus.IN_PROGRESS
    _, two = store.pending_requests(db_session, claim)
    stopped = [
        _succeeded(db_session, claim)[0],
        RequestOutcome.expired(two.input_index, two.custom_id),
    ]
    assert store.record_chunk_results(db_session, claim, ChunkOutcome(stopped), now=later)
    db_session.refresh(job)
    assert job.status == JobStatus.EXPIRED and job.expired_at == later
    assert (job.completed_count, job.cancelled_count) == (1, 3)
    codes = db_session.scalars(
        select(Result.error).where(Result.job_id == job.id, Result.status == ResultStatus.CANCELLED)
    ).all()
    assert [c["code"] for c in codes] == ["batch_expired"] * 3  # type: ignore[index]


def test_a_job_that_finishes_inside_its_window_completes(db_session: Session) -> None:
    owner = factories.tenant(db_session)
    job = factories.job(db_session, owner, 2, chunk_size=2, completion_window="1s")
    claim = store.claim_chunk(
        db_session, store.chunk_ids(db_session, job.id)[0], "w1", lease_seconds=LEASE
    )
    assert claim is not None
    # recorded after the window ended but with nothing left to run: completed, not expired
    later = utcnow() + timedelta(seconds=5)
    outcome = ChunkOutcome(_succeeded(db_session, claim))
    assert store.record_chunk_results(db_session, claim, outcome, now=later)
    db_session.refresh(job)
    assert job.status == JobStatus.COMPLETED and job.expired_at is None
