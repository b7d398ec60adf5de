"""Prometheus metrics of the API process: requests, latencies, jobs by state, queue depth.

`ApiMetrics.create(...)` builds one registry per app (no process-global registry): request
counters and a latency histogram updated by `install_request_metrics`, and a collector that
reads jobs by state from the database and the model queue's length from Redis at scrape time.
Request metrics count what this process served, unless `Settings.metrics_multiprocess_dir`
is set (`s4c api --processes N` sets it): then every gunicorn process writes them to files
there and a scrape sums all processes. Database and Redis readings are the same anywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from jobs.models import Job, JobStatus

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED_ROUTE = "<unmatched>"
# kombu's Redis transport keeps a queue as a list named like the queue, plus one list per
# extra priority level ("<queue>\x06\x16<priority>"); the depth is the sum of their lengths.
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
KOMBU_PRIORITY_STEPS = (3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    """The Redis list keys holding `queue`'s waiting messages."""
    return [queue, *(f"{queue}{KOMBU_PRIORITY_SEPARATOR}{step}" for step in KOMBU_PRIORITY_STEPS)]


class ServiceStateCollector(Collector):
    """Reads at scrape time: jobs per status (SQL `GROUP BY`) and messages waiting in Redis.

    A backend that cannot be reached drops its family from the scrape and sets
    `s4c_metrics_backend_up{backend=...}` to 0, so a scrape never fails as a whole.
    """

    def __init__(
        self, sessions: sessionmaker[Session], redis_client: redis.Redis | None, queue: str
    ) -> None:
        self.sessions = sessions
        self.redis_client = redis_client
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "s4c_metrics_backend_up",
            "1 if the backend answered this scrape, else 0.",
            labels=["backend"],
        )
        jobs = self._jobs_by_status()
        up.add_metric(["database"], 0.0 if jobs is None else 1.0)
        if jobs is not None:
            family = GaugeMetricFamily(
                "s4c_jobs", "Jobs in the database by status (all tenants).", labels=["status"]
            )
            for status in JobStatus:
                family.add_metric([status.value], float(jobs.get(status, 0)))
            yield family
        depth = self._queue_depth()
        up.add_metric(["redis"], 0.0 if depth is None else 1.0)
        if depth is not None:
            family = GaugeMetricFamily(
                "s4c_queue_depth",
                "Chunk messages waiting in the model's queue (Redis LLEN; unacked not counted).",
                labels=["queue"],
            )
            family.add_metric([self.queue], float(depth))
            yield family
        yield up

    def _jobs_by_status(self) -> dict[JobStatus, int] | None:
        try:
            with self.sessions() as session:
                rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
                return {JobStatus(status): int(count) for status, count in rows}
        except SQLAlchemyError as exc:
            logger.warning("metrics: database unreachable (%s)", type(exc).__name__)
            return None

    def _queue_depth(self) -> int | None:
        if self.redis_client is None:
            return None
        try:
            pipeline = self.redis_client.pipeline(transaction=False)
            for key in queue_keys(self.queue):
                pipeline.llen(key)
            return sum(int(n) for n in pipeline.execute())
        except (redis.RedisError, OSError) as exc:
            logger.warning("metrics: Redis unreachable (%s)", type(exc).__name__)
            return None


@dataclass(frozen=True)
class ApiMetrics:
    """The app's registry and the request metrics views update."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram

    @classmethod
    def create(
        cls,
        sessions: sessionmaker[Session],
        redis_client: redis.Redis | None,
        queue: str,
        *,
        multiprocess_dir: Path | None = None,
    ) -> ApiMetrics:
        """Metrics for one app. With `multiprocess_dir` (gunicorn with several processes; the
        same directory as PROMETHEUS_MULTIPROC_DIR, which prometheus_client reads at import)
        the request metrics are written to files there and the exposed registry sums them
        over all processes."""
        registry = CollectorRegistry(auto_describe=True)
        # Multiprocess: the metric objects still need a registry, but it is never exposed.
        values = CollectorRegistry() if multiprocess_dir is not None else registry
        requests = Counter(
            "s4c_api_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=values,
        )
        latency = Histogram(
            "s4c_api_request_duration_seconds",
            "Time from the request's arrival to its response (streamed bodies: to the headers).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=values,
        )
        if multiprocess_dir is not None:
            files = str(multiprocess_dir)
            MultiProcessCollector(registry, path=files)  # type: ignore[no-untyped-call]
        registry.register(ServiceStateCollector(sessions, redis_client, queue))
        return cls(registry, requests, latency)


def install_request_metrics(app: Flask, metrics: ApiMetrics) -> None:
    """Time every request of `app` and count its answer by route template (not raw path, so
    job ids never become label values)."""

    def start_timer() -> None:
        g.metrics_started = time.perf_counter()

    def record(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED_ROUTE
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        if isinstance(started, float):
            metrics.latency.labels(route, request.method).observe(time.perf_counter() - started)
        return response

    # First in line: the size check and auth hooks registered later may answer early.
    app.before_request_funcs.setdefault(None, []).insert(0, start_timer)
    app.after_request(record)
