"""`run_chunk` and `sweep_once` (the functions behind the tasks) on a real tiny engine,
a real PostgreSQL database and a real Redis; no Celery worker involved."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from jobs import messaging, store
from jobs.db import transaction
from jobs.models import Chunk, ChunkState, Job, JobStatus, Result, ResultStatus, utcnow
from jobs.settings import Settings
from jobs.types import NewJob, NewRequest
from s4c_engine.config import ChatMessage, GenerationResult, Method, Prompt, SamplingParams
from worker.generation import run_chunk
from worker.lease_guard import CANCEL_CHECK_SECONDS
from worker.sweep import sweep_once


@pytest.fixture
def engine(worker_model_dir: Path, worker_heads_dir: Path) -> Any:
    """The tiny model with (untrained) S4C draft heads: speculative decoding for real. Its
    tree policy has no probability floor (the CPU table's floors would prune every node of
    these random heads), so the engine's first step drafts for sure. One engine per test:
    an engine keeps what its tree tuner measured across calls, and after an earlier test
    it may rightly prefer plain steps for these heads."""
    from s4c_engine.drafting import TreeShape
    from s4c_engine.engine import Engine
    from s4c_engine.tree_policy import TreePolicy

    policy = TreePolicy(((4, TreeShape(nodes=6, depth=3, top_k=2, lookup=2)),))
    loaded = Engine.load(
        worker_model_dir, heads_path=worker_heads_dir, max_batch_size=4, policy=policy
    )
    assert loaded.method == "s4c"
    return loaded


def submit(
    sessions: sessionmaker[Session],
    settings: Settings,
    n: int,
    *,
    max_tokens: int = 6,
    baseline_sample: float = 0.0,
    bad: set[int] | None = None,
    completion_window: str | None = None,
) -> tuple[str, list[int]]:
    requests = []
    for i in range(n):
        text = "word " * 400 if i in (bad or set()) else f"Tell me about number {i}."
        prompt = Prompt(messages=(ChatMessage("user", text),)) if i % 2 else Prompt(text=text)
        requests.append(NewRequest(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens), i))
    with transaction(sessions) as session:
        tenant = store.create_tenant(session, "acme")
        job = store.create_job(
            session,
            tenant,
            NewJob(
                requests,
                model=settings.model_name,
                baseline_sample=baseline_sample,
                completion_window=completion_window,
            ),
            settings=settings,
        )
        return job.id, store.chunk_ids(session, job.id)


def job_of(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def results_of(sessions: sessionmaker[Session], job_id: str) -> list[Result]:
    with sessions() as session:
        query = select(Result).where(Result.job_id == job_id).order_by(Result.input_index)
        return list(session.scalars(query))


@pytest.mark.parametrize("worker_db_url", ["postgresql", "sqlite"], indirect=True)
def test_chunks_complete_the_job_with_stats_and_a_measured_baseline(
    sessions: sessionmaker[Session], worker_settings: Settings, engine: Any
) -> None:
    job_id, chunk_ids = submit(sessions, worker_settings, 6, baseline_sample=1.0)
    reports = [run_chunk(sessions, engine, c, "w1", worker_settings) for c in chunk_ids]
    assert [r.outcome for r in reports] == ["recorded", "recorded"]
    results = results_of(sessions, job_id)
    assert [r.custom_id for r in results] == [f"r{i}" for i in range(6)]
    assert all(r.status == ResultStatus.SUCCEEDED and r.completion_tokens for r in results)
    job = job_of(sessions, job_id)
    view = store.job_view(job)
    assert view["status"] == "completed"
    assert view["request_counts"] == {"total": 6, "completed": 6, "failed": 0, "cancelled": 0}
    stats = view["stats"]
    assert stats["method"] == "s4c"
    assert stats["tokens_generated"] == sum(r.completion_tokens or 0 for r in results)
    assert stats["generation_seconds"] > 0 and stats["tokens_per_second"] > 0
    assert stats["target_forwards"] > 0 and 1 <= len(stats["acceptance_per_depth"]) <= 3
    assert stats["batch_sizes"] == [2, 4] and stats["tree_sizes"]
    assert results[0].stats is not None and results[0].stats["tree_nodes"] > 1
    baseline = stats["baseline"]
    assert baseline["measured"] and baseline["sample_size"] == 6
    assert baseline["tokens_per_second"] > 0 and baseline["speedup"] > 0
    assert baseline["sample_tokens_per_second"] > 0
    # each chunk: its own run, the plain re-run, a second run of the job's method
    assert baseline["plain_runs"] == 2 and baseline["sample_runs"] == 4
    # greedy speculative decoding is lossless: the plain re-run produced the same tokens
    assert baseline["greedy_checked"] == 6 and baseline["greedy_matched"] == 6


class RecordingEngine:
    """The real engine, recording the method of each `generate` call; `before_call(n)` runs
    before the n-th call (1-based) and `after_call(n, results)` may change what it returns."""

    def __init__(
        self,
        engine: Any,
        before_call: Callable[[int], None] | None = None,
        after_call: Callable[[int, list[GenerationResult]], list[GenerationResult]] | None = None,
    ) -> None:
        self.engine = engine
        self.before_call = before_call
        self.after_call = after_call
        self.methods: list[str] = []

    @property
    def method(self) -> str:
        return str(self.engine.method)

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: Sequence[SamplingParams],
        *,
        method: Method | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]:
        self.methods.append(method or self.method)
        if self.before_call is not None:
            self.before_call(len(self.methods))
        results: list[GenerationResult] = self.engine.generate(
            prompts, params, method=method, should_stop=should_stop
        )
        if self.after_call is not None:
            results = self.after_call(len(self.methods), results)
        return results


def raw_baseline(sessions: sessionmaker[Session], job_id: str) -> dict[str, float]:
    job = job_of(sessions, job_id)
    assert job.stats is not None and job.stats.baseline is not None
    return dict(job.stats.baseline)


def test_the_baseline_brackets_a_plain_rerun_between_two_runs_of_the_jobs_method(
    sessions: sessionmaker[Session], worker_settings: Settings, engine: Any
) -> None:
    job_id, chunk_ids = submit(sessions, worker_settings, 4, baseline_sample=1.0)
    recording = RecordingEngine(engine)
    assert run_chunk(sessions, recording, chunk_ids[0], "w1", worker_settings).outcome == "recorded"
    assert recording.methods == ["s4c", "ar", "s4c"]  # A-B-A on the same requests, one batch
    generated = sum(r.completion_tokens or 0 for r in results_of(sessions, job_id))
    raw = raw_baseline(sessions, job_id)
    # greedy requests: every run produced the same tokens, so the sums are exact multiples
    assert raw["tokens"] == generated and raw["sample_tokens"] == 2 * generated
    assert raw["plain_runs"] == 1 and raw["sample_runs"] == 2
    baseline = store.job_view(job_of(sessions, job_id))["stats"]["baseline"]
    assert baseline["measured"] and baseline["sample_size"] == 4
    assert baseline["speedup"] == pytest.approx(
        baseline["sample_tokens_per_second"] / baseline["tokens_per_second"]
    )
    assert (baseline["plain_runs"], baseline["sample_runs"]) == (1, 2)
    assert (baseline["greedy_checked"], baseline["greedy_matched"]) == (4, 4)


def test_a_second_speculative_run_that_differs_from_plain_decoding_is_a_greedy_mismatch(
    sessions: sessionmaker[Session], worker_settings: Settings, engine: Any
) -> None:
    def tamper_with_the_second_speculative_run(
        call: int, results: list[GenerationResult]
    ) -> list[GenerationResult]:
        if call != 3:
            return results
        first = results[0]
        changed = replace(first, token_ids=(*first.token_ids, 0))
        return [changed, *results[1:]]

    job_id, chunk_ids = submit(sessions, worker_settings, 4, baseline_sample=1.0)
    recording = RecordingEngine(engine, after_call=tamper_with_the_second_speculative_run)
    assert run_chunk(sessions, recording, chunk_ids[0], "w1", worker_settings).outcome == "recorded"
    baseline = store.job_view(job_of(sessions, job_id))["stats"]["baseline"]
    assert baseline["measured"]
    assert (baseline["greedy_checked"], baseline["greedy_matched"]) == (4, 3)


@pytest.mark.parametrize("failing_call", [2, 3], ids=["plain-rerun", "second-speculative-run"])
def test_a_failing_baseline_rerun_leaves_the_baseline_unmeasured_and_the_chunk_recorded(
    sessions: sessionmaker[Session], worker_settings: Settings, engine: Any, failing_call: int
) -> None:
    def fail(call: int) -> None:
        if call == failing_call:
            raise RuntimeError("out of memory in the re-run")

    job_id, chunk_ids = submit(sessions, worker_settings, 4, baseline_sample=1.0)
    recording = RecordingEngine(engine, before_call=fail)
    assert run_chunk(sessions, recording, chunk_ids[0], "w1", worker_settings).outcome == "recorded"
    assert recording.methods == ["s4c", "ar", "s4c"][:failing_call]
    assert all(r.status == ResultStatus.SUCCEEDED for r in results_of(sessions, job_id))
    view = store.job_view(job_of(sessions, job_id))
    assert view["status"] == "completed"
    assert view["stats"]["baseline"]["measured"] is False
    assert view["stats"]["baseline"]["speedup"] is None


@pytest.mark.parametrize("worker_db_url", ["postgresql", "sqlite"], indirect=True)
def test_a_job_cancelled_during_the_second_speculative_run_leaves_the_baseline_unmeasured(
    sessions: sessionmaker[Session], worker_settings: Settings, engine: Any
) -> None:
    job_id, chunk_ids = submit(sessions, worker_settings, 4, max_tokens=40, baseline_sample=1.0)

    def cancel_before_the_second_speculative_run(call: int) -> None:
        if call != 3:
            return
        with transaction(sessions) as session:
            store.cancel_job(session, store.create_tenant(session, "acme"), job_id)
        # the lease guard looks at the job at most once per CANCEL_CHECK_SECONDS; waiting
        # that long makes its first check in this run see the cancel
        time.sleep(CANCEL_CHECK_SECONDS)

    recording = RecordingEngine(engine, before_call=cancel_before_the_second_speculative_run)
    assert run_chunk(sessions, recording, chunk_ids[0], "w1", worker_settings).outcome == "recorded"
    assert recording.methods == ["s4c", "ar", "s4c"]
    # the chunk's own results were recorded before the baseline began
    assert all(r.status == ResultStatus.SUCCEEDED for r in results_of(sessions, job_id))
    stats = store.job_view(job_of(sessions, job_id))["stats"]
    assert stats["baseline"]["measured"] is False and stats["baseline"]["speedup"] is None


def test_shutdown_during_the_plain_rerun_leaves_the_baseline_unmeasured(
    sessions: sessionmaker[Session], worker_settings: Settings, engine: Any
) -> None:
    shutdown = threading.Event()

    def shut_down_at_the_plain_rerun(call: int) -> None:
        if call == 2:
            shutdown.set()

    job_id, chunk_ids = submit(sessions, worker_settings, 4, baseline_sample=1.0)
    recording = RecordingEngine(engine, before_call=shut_down_at_the_plain_rerun)
    report = run_chunk(sessions, recording, chunk_ids[0], "w1", worker_settings, shutdown=shutdown)
    assert report.outcome == "handed_back"
    assert recording.methods == ["s4c", "ar"]  # no second speculative run after a stop
    assert all(r.status == ResultStatus.SUCCEEDED for r in results_of(sessions, job_id))
    assert len(results_of(sessions, job_id)) == 4
    stats = store.job_view(job_of(sessions, job_id))["stats"]
    assert stats["baseline"]["measured"] is False


def test_plain_decoding_has_no_baseline_to_measure(
    sessions: sessionmaker[Session], worker_settings: Settings, worker_model_dir: Path
) -> None:
    from s4c_engine.engine import Engine

    plain = Engine.load(worker_model_dir, method="ar", max_batch_size=4)
    job_id, chunk_ids = submit(sessions, worker_settings, 4, baseline_sample=1.0)
    assert run_chunk(sessions, plain, chunk_ids[0], "w1", worker_settings).outcome == "recorded"
    stats = store.job_view(job_of(sessions, job_id))["stats"]
    assert stats["method"] == "ar" and stats["tau"] == 1.0
    assert stats["baseline"]["measured"] is False and stats["baseline"]["speedup"] is None


def test_rerunning_a_chunk_never_duplicates_results(
    sessions: sessionmaker[Session], worker_settings: Settings, engine: Any
) -> None:
    job_id, chunk_ids = submit(sessions, worker_settings, 3)
    assert run_chunk(sessions, engine, chunk_ids[0], "w1", worker_settings).outcome == "recorded"
    assert run_chunk(sessions, engine, chunk_ids[0], "w2", worker_settings).outcome == "skipped"
    with sessions() as session:
        assert session.scalar(select(func.count(Result.id)).where(Result.job_id == job_id)) == 3


def test_a_failing_request_gets_an_error_and_the_rest_complete(
    sessions: sessionmaker[Session], worker_settings: Settings, engine: Any
) -> None:
    job_id, chunk_ids = submit(sessions, worker_settings, 4, bad={2})
    assert run_chunk(sessions, engine, chunk_ids[0], "w1", worker_settings).outcome == "recorded"
    results = results_of(sessions, job_id)
    assert [r.status for r in results] == [
        ResultStatus.SUCCEEDED,
        ResultStatus.SUCCEEDED,
        ResultStatus.FAILED,
        ResultStatus.SUCCEEDED,
    ]
    assert results[2].error is not None and results[2].error["code"] == "invalid_prompt"
    view = store.job_view(job_of(sessions, job_id))
    assert view["status"] == "completed"
    assert view["request_counts"]["failed"] == 1 and view["request_counts"]["completed"] == 3


def test_a_chunk_past_its_attempts_fails_its_suspect_and_finishes_the_rest(
    sessions: sessionmaker[Session], worker_settings: Settings, engine: Any
) -> None:
    job_id, chunk_ids = submit(sessions, worker_settings, 4)
    with transaction(sessions) as session:  # three earlier attempts died mid-chunk
        session.execute(update(Chunk).where(Chunk.id == chunk_ids[0]).values(attempts=3))
    report = run_chunk(sessions, engine, chunk_ids[0], "w1", worker_settings)
    assert report.outcome == "recorded"
    results = results_of(sessions, job_id)
    assert [r.status for r in results] == [ResultStatus.FAILED] + [ResultStatus.SUCCEEDED] * 3
    assert results[0].error is not None and results[0].error["code"] == "attempts_exhausted"
    assert job_of(sessions, job_id).status == JobStatus.COMPLETED


def test_shutdown_mid_chunk_hands_the_chunk_back(
    sessions: sessionmaker[Session], worker_settings: Settings, engine: Any
) -> None:
    # a chunk chosen for the baseline: a stopped run must not record its unfinished rows
    job_id, chunk_ids = submit(sessions, worker_settings, 4, max_tokens=200, baseline_sample=1.0)
    shutdown = threading.Event()
    timer = threading.Timer(0.3, shutdown.set)
    timer.start()
    report = run_chunk(sessions, engine, chunk_ids[0], "w1", worker_settings, shutdown=shutdown)
    timer.cancel()
    assert report.outcome == "handed_back"
    with sessions() as session:
        chunk = session.get(Chunk, chunk_ids[0])
        assert chunk is not None
        assert (chunk.state, chunk.lease_owner, chunk.attempts) == (ChunkState.QUEUED, None, 0)
    assert all(r.status == ResultStatus.SUCCEEDED for r in results_of(sessions, job_id))
    # another worker picks it up and finishes exactly the requests that were left
    assert run_chunk(sessions, engine, chunk_ids[0], "w2", worker_settings).outcome == "recorded"
    assert len(results_of(sessions, job_id)) == 4
    assert job_of(sessions, job_id).status == JobStatus.COMPLETED


@pytest.mark.parametrize("worker_db_url", ["postgresql", "sqlite"], indirect=True)
def test_cancel_mid_chunk_stops_the_work_and_keeps_finished_results(
    sessions: sessionmaker[Session], worker_settings: Settings, engine: Any
) -> None:
    job_id, chunk_ids = submit(sessions, worker_settings, 8, max_tokens=200)

    def cancel() -> None:
        with transaction(sessions) as session:
            tenant = store.create_tenant(session, "acme")
            store.cancel_job(session, tenant, job_id)

    timer = threading.Timer(0.5, cancel)
    timer.start()
    assert run_chunk(sessions, engine, chunk_ids[0], "w1", worker_settings).outcome == "recorded"
    timer.join()
    assert run_chunk(sessions, engine, chunk_ids[1], "w1", worker_settings).outcome == "skipped"
    job = job_of(sessions, job_id)
    assert job.status == JobStatus.CANCELLED
    results = results_of(sessions, job_id)
    assert len(results) == 8 and job.cancelled_count >= 4
    assert job.completed_count + job.failed_count + job.cancelled_count == 8


def test_sweep_expires_a_job_past_its_window_that_no_worker_ran(
    sessions: sessionmaker[Session], worker_settings: Settings
) -> None:
    celery = messaging.make_celery(worker_settings)
    queue = messaging.queue_for_model(worker_settings.model_name)
    job_id, _ = submit(sessions, worker_settings, 8, completion_window="30m")
    assert sweep_once(sessions, celery, worker_settings).expired_jobs == 0
    later = utcnow() + timedelta(minutes=31)
    report = sweep_once(sessions, celery, worker_settings, now=later)
    assert (report.expired_jobs, report.requeued) == (1, 0)  # an expired job's chunks: not sent
    job = job_of(sessions, job_id)
    assert job.status == JobStatus.EXPIRED and job.cancelled_count == 8
    assert {r.error["code"] for r in results_of(sessions, job_id)} == {"batch_expired"}  # type: ignore[index]
    assert messaging.queue_depth(celery, queue) == 0
    assert sweep_once(sessions, celery, worker_settings, now=later).expired_jobs == 0


def test_sweep_requeues_expired_leases_and_lost_messages(
    sessions: sessionmaker[Session], worker_settings: Settings
) -> None:
    celery = messaging.make_celery(worker_settings)
    queue = messaging.queue_for_model(worker_settings.model_name)
    job_id, chunk_ids = submit(sessions, worker_settings, 8)  # two chunks, never enqueued
    # a job created a moment ago may still be on its way to the queue: left alone
    assert sweep_once(sessions, celery, worker_settings).requeued == 0
    with transaction(sessions) as session:
        claim = store.claim_chunk(session, chunk_ids[0], "dead", lease_seconds=1)
        assert claim is not None
    later = utcnow() + timedelta(seconds=10)
    report = sweep_once(sessions, celery, worker_settings, now=later)
    assert (report.expired, report.requeued) == (1, 2)
    assert messaging.queue_depth(celery, queue) == 2
    with sessions() as session:
        states = session.scalars(select(Chunk.state).where(Chunk.job_id == job_id)).all()
        assert set(states) == {ChunkState.QUEUED}
    # messages are waiting now: the next sweep sends nothing more
    assert sweep_once(sessions, celery, worker_settings, now=later).requeued == 0
    with celery.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)


def test_the_worker_engine_takes_the_answer_datastore_from_the_settings(
    worker_settings: Settings, tmp_path: Path
) -> None:
    """S4C_DATASTORE names a datastore, loaded and checked against the served model: one
    built for another model, or a missing directory, is refused when the engine loads."""
    from s4c_engine.datastore import AnswerDatastore
    from s4c_engine.errors import HeadsMismatchError
    from worker.runtime import WorkerRuntime

    assert Settings.from_env({"S4C_DATASTORE": str(tmp_path / "ds")}).datastore_path == (
        tmp_path / "ds"
    )
    assert Settings.from_env({}).datastore_path is None

    answers = [[5, 6, 7, 8]] * 3
    AnswerDatastore.build(answers, target_name="tiny", vocab_size=49152).save(tmp_path / "ds")
    AnswerDatastore.build(answers, target_name="other", vocab_size=49152).save(tmp_path / "x")
    # The worker's model directory is named "tiny" (its datastore's target).
    loaded = WorkerRuntime(replace(worker_settings, datastore_path=tmp_path / "ds")).engine()
    assert loaded.datastore is not None  # type: ignore[attr-defined]
    assert loaded.datastore.propose([1, 5, 6], 3) == [7, 8]  # type: ignore[attr-defined]
    assert WorkerRuntime(worker_settings).engine().datastore is None  # type: ignore[attr-defined]
    with pytest.raises(HeadsMismatchError, match="built for 'other'"):
        WorkerRuntime(replace(worker_settings, datastore_path=tmp_path / "x")).engine()
    with pytest.raises(FileNotFoundError, match="no answer datastore"):
        WorkerRuntime(replace(worker_settings, datastore_path=tmp_path / "none")).engine()
