"""Migrations on fresh SQLite and PostgreSQL: upgrade head, `alembic check` clean, round trip."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from jobs import migrate
from jobs.db import create_db_engine
from s4c.embedded import create_database, drop_database

REPO = Path(__file__).resolve().parents[2]


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
