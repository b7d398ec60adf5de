"""The Celery tasks: thin wrappers that take ids and call `worker.generation` / `worker.sweep`.

Registered on an app by `register_tasks` (no import-time task globals). Database errors are
retried with backoff; every other outcome is final because `run_chunk` already records
errors as results.
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy.exc import OperationalError

from jobs.messaging import GENERATE_CHUNK, SWEEP, enqueue_chunks, queue_for_model
from worker.generation import ChunkReport, run_chunk
from worker.runtime import WorkerRuntime
from worker.sweep import SweepReport, sweep_once

log = logging.getLogger(__name__)

DB_RETRY = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 30,
}


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Register GENERATE_CHUNK and SWEEP on `app`, bound to this process's `runtime`."""

    def generate_chunk(chunk_id: int) -> str:
        report: ChunkReport = run_chunk(
            runtime.sessions,
            runtime.engine(),
            int(chunk_id),
            runtime.worker_id,
            runtime.settings,
            shutdown=runtime.shutdown,
        )
        if report.outcome == "handed_back":
            # This worker is stopping: put the chunk back on the queue for another one.
            enqueue_chunks(app, [report.chunk_id], queue_for_model(runtime.settings.model_name))
        return report.outcome

    def sweep() -> dict[str, int]:
        report: SweepReport = sweep_once(runtime.sessions, app, runtime.settings)
        return {"expired": report.expired, "requeued": report.requeued}

    app.task(name=GENERATE_CHUNK, acks_late=True, **DB_RETRY)(generate_chunk)
    app.task(name=SWEEP, acks_late=True)(sweep)
