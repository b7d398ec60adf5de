"""Running one chunk: claim its lease, generate its requests as a batch, record the results.

A failing request is isolated (the batch is re-run without it, or one request at a time) so
it gets an error result while the rest complete. A chunk that keeps killing its worker is run
one request at a time, and past `max_attempts` its first unfinished request is failed. The
measured baseline re-runs a whole chunk with plain decoding at the same batch size.
Database work happens in short transactions; none is held open while the model runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from jobs import store
from jobs.chunks import is_job_runnable
from jobs.db import transaction
from jobs.models import ResultStatus
from jobs.settings import Settings
from jobs.types import BaselineRun, ChunkOutcome, Claim, RequestOutcome
from s4c_engine.config import GenerationResult, Method, Prompt, SamplingParams
from s4c_engine.errors import PromptError
from worker.metrics import record_chunk

log = logging.getLogger(__name__)

CANCEL_CHECK_SECONDS = 1.0


class GenerationEngine(Protocol):
    """The part of `s4c_engine.engine.Engine` the worker uses."""

    @property
    def method(self) -> str: ...

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: Sequence[SamplingParams],
        *,
        method: Method | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]: ...


@dataclass(frozen=True)
class PendingRequest:
    index: int
    custom_id: str
    prompt: Prompt
    params: SamplingParams


@dataclass(frozen=True)
class ChunkReport:
    """What became of a chunk: skipped (not claimable), recorded, handed back (worker
    stopping; re-enqueue it) or lease_lost (another worker owns it now; nothing written)."""

    chunk_id: int
    outcome: Literal["skipped", "recorded", "handed_back", "lease_lost"]
    results: int = 0


class LeaseGuard:
    """The engine's `should_stop`: heartbeats the lease and watches for cancel and shutdown.

    Database checks are throttled; a database outage is logged, not raised into the engine
    (the lease then simply expires and the fence keeps late writes out).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        claim: Claim,
        settings: Settings,
        shutdown: threading.Event | None,
    ) -> None:
        self.sessions = sessions
        self.claim = claim
        self.lease_seconds = settings.lease_seconds
        self.heartbeat_every = max(0.5, settings.lease_seconds / 4)
        self.shutdown = shutdown
        self.lost = False
        self.cancelled = False
        self.shutting_down = False
        self._last_heartbeat = time.monotonic()
        self._last_cancel_check = time.monotonic()

    @property
    def stopped(self) -> bool:
        return self.lost or self.cancelled or self.shutting_down

    def should_stop(self) -> bool:
        if self.shutdown is not None and self.shutdown.is_set():
            self.shutting_down = True
        now = time.monotonic()
        beat = now - self._last_heartbeat >= self.heartbeat_every
        check = now - self._last_cancel_check >= CANCEL_CHECK_SECONDS
        if beat or check:
            self._check(beat)
        return self.stopped

    def _check(self, beat: bool) -> None:
        try:
            with transaction(self.sessions) as session:
                if beat:
                    self._last_heartbeat = time.monotonic()
                    held = store.heartbeat(session, self.claim, lease_seconds=self.lease_seconds)
                    self.lost = self.lost or not held
                self._last_cancel_check = time.monotonic()
                self.cancelled = self.cancelled or not is_job_runnable(session, self.claim.job_id)
        except SQLAlchemyError:
            log.warning("chunk %s: database unreachable for heartbeat", self.claim.chunk_id)


def run_chunk(
    sessions: sessionmaker[Session],
    engine: GenerationEngine,
    chunk_id: int,
    worker_id: str,
    settings: Settings,
    *,
    shutdown: threading.Event | None = None,
) -> ChunkReport:
    """Claim chunk `chunk_id` for `worker_id`, generate its unfinished requests, record them.

    Idempotent: a chunk that is done, leased by a live worker or whose job was cancelled is
    skipped. Database errors propagate (the task retries; the lease sweep is the backstop).
    """
    if shutdown is not None and shutdown.is_set():
        return ChunkReport(chunk_id, "handed_back")
    with transaction(sessions) as session:
        claim = store.claim_chunk(
            session, chunk_id, worker_id, lease_seconds=settings.lease_seconds
        )
        if claim is None:
            log.info("chunk %s: not claimable (done, leased or job stopped); skipped", chunk_id)
            return ChunkReport(chunk_id, "skipped")
        pending = [
            PendingRequest(
                r.input_index,
                r.custom_id,
                store.prompt_from_json(r.prompt),
                store.params_from_json(r.params),
            )
            for r in store.pending_requests(session, claim)
        ]
    log.info(
        "chunk %s of %s: attempt %d, %d requests",
        chunk_id,
        claim.job_id,
        claim.attempt,
        len(pending),
    )
    guard = LeaseGuard(sessions, claim, settings, shutdown)
    if claim.attempt >= max(2, settings.max_attempts):
        return _run_one_by_one(sessions, engine, claim, pending, guard, settings)
    started = time.perf_counter()
    generated = generate_isolating_failures(engine, pending, guard.should_stop)
    seconds = time.perf_counter() - started
    outcome = ChunkOutcome(
        [_outcome(r, generated[r.index]) for r in pending], seconds, engine.method
    )
    record_chunk(outcome)
    runs = {i: g for i, g in generated.items() if isinstance(g, GenerationResult)}
    # Plain decoding has no baseline but itself: nothing to measure without speculation.
    speculative = engine.method != "ar"
    measurable = pending and len(runs) == len(pending) and not guard.stopped
    if claim.measure_baseline and speculative and measurable:
        # Results first, so the job's progress shows them while the baseline re-run goes on.
        with transaction(sessions) as session:
            if not store.record_chunk_results(session, claim, outcome, complete=False):
                return ChunkReport(claim.chunk_id, "lease_lost")
        baseline = (
            None if guard.stopped else measure_baseline(engine, pending, runs, seconds, guard)
        )
        outcome = ChunkOutcome([], method=engine.method, baseline=baseline)
    return _settle(sessions, claim, guard, outcome)


def generate_isolating_failures(
    engine: GenerationEngine,
    batch: Sequence[PendingRequest],
    should_stop: Callable[[], bool],
    *,
    method: Method | None = None,
) -> dict[int, GenerationResult | RequestOutcome]:
    """Generate `batch` as one batch; a request that makes the engine fail gets a failure
    outcome and the others are re-run without it. Keyed by request index."""
    if not batch:
        return {}
    try:
        results = engine.generate(
            [r.prompt for r in batch],
            [r.params for r in batch],
            method=method,
            should_stop=should_stop,
        )
        return {r.index: result for r, result in zip(batch, results, strict=True)}
    except PromptError as exc:
        if not 0 <= exc.index < len(batch):
            raise
        bad = batch[exc.index]
        rest = [r for r in batch if r is not bad]
        isolated: dict[int, GenerationResult | RequestOutcome] = {
            bad.index: RequestOutcome.failure(bad.index, bad.custom_id, "invalid_prompt", str(exc))
        }
        isolated.update(generate_isolating_failures(engine, rest, should_stop, method=method))
        return isolated
    # The isolation boundary: whatever one request does to the engine must become that
    # request's error result, so any Exception is caught here (BaseException is not).
    except Exception as exc:
        if len(batch) == 1:
            only = batch[0]
            message = f"{type(exc).__name__}: {exc}"
            return {
                only.index: RequestOutcome.failure(
                    only.index, only.custom_id, "engine_error", message
                )
            }
        log.warning("batch of %d failed (%s); re-running one by one", len(batch), exc)
        isolated = {}
        for request in batch:
            isolated.update(
                generate_isolating_failures(engine, [request], should_stop, method=method)
            )
        return isolated


def measure_baseline(
    engine: GenerationEngine,
    pending: Sequence[PendingRequest],
    runs: dict[int, GenerationResult],
    seconds: float,
    guard: LeaseGuard,
) -> BaselineRun | None:
    """Re-run the same requests with plain decoding (same device, same batch) and compare.

    None when the re-run was interrupted or failed: an unmeasured baseline is left unknown.
    """
    started = time.perf_counter()
    try:
        plain = engine.generate(
            [r.prompt for r in pending],
            [r.params for r in pending],
            method="ar",
            should_stop=guard.should_stop,
        )
    except Exception:  # the baseline is a measurement; it must never fail the chunk
        log.exception("baseline re-run failed; leaving the baseline unmeasured")
        return None
    plain_seconds = time.perf_counter() - started
    if guard.stopped or any(p.finish_reason == "cancelled" for p in plain):
        return None
    greedy = [(runs[r.index], p) for r, p in zip(pending, plain, strict=True) if r.params.is_greedy]
    return BaselineRun(
        sample_size=len(pending),
        tokens=sum(len(p.token_ids) for p in plain),
        seconds=plain_seconds,
        sample_tokens=sum(len(runs[r.index].token_ids) for r in pending),
        sample_seconds=seconds,
        greedy_checked=len(greedy),
        greedy_matched=sum(spec.token_ids == p.token_ids for spec, p in greedy),
    )


def _outcome(
    request: PendingRequest, generated: GenerationResult | RequestOutcome
) -> RequestOutcome:
    if isinstance(generated, RequestOutcome):
        return generated
    if generated.finish_reason == "cancelled":
        return RequestOutcome.cancelled(request.index, request.custom_id)
    if generated.finish_reason == "error":
        return RequestOutcome.failure(
            request.index, request.custom_id, "engine_error", "generation failed"
        )
    return RequestOutcome(
        request.index,
        request.custom_id,
        ResultStatus.SUCCEEDED,
        text=generated.text,
        finish_reason=generated.finish_reason,
        stats=generated.stats,
    )


def _run_one_by_one(
    sessions: sessionmaker[Session],
    engine: GenerationEngine,
    claim: Claim,
    pending: Sequence[PendingRequest],
    guard: LeaseGuard,
    settings: Settings,
) -> ChunkReport:
    """The careful path for a chunk whose earlier attempts died: one request at a time, each
    result committed at once, so a request that kills the process is pinned down."""
    if claim.attempt > settings.max_attempts and pending:
        suspect = pending[0]  # the request that was running when the last attempt died
        message = f"the worker died running this request {claim.attempt - 1} times"
        failed = RequestOutcome.failure(
            suspect.index, suspect.custom_id, "attempts_exhausted", message
        )
        with transaction(sessions) as session:
            if not store.record_chunk_results(
                session, claim, ChunkOutcome([failed]), complete=False
            ):
                return ChunkReport(claim.chunk_id, "lease_lost")
        pending = pending[1:]
    recorded = 0
    for request in pending:
        if guard.should_stop():
            break
        started = time.perf_counter()
        generated = generate_isolating_failures(engine, [request], guard.should_stop)[request.index]
        outcome = ChunkOutcome(
            [_outcome(request, generated)], time.perf_counter() - started, engine.method
        )
        if guard.stopped:
            break
        with transaction(sessions) as session:
            if not store.record_chunk_results(session, claim, outcome, complete=False):
                return ChunkReport(claim.chunk_id, "lease_lost")
        recorded += 1
    report = _settle(sessions, claim, guard, ChunkOutcome([]))
    return ChunkReport(report.chunk_id, report.outcome, report.results + recorded)


def _settle(
    sessions: sessionmaker[Session], claim: Claim, guard: LeaseGuard, outcome: ChunkOutcome
) -> ChunkReport:
    """Record what the run produced: complete the chunk, or (shutting down) keep the finished
    results and hand the rest back."""
    if guard.lost:
        log.warning("chunk %s: lease lost to another worker; results dropped", claim.chunk_id)
        return ChunkReport(claim.chunk_id, "lease_lost")
    if guard.shutting_down and not guard.cancelled:
        finished = [o for o in outcome.results if o.status != ResultStatus.CANCELLED]
        kept = ChunkOutcome(finished, outcome.generation_seconds, outcome.method)
        with transaction(sessions) as session:
            if not store.record_chunk_results(session, claim, kept, complete=False):
                return ChunkReport(claim.chunk_id, "lease_lost")
            store.release_chunk(session, claim.chunk_id, claim.owner, count_attempt=False)
        log.info("chunk %s: handed back (%d results kept)", claim.chunk_id, len(finished))
        return ChunkReport(claim.chunk_id, "handed_back", len(finished))
    with transaction(sessions) as session:
        if not store.record_chunk_results(session, claim, outcome):
            return ChunkReport(claim.chunk_id, "lease_lost")
    return ChunkReport(claim.chunk_id, "recorded", len(outcome.results))
