"""Serve the API's WSGI app with gunicorn (threaded workers) for `s4c api`.

The Flask app is built by `api.create_app(settings)` inside each gunicorn worker after the
fork, so no database connection or socket is shared across processes. An app that cannot
start (model missing, database unreachable) stops the server with its one-line reason.
With several processes, Prometheus request metrics go through a shared file directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.errors import AppImportError

from jobs.settings import Settings


class ApiServer(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn with its options given in code instead of a config file or argv."""

    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from api import StartupError, create_app

        try:
            return create_app(self.settings)
        except StartupError as exc:
            # gunicorn prints this message alone and halts with "App failed to load" (exit 4)
            raise AppImportError(f"Error: {exc}") from exc


def _metrics_directory(settings: Settings, processes: int) -> Settings:
    """Several processes behind one port: give prometheus_client a fresh directory for their
    metric files (it reads PROMETHEUS_MULTIPROC_DIR when first imported, in each forked
    worker), so /metrics sums every process. Files left from an earlier run are removed."""
    directory = settings.metrics_multiprocess_dir
    if directory is None and processes <= 1:
        return settings
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="s4c-api-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return settings.with_overrides(metrics_multiprocess_dir=directory)


def serve_api(settings: Settings, *, host: str, port: int, processes: int, threads: int) -> None:
    """Run until SIGTERM/SIGINT (graceful: in-flight requests finish)."""
    created = settings.metrics_multiprocess_dir is None and processes > 1
    settings = _metrics_directory(settings, processes)
    options = {
        "bind": f"{host}:{port}",
        "workers": processes,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 120,
        "graceful_timeout": 20,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        # several servers may run on one host (serve, tests): no shared control socket
        "control_socket_disable": True,
    }
    try:
        ApiServer(settings, options).run()
    finally:
        if created and settings.metrics_multiprocess_dir is not None:
            shutil.rmtree(settings.metrics_multiprocess_dir, ignore_errors=True)
