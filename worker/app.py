"""The worker's Celery app: `celery -A worker.app worker` or `worker.launch.run_worker`.

`create_worker_app(settings)` builds the app, registers the tasks and adds a bootstep that
refuses an un-migrated database, runs the lease sweep thread and the Prometheus endpoint
(`S4C_WORKER_METRICS_PORT`, see worker/metrics.py) and turns a warm shutdown
(SIGTERM) into "stop the current chunk and hand it back". The module attribute `celery_app`
(also `app`) is created on first access from `Settings.from_env()`, so importing this module
reads nothing.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_shutting_down

from jobs.messaging import make_celery
from jobs.migrate import require_up_to_date
from jobs.settings import Settings
from worker.metrics import MetricsServer, serve_metrics
from worker.runtime import WorkerRuntime
from worker.sweep import SweepThread
from worker.tasks import register_tasks

log = logging.getLogger(__name__)


def create_worker_app(
    settings: Settings, *, runtime: WorkerRuntime | None = None, preload_engine: bool = False
) -> Celery:
    """A Celery app with the s4c tasks and the lifecycle bootstep, for one worker process.

    `preload_engine` loads the model before the worker consumes (only for the solo pool,
    where tasks run in this process; a prefork parent must never touch CUDA).
    """
    runtime = runtime or WorkerRuntime(settings)
    app = make_celery(settings)
    # One process per GPU running tasks in-process: also the default for `celery -A worker.app
    # worker` (which loads the model lazily, on the first task).
    app.conf.update(worker_pool="solo", worker_concurrency=1)
    register_tasks(app, runtime)
    app.steps["worker"].add(_lifecycle_step(app, runtime, preload_engine))
    return app


def _lifecycle_step(
    app: Celery, runtime: WorkerRuntime, preload_engine: bool
) -> type[bootsteps.StartStopStep]:
    sweeper = SweepThread(runtime.sessions, app, runtime.settings)
    metrics_servers: list[MetricsServer] = []

    def on_shutting_down(**_kwargs: Any) -> None:
        runtime.shutdown.set()  # runs in the signal handler: only set a flag

    class WorkerLifecycle(bootsteps.StartStopStep):  # type: ignore[misc]
        """Checks the schema, runs the sweep thread, relays warm shutdown to the chunk."""

        def start(self, worker: Any) -> None:
            require_up_to_date(runtime.db)
            if preload_engine:
                runtime.engine()
            worker_shutting_down.connect(on_shutting_down, weak=False)
            sweeper.start()
            served = serve_metrics(runtime.settings.worker_metrics_port)
            if served is not None:
                metrics_servers.append(served)
            log.info(
                "worker %s ready (lease sweep every %ss)",
                runtime.worker_id,
                runtime.settings.sweep_interval_seconds,
            )

        def stop(self, worker: Any) -> None:
            runtime.shutdown.set()
            sweeper.stop()
            if sweeper.is_alive():
                sweeper.join(timeout=5)
            runtime.close()
            while metrics_servers:
                metrics_servers.pop().stop()

    return WorkerLifecycle


@functools.cache
def _entry_point_app() -> Celery:
    return create_worker_app(Settings.from_env())


def __getattr__(name: str) -> Celery:
    # `celery -A worker.app` looks up `app`, then `celery`; `celery_app` is the documented name.
    if name in ("celery_app", "app", "celery"):
        return _entry_point_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
