"""Database fixtures for the job store tests: migrated SQLite and PostgreSQL, savepoint sessions.

`db_url` runs each test on both backends; `db_session` wraps a test in a transaction that is
rolled back (the store functions only flush, so nothing leaks between tests).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from jobs import migrate
from jobs.db import create_db_engine


@pytest.fixture(scope="session")
def migrated_pg_url(pg_url: str) -> str:
    migrate.upgrade(pg_url)
    return pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        migrate.upgrade(url)
        return url
    return str(request.getfixturevalue("migrated_pg_url"))


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(db_engine: Engine) -> Iterator[Session]:
    """A session inside an outer transaction that is rolled back after the test."""
    with db_engine.connect() as connection:
        outer = connection.begin()
        session = Session(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        try:
            yield session
        finally:
            session.close()
            outer.rollback()
