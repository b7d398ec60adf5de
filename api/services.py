"""What the views use, built once per app by `create_app`: settings, database, codec, limiter,
metrics.

`Services` is stored in `app.extensions["s4c"]` and read with `services()`. The per-request
database session lives on `flask.g` (`db_session()`), closed by the app's teardown.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.metrics import ApiMetrics
from api.ratelimit import RateLimiter
from api.submission import SubmissionRules, TokenCounter
from jobs.settings import Settings

EXTENSION_KEY = "s4c"


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    read_sessions: sessionmaker[Session]  # long read-only streams (never block SQLite writers)
    codec: TokenCounter
    rules: SubmissionRules
    celery: Celery | None
    redis: redis.Redis | None
    limiter: RateLimiter
    metrics: ApiMetrics


def services() -> Services:
    found = current_app.extensions[EXTENSION_KEY]
    assert isinstance(found, Services)
    return found


def db_session() -> Session:
    """This request's session (opened on first use; the caller commits, teardown closes)."""
    if "db_session" not in g:
        g.db_session = services().sessions()
    session = g.db_session
    assert isinstance(session, Session)
    return session


def close_db_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
