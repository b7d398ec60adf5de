"""Serve the API's WSGI app with gunicorn (threaded workers) for `s4c api`.

The Flask app is built by `api.create_app(settings)` inside each gunicorn worker after the
fork, so no database connection or socket is shared across processes.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

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
        from api import create_app

        return create_app(self.settings)


def serve_api(settings: Settings, *, host: str, port: int, processes: int, threads: int) -> None:
    """Run until SIGTERM/SIGINT (graceful: in-flight requests finish)."""
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
    }
    ApiServer(settings, options).run()
