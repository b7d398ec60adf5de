"""The embedded service that `s4c serve` runs: broker, migrated database, API and workers.

`ServiceStack.start(settings, ...)` starts a private Redis unless `settings.broker_url` names
one, migrates, runs `s4c api` and `s4c worker` children (logs in `$S4C_HOME/logs/`, workers'
torch threads sized to share the cores), waits until all answer; `stop()` ends them, newest first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from jobs.settings import Settings
from s4c.embedded import RedisServer, find_free_port, is_port_open

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 300.0


class LaunchError(RuntimeError):
    """A part of the service did not start; the message says which and where its log is."""


@dataclass(frozen=True)
class ChildProcess:
    """A started `s4c` subcommand and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def is_running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Celery: warm shutdown; gunicorn: graceful), SIGKILL after timeout."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def api_address(settings: Settings) -> tuple[str, int]:
    """Host and port of settings.api_url (default port 8000)."""
    parts = urlsplit(settings.api_url)
    return parts.hostname or "127.0.0.1", parts.port or 8000


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def torch_threads_per_worker(workers: int, cores: int) -> int:
    """Torch threads for each of `workers` worker processes sharing `cores` with the API.

    One core is left to the API, broker and client, and the workers split the rest. An OpenMP
    team with more threads than free cores stalls at every barrier whenever another process
    takes one of its cores: on 2 busy cores the demo decoded 6x slower with 2 threads than 1.
    """
    return max(1, (cores - 1) // max(1, workers))


def child_environment(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    """The environment a child `s4c` command needs to build the same Settings."""
    env = dict(base)
    env["S4C_HOME"] = str(settings.home)
    env["S4C_DATABASE_URL"] = settings.database_url
    env["S4C_API_URL"] = settings.api_url
    if settings.broker_url:
        env["S4C_BROKER_URL"] = settings.broker_url
    if settings.torch_threads:
        env["S4C_TORCH_THREADS"] = str(settings.torch_threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ServiceStack:
    """What `s4c serve` started; stop() ends it all."""

    def __init__(self, settings: Settings, redis: RedisServer | None) -> None:
        self.settings = settings
        self.redis = redis
        self.children: list[ChildProcess] = []

    @classmethod
    def start(
        cls,
        settings: Settings,
        *,
        workers: int,
        device: str,
        environ: Mapping[str, str],
        host: str | None = None,
        port: int | None = None,
    ) -> ServiceStack:
        """Start broker (if needed), migrate, start the API and workers, wait until ready.

        The returned stack's settings carry the real broker and API URLs. On any failure
        everything started so far is stopped before LaunchError propagates.
        """
        settings.home.mkdir(parents=True, exist_ok=True)
        redis = None
        if settings.broker_url is None:
            redis = RedisServer.start(settings.home / "run" / "redis")
            settings = settings.with_overrides(broker_url=redis.url(0))
        default_host, default_port = api_address(settings)
        host = host or default_host
        if port is None:
            port = default_port if not is_port_open(host, default_port) else find_free_port(host)
        settings = settings.with_overrides(
            api_url=f"http://{host}:{port}",
            torch_threads=settings.torch_threads
            or torch_threads_per_worker(workers, usable_cores()),
        )
        stack = cls(settings, redis)
        try:
            stack._migrate()
            env = child_environment(settings, environ)
            stack._spawn("api", ["api", "--host", host, "--port", str(port)], env)
            for index in range(workers):
                name = f"worker-{index}"
                stack._spawn(name, ["worker", "--device", device, "--name", f"{name}@%h"], env)
            stack._wait_ready(workers)
        except BaseException:
            stack.stop()
            raise
        return stack

    def _migrate(self) -> None:
        from jobs.migrate import upgrade

        upgrade(self.settings)

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str]) -> None:
        log_dir = self.settings.home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "s4c", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                # own session: Ctrl-C reaches only us, and we stop the children in order
                start_new_session=True,
            )
        self.children.append(ChildProcess(name, process, log_path))

    def _wait_ready(self, workers: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        api_ready = False
        while time.monotonic() < deadline:
            self._check_children_alive()
            if not api_ready:
                api_ready = self._api_is_ready()
            if api_ready and self.count_live_workers() >= workers:
                return
            time.sleep(0.5)
        raise LaunchError(
            f"the service was not ready after {READY_TIMEOUT_SECONDS:.0f} s; "
            f"logs: {self.settings.home / 'logs'}"
        )

    def _check_children_alive(self) -> None:
        for child in self.children:
            if not child.is_running():
                raise LaunchError(
                    f"{child.name} exited with code {child.process.returncode}; "
                    f"last lines of {child.log_path}:\n{child.log_tail()}"
                )

    def _api_is_ready(self) -> bool:
        try:
            response = requests.get(f"{self.settings.api_url}/readyz", timeout=2)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def count_live_workers(self) -> int:
        """How many Celery workers answer a broadcast ping within a second."""
        from jobs.messaging import make_celery

        celery = make_celery(self.settings)
        try:
            replies = celery.control.ping(timeout=1.0) or []
        except OSError:
            return 0
        finally:
            celery.close()
        return len(replies)

    def check_alive(self) -> None:
        """Raise LaunchError if a child process has died (used while serving)."""
        self._check_children_alive()

    def stop(self) -> None:
        """Stop workers, then the API, then the broker we started; safe to call twice."""
        for child in reversed(self.children):
            with contextlib.suppress(OSError):
                child.stop()
        if self.redis is not None:
            self.redis.stop()
