"""Running one chunk: claim its lease, generate its requests as a batch, record the results.

A failing request is isolated (the batch is re-run without it, or one by one) so it gets an
error result while the rest complete; a chunk that keeps killing its worker runs one request at
a time, and past `max_attempts` its first unfinished request fails. The baseline brackets a
plain re-run of a chunk between two runs of the job's method. No transaction spans a model run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from sqlalchemy.orm import Session, sessionmaker

from jobs import store
from jobs.db import transaction
from jobs.models import ResultStatus
from jobs.settings import Settings
from jobs.types import BaselineRun, ChunkOutcome, Claim, RequestOutcome
from s4c_engine.config import GenerationResult, Method, Prompt, SamplingParams
from s4c_engine.errors import PromptError
from worker.lease_guard import LeaseGuard
from worker.metrics import record_chunk

log = logging.getLogger(__name__)


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
        [_outcome(r, generated[r.index], guard) for r in pending], seconds, engine.method
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


@dataclass(frozen=True)
class TimedRun:
    """One uninterrupted engine run over a whole sample: results in request order, wall time."""

    results: Sequence[GenerationResult]
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(len(r.token_ids) for r in self.results)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def measure_baseline(
    engine: GenerationEngine,
    pending: Sequence[PendingRequest],
    runs: dict[int, GenerationResult],
    seconds: float,
    guard: LeaseGuard,
) -> BaselineRun | None:
    """Bracket a plain-decoding re-run between two runs of the job's method and compare.

    `runs` and `seconds` are the chunk's own run of `pending` (A); the same requests are then
    re-run with plain decoding (B) and with the job's method again (A), each as one batch on
    the same device, so drift in the machine's speed moves both sides alike. None when a
    re-run was interrupted or failed: an unmeasured baseline is left unknown.
    """
    first = TimedRun([runs[r.index] for r in pending], seconds)
    plain = _rerun(engine, pending, "ar", guard)
    if plain is None:
        return None
    again = _rerun(engine, pending, None, guard)
    if again is None:
        return None
    greedy = [i for i, r in enumerate(pending) if r.params.is_greedy]
    matched = sum(
        first.results[i].token_ids == plain.results[i].token_ids == again.results[i].token_ids
        for i in greedy
    )
    log.info(
        "chunk %s baseline: %s %.1f tok/s, ar %.1f tok/s, %s again %.1f tok/s; greedy %d/%d equal",
        guard.claim.chunk_id,
        engine.method,
        first.tokens_per_second,
        plain.tokens_per_second,
        engine.method,
        again.tokens_per_second,
        matched,
        len(greedy),
    )
    return BaselineRun(
        sample_size=len(pending),
        tokens=plain.tokens,
        seconds=plain.seconds,
        sample_tokens=first.tokens + again.tokens,
        sample_seconds=first.seconds + again.seconds,
        greedy_checked=len(greedy),
        greedy_matched=matched,
        plain_runs=1,
        sample_runs=2,
    )


def _rerun(
    engine: GenerationEngine,
    pending: Sequence[PendingRequest],
    method: Method | None,
    guard: LeaseGuard,
) -> TimedRun | None:
    """Run all of `pending` as one batch with `method` (None: the engine's own); None when the
    run failed or was stopped."""
    started = time.perf_counter()
    try:
        results = engine.generate(
            [r.prompt for r in pending],
            [r.params for r in pending],
            method=method,
            should_stop=guard.should_stop,
        )
    except Exception:  # the baseline is a measurement; it must never fail the chunk
        log.exception(
            "baseline re-run (%s) failed; leaving the baseline unmeasured", method or engine.method
        )
        return None
    seconds = time.perf_counter() - started
    if guard.stopped or any(r.finish_reason == "cancelled" for r in results):
        return None
    return TimedRun(results, seconds)


def _outcome(
    request: PendingRequest, generated: GenerationResult | RequestOutcome, guard: LeaseGuard
) -> RequestOutcome:
    if isinstance(generated, RequestOutcome):
        return generated
    if generated.finish_reason == "cancelled":
        if guard.stop_reason == "expired":
            return RequestOutcome.expired(request.index, request.custom_id)
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
            [_outcome(request, generated, guard)], time.perf_counter() - started, engine.method
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
