"""The Celery client configuration and enqueueing on a real Redis."""

from __future__ import annotations

import uuid

import pytest

from jobs import messaging
from tests.jobs import factories


def test_celery_is_configured_for_long_idempotent_tasks(redis_url: str) -> None:
    app = messaging.make_celery(factories.settings(broker_url=redis_url))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    vt = factories.settings().visibility_timeout_seconds
    assert conf.broker_transport_options["visibility_timeout"] == vt
    assert conf.result_backend_transport_options["visibility_timeout"] == vt
    assert conf.visibility_timeout == vt
    assert conf.task_default_queue == "gen.SmolLM2-135M-Instruct"


def test_make_celery_needs_a_broker() -> None:
    with pytest.raises(ValueError, match="S4C_BROKER_URL"):
        messaging.make_celery(factories.settings(broker_url=None))


def test_enqueued_chunks_wait_in_the_models_queue(redis_url: str) -> None:
    app = messaging.make_celery(factories.settings(broker_url=redis_url))
    queue = messaging.queue_for_model(f"test-{uuid.uuid4().hex[:8]}")
    assert messaging.queue_depth(app, queue) == 0
    assert messaging.enqueue_chunks(app, [3, 4, 5], queue) == 3
    assert messaging.queue_depth(app, queue) == 3
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)
    assert messaging.queue_depth(app, queue) == 0
