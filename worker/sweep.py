"""The lease sweep: the database, not the broker, decides what still has to run.

Each worker process runs `sweep_once` every `sweep_interval_seconds` in a daemon thread
(`SweepThread`), independent of the task it is busy with. It hands back chunks whose lease
expired (their worker died or froze) and re-enqueues them; if the model's queue is empty
while queued chunks remain (a lost or flushed Redis), it re-enqueues those too; it
finishes cancelled jobs whose last running chunk died; and it expires jobs whose completion
window has ended (at once when no chunk is running, else once the running ones have stopped
and recorded what they finished). Duplicate messages are harmless:
claiming is a compare-and-set. A thread rather than celery beat, because a solo-pool worker
busy with a long chunk would not run a beat-scheduled task until the chunk ended.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from jobs import store
from jobs.db import transaction
from jobs.messaging import enqueue_chunks, queue_depth, queue_for_model
from jobs.models import JobStatus, utcnow
from jobs.recording import cancelling_jobs, due_jobs
from jobs.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    expired: int  # chunks whose lease had expired, handed back
    requeued: int  # messages sent
    cancelled_jobs: int  # cancelling jobs moved to cancelled
    expired_jobs: int = 0  # jobs past their completion window moved to expired


def sweep_once(
    sessions: sessionmaker[Session],
    celery: Celery,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> SweepReport:
    """One pass over the database for this worker's model (see the module docstring)."""
    model = settings.model_name
    queue = queue_for_model(model)
    with transaction(sessions) as session:
        expired = [
            chunk_id
            for chunk_id in store.expired_chunks(session, model=model, now=now)
            if store.release_chunk(session, chunk_id, None, now=now)
        ]
    to_send = list(expired)
    if queue_depth(celery, queue) == 0:
        # A job committed a moment ago may not be enqueued yet by its creator: give it time.
        grace = timedelta(seconds=max(5, 2 * settings.sweep_interval_seconds))
        with transaction(sessions) as session:
            waiting = store.unclaimed_chunks(
                session, model=model, created_before=(now or utcnow()) - grace, now=now
            )
        to_send += [chunk_id for chunk_id in waiting if chunk_id not in set(expired)]
    finished = 0
    with transaction(sessions) as session:
        for job_id in cancelling_jobs(session, model=model):
            finished += store.finish_job_if_done(session, job_id, now=now).is_terminal
    timed_out = 0
    with transaction(sessions) as session:
        for job_id in due_jobs(session, model=model, now=now):
            status = store.finish_job_if_done(session, job_id, now=now)
            timed_out += status == JobStatus.EXPIRED
    sent = enqueue_chunks(celery, to_send, queue) if to_send else 0
    if expired or sent or finished or timed_out:
        log.info(
            "sweep: %d leases expired, %d re-enqueued, %d jobs cancelled, %d jobs expired",
            len(expired),
            sent,
            finished,
            timed_out,
        )
    return SweepReport(len(expired), sent, finished, timed_out)


class SweepThread(threading.Thread):
    """Runs `sweep_once` every `settings.sweep_interval_seconds` (with jitter) until stopped."""

    def __init__(self, sessions: sessionmaker[Session], celery: Celery, settings: Settings) -> None:
        super().__init__(name="s4c-lease-sweep", daemon=True)
        self.sessions = sessions
        self.celery = celery
        self.settings = settings
        self.stopping = threading.Event()

    def run(self) -> None:
        interval = max(0.5, float(self.settings.sweep_interval_seconds))
        while not self.stopping.wait(interval * random.uniform(0.8, 1.2)):
            try:
                sweep_once(self.sessions, self.celery, self.settings)
            # The sweep must outlive database and broker outages: log and try again later.
            except Exception:
                log.exception("lease sweep failed; retrying in %.0fs", interval)

    def stop(self) -> None:
        self.stopping.set()
