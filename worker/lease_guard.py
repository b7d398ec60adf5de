"""The engine's `should_stop` for one claimed chunk: heartbeats its lease and watches for
cancel and shutdown. It never raises into the engine; it only reports that the run must stop.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from jobs import store
from jobs.chunks import StopReason, job_stop_reason
from jobs.db import transaction
from jobs.settings import Settings
from jobs.types import Claim

log = logging.getLogger(__name__)

CANCEL_CHECK_SECONDS = 1.0


class LeaseGuard:
    """The engine's `should_stop`: heartbeats the lease and watches for cancel, expiry and
    shutdown.

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
        self.cancelled = False  # the job stopped: cancelled, finished or expired
        self.stop_reason: StopReason | None = None
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
                if not self.cancelled:
                    self.stop_reason = job_stop_reason(session, self.claim.job_id)
                    self.cancelled = self.stop_reason is not None
        except SQLAlchemyError:
            log.warning("chunk %s: database unreachable for heartbeat", self.claim.chunk_id)
