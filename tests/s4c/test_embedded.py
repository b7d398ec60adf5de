"""The embedded servers and the shared service fixtures are real and usable."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import redis
import sqlalchemy as sa

from s4c.embedded import PostgresCluster, RedisServer, create_database, is_port_open


def test_redis_url_answers_ping(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    client.close()


def test_pg_url_is_a_database_of_this_session(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    engine.dispose()
    assert name.startswith("s4c_test_")
    assert pg_url.endswith("/" + name)


def test_sqlite_url_is_writable(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT x FROM t")).scalar_one() == 1
    engine.dispose()


def test_killed_redis_restarts_on_the_same_port_and_loses_nothing_it_kept(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    server = redis_server_factory()
    client = redis.Redis.from_url(server.url())
    client.set("k", "v")
    server.kill()
    assert not server.is_running()
    assert not is_port_open(server.host, server.port)
    server.restart()
    # the embedded Redis persists nothing: a restart is an empty broker
    assert client.get("k") is None
    client.close()


def test_killed_postgres_recovers_committed_rows(
    postgres_cluster_factory: Callable[[], PostgresCluster],
) -> None:
    cluster = postgres_cluster_factory()
    url = create_database(cluster.url(), "faults")
    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (7)")
    cluster.kill()
    assert not is_port_open(cluster.host, cluster.port)
    cluster.restart()
    with psycopg.connect(libpq) as conn:
        assert conn.execute("SELECT x FROM t").fetchone() == (7,)


def test_pg_database_factory_gives_databases_of_their_own(
    pg_url: str, pg_database_factory: Callable[[], str]
) -> None:
    first, second = pg_database_factory(), pg_database_factory()
    assert len({pg_url, first, second}) == 3
    engine = sa.create_engine(first)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE only_here (x int)"))
    engine.dispose()
    other = sa.create_engine(second)
    with other.connect() as conn:
        found = conn.execute(sa.text("SELECT to_regclass('only_here')")).scalar_one()
    other.dispose()
    assert found is None
