"""Migrations on fresh SQLite and PostgreSQL: upgrade head, `alembic check` clean, round trip."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from jobs import migrate
from jobs.db import create_db_engine
from s4c.embedded import create_database, drop_database

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh' / 's4c.sqlite'}"
        return
    server: str = request.getfixturevalue("pg_server_url")
    name = f"s4c_migr_{uuid.uuid4().hex[:10]}"
    url = create_database(server, name)
    yield url
    drop_database(server, name)


def _alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"S4C_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_alembic_upgrade_head_then_check_is_clean(fresh_url: str) -> None:
    upgraded = _alembic(fresh_url, "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    checked = _alembic(fresh_url, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr


def test_programmatic_upgrade_marks_the_database_current(fresh_url: str) -> None:
    engine = create_db_engine(fresh_url)
    try:
        assert not migrate.is_up_to_date(engine)
        with pytest.raises(migrate.DatabaseNotMigrated, match="s4c db upgrade"):
            migrate.require_up_to_date(engine)
        migrate.upgrade(fresh_url)
        assert migrate.is_up_to_date(engine)
        migrate.require_up_to_date(engine)
        assert {"jobs", "results", "chunks", "api_keys"} <= set(inspect(engine).get_table_names())
        migrate.upgrade(fresh_url)  # nothing left to do
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(fresh_url: str) -> None:
    assert _alembic(fresh_url, "upgrade", "head").returncode == 0
    down = _alembic(fresh_url, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    engine = create_db_engine(fresh_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    assert _alembic(fresh_url, "upgrade", "head").returncode == 0


def test_concurrent_upgrades_on_postgresql_serialise(pg_server_url: str) -> None:
    name = f"s4c_migr_{uuid.uuid4().hex[:10]}"
    url = create_database(pg_server_url, name)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate.upgrade(url)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    engine = create_db_engine(url)
    try:
        assert errors == []
        assert migrate.is_up_to_date(engine)
    finally:
        engine.dispose()
        drop_database(pg_server_url, name)


def test_0002_adds_the_completion_window_to_existing_jobs(fresh_url: str) -> None:
    """A database with jobs from revision 0001 upgrades in place: old jobs have no window
    (they never expire) and keep everything else; the downgrade drops only the new columns."""
    assert _alembic(fresh_url, "upgrade", "0001").returncode == 0
    engine = create_db_engine(fresh_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES (1, 't', :at)"), {"at": NOW}
            )
            connection.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, status, model, metadata, errors, "
                    "baseline_sample, total_count, completed_count, failed_count, "
                    "cancelled_count, chunks_total, created_at) VALUES ('job_old', 1, "
                    "'in_progress', 'm', '{}', '[]', 0.05, 3, 1, 0, 0, 1, :at)"
                ),
                {"at": NOW},
            )
        upgraded = _alembic(fresh_url, "upgrade", "head")
        assert upgraded.returncode == 0, upgraded.stderr
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT status, completed_count, completion_window, expires_at FROM jobs")
            ).one()
        assert tuple(row) == ("in_progress", 1, None, None)
        down = _alembic(fresh_url, "downgrade", "0001")
        assert down.returncode == 0, down.stderr
        engine.dispose()
        columns = {c["name"] for c in inspect(engine).get_columns("jobs")}
        assert "expires_at" not in columns and "completion_window" not in columns
        with engine.connect() as connection:
            assert connection.execute(text("SELECT id FROM jobs")).scalars().all() == ["job_old"]
    finally:
        engine.dispose()
