"""Database engines and session factories built from Settings (PostgreSQL or SQLite).

SQLite gets WAL, a busy timeout and foreign keys on every connection, and its transactions
begin `IMMEDIATE` (take the write lock up front) so a transaction that reads and then writes
never fails with SQLITE_BUSY halfway; long read-only streams use `read_session_factory`,
whose transactions begin deferred and never block writers. Whoever opens a session owns
its transaction; nothing here commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from jobs.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_IDLE_TX_MS = 60_000
_DEFERRED = "s4c_sqlite_deferred"


def is_sqlite(url_or_engine: str | Engine) -> bool:
    url = url_or_engine if isinstance(url_or_engine, str) else str(url_or_engine.url)
    return url.startswith("sqlite")


def create_db_engine(url: str, *, echo: bool = False) -> Engine:
    """An Engine for `url`; SQLite connections are configured as the module docstring says."""
    if not is_sqlite(url):
        # pre_ping: processes outlive PostgreSQL restarts without manual action. The idle
        # timeout frees the row locks of a process frozen mid-transaction (SIGSTOP, a paused
        # VM); every transaction here is short and none is held while a model runs.
        return create_engine(
            url,
            echo=echo,
            pool_pre_ping=True,
            connect_args={"options": f"-c idle_in_transaction_session_timeout={PG_IDLE_TX_MS}"},
        )
    engine = create_engine(url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    _configure_sqlite(engine)
    return engine


def ensure_sqlite_dir(url: str) -> None:
    """Create the directory of a SQLite database file (a fresh $S4C_HOME has none)."""
    if not is_sqlite(url):
        return
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def engine_from_settings(settings: Settings) -> Engine:
    return create_db_engine(settings.database_url)


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling never emits BEGIN before a SELECT and breaks
    # SAVEPOINT; turn it off and emit BEGIN ourselves (SQLAlchemy's documented recipe).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        deferred = connection.get_execution_options().get(_DEFERRED, False)
        connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for ordinary work (one per HTTP request or task step). Objects stay readable
    after commit (`expire_on_commit=False`), so values can be used once the session closes."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for long read-only work (streaming results) that must not block writers."""
    return sessionmaker(bind=engine.execution_options(**{_DEFERRED: True}), expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """`with transaction(factory) as session:` commits on success, rolls back on error."""
    with factory() as session, session.begin():
        yield session
