"""Prometheus metrics of one worker process: tokens/s, tau, batch and tree sizes, chunk
durations and device memory, served over HTTP on `Settings.worker_metrics_port` (0 = off).

`record_chunk(outcome)` is the one call `worker.generation` makes per generated chunk.
`WORKER_METRICS` lives in a registry of this module's own (never prometheus_client's global
one); tests build a fresh `WorkerMetrics.create()` or read deltas. Device memory is read at
scrape time: CUDA's allocator when torch has initialised CUDA, else the process's resident set.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobs.models import ResultStatus
from jobs.types import ChunkOutcome

log = logging.getLogger(__name__)

CHUNK_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TAU_BUCKETS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)


class DeviceMemoryCollector(Collector):
    """`s4c_worker_device_memory_bytes{device, kind}` read when scraped (never imports torch)."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "s4c_worker_device_memory_bytes",
            "Memory held on the worker's device: CUDA allocator (allocated, reserved, "
            "peak_allocated) on a GPU, the process's resident set on the CPU.",
            labels=["device", "kind"],
        )
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            family.add_metric(["cuda", "allocated"], float(torch.cuda.memory_allocated()))
            family.add_metric(["cuda", "reserved"], float(torch.cuda.memory_reserved()))
            family.add_metric(["cuda", "peak_allocated"], float(torch.cuda.max_memory_allocated()))
        resident = _resident_bytes()
        if resident is not None:
            family.add_metric(["cpu", "resident"], float(resident))
        yield family


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None  # not Linux: the scrape simply lacks the CPU reading
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class WorkerMetrics:
    """The worker's registry and the metrics `record_chunk` updates."""

    registry: CollectorRegistry
    chunks: Counter
    requests: Counter
    tokens: Counter
    target_forwards: Counter
    chunk_seconds: Histogram
    tokens_per_second: Gauge
    tau: Gauge
    tau_per_chunk: Histogram
    batch_size: Histogram
    tree_nodes: Histogram

    @classmethod
    def create(cls) -> WorkerMetrics:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(DeviceMemoryCollector())

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["method"], buckets=buckets, registry=registry)

        return cls(
            registry=registry,
            chunks=counter("s4c_worker_chunks", "Chunks generated.", ("method",)),
            requests=counter(
                "s4c_worker_requests", "Requests finished, by result status.", ("status",)
            ),
            tokens=counter(
                "s4c_worker_tokens_generated", "Completion tokens generated.", ("method",)
            ),
            target_forwards=counter(
                "s4c_worker_target_forwards",
                "Target-model forward passes (tau = rate(tokens) / rate(target_forwards)).",
                ("method",),
            ),
            chunk_seconds=histogram(
                "s4c_worker_chunk_duration_seconds",
                "Wall time to generate one chunk (model time; database work excluded).",
                CHUNK_SECONDS_BUCKETS,
            ),
            tokens_per_second=Gauge(
                "s4c_worker_tokens_per_second",
                "Completion tokens per second of the last chunk.",
                registry=registry,
            ),
            tau=Gauge(
                "s4c_worker_tau",
                "Tokens committed per target forward in the last chunk (1.0 = plain decoding).",
                registry=registry,
            ),
            tau_per_chunk=histogram(
                "s4c_worker_chunk_tau",
                "Tokens per target forward, one sample per chunk.",
                TAU_BUCKETS,
            ),
            batch_size=histogram(
                "s4c_worker_batch_size",
                "Batch size each request started in, one sample per request.",
                SIZE_BUCKETS,
            ),
            tree_nodes=histogram(
                "s4c_worker_tree_nodes",
                "Largest draft tree (nodes incl. root) used per request; 1 = plain decoding.",
                SIZE_BUCKETS,
            ),
        )


WORKER_METRICS = WorkerMetrics.create()


def record_chunk(outcome: ChunkOutcome, metrics: WorkerMetrics = WORKER_METRICS) -> None:
    """Count one generated chunk: its requests, tokens, forwards, duration, tau, sizes."""
    method = outcome.method or "unknown"
    stats = [r.stats for r in outcome.results if r.stats is not None]
    tokens = sum(s.completion_tokens for s in stats)
    forwards = sum(s.target_forwards for s in stats)
    metrics.chunks.labels(method).inc()
    for result in outcome.results:
        metrics.requests.labels(ResultStatus(result.status).value).inc()
    metrics.tokens.labels(method).inc(tokens)
    metrics.target_forwards.labels(method).inc(forwards)
    metrics.chunk_seconds.labels(method).observe(outcome.generation_seconds)
    if outcome.generation_seconds > 0:
        metrics.tokens_per_second.set(tokens / outcome.generation_seconds)
    if forwards > 0:
        metrics.tau.set(tokens / forwards)
        metrics.tau_per_chunk.labels(method).observe(tokens / forwards)
    for s in stats:
        if s.batch_size > 0:
            metrics.batch_size.labels(method).observe(s.batch_size)
        if s.tree_nodes > 0:
            metrics.tree_nodes.labels(method).observe(s.tree_nodes)


@dataclass(frozen=True)
class MetricsServer:
    """The HTTP endpoint serving a registry; `stop()` closes its socket."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve_metrics(
    port: int, host: str = "0.0.0.0", metrics: WorkerMetrics = WORKER_METRICS
) -> MetricsServer | None:
    """Serve `metrics` at http://host:port/metrics in a daemon thread; None when port is 0
    or taken (logged: a busy port must not stop the worker from generating)."""
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        log.warning("worker metrics not served: cannot listen on %s:%d (%s)", host, port, exc)
        return None
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return MetricsServer(server, thread)
