"""The Celery app (client and worker configuration), task names and enqueueing.

Messages carry chunk ids only and are hints: the database decides what runs (see
`jobs.chunks`). Enqueue only after the transaction that created the chunks has committed.
Tasks themselves are registered by `worker.tasks`; the API sends them by name.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery
from kombu.exceptions import ChannelError

from jobs.settings import Settings

GENERATE_CHUNK = "s4c.generate_chunk"
SWEEP = "s4c.sweep"
QUEUE_PREFIX = "gen."


def queue_for_model(model_name: str) -> str:
    """One queue per served model, so workers never take another model's work."""
    return f"{QUEUE_PREFIX}{model_name}"


def make_celery(settings: Settings) -> Celery:
    """A Celery app on `settings.broker_url` configured for long, idempotent GPU tasks."""
    if not settings.broker_url:
        raise ValueError("no broker URL: set S4C_BROKER_URL (or use `s4c serve`)")
    # Redis redelivers an unacked message after the visibility timeout; it must exceed the
    # longest chunk, and Celery only honours it when set in all three places (celery#7651).
    visibility = {"visibility_timeout": settings.visibility_timeout_seconds}
    app = Celery("s4c", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # results live in SQL, never in Redis
        task_acks_late=True,  # ack after the task returns: a crash re-delivers
        task_reject_on_worker_lost=True,  # ... even when the process is killed
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=None,  # never recycle a process holding a loaded model
        broker_transport_options=visibility,
        result_backend_transport_options=visibility,
        visibility_timeout=settings.visibility_timeout_seconds,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep retrying while Redis restarts
        task_default_queue=queue_for_model(settings.model_name),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_create_missing_queues=True,
    )
    return app


def enqueue_chunks(celery: Celery, chunk_ids: Iterable[int], queue: str) -> int:
    """Send one GENERATE_CHUNK message per chunk id on `queue`; returns how many were sent."""
    sent = 0
    with celery.producer_or_acquire() as producer:
        for chunk_id in chunk_ids:
            celery.send_task(GENERATE_CHUNK, args=[int(chunk_id)], queue=queue, producer=producer)
            sent += 1
    return sent


def queue_depth(celery: Celery, queue: str) -> int:
    """Messages waiting in `queue` (not counting ones a worker holds unacked)."""
    with celery.connection_for_read() as connection:
        try:
            _name, count, _consumers = connection.default_channel.queue_declare(
                queue=queue, passive=True
            )
        except ChannelError:  # Redis drops an empty list's key: no such queue means empty
            return 0
    return int(count)
