"""Helpers for API tests: request builders, problem assertions, row counts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import Flask
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from api import response_models
from api.services import Services
from jobs import store
from jobs.db import transaction
from jobs.models import Chunk, IdempotencyKey, Job, JobRequest, Result, ResultStatus
from jobs.types import ChunkOutcome, RequestOutcome
from s4c_engine.config import RequestStats

MODEL = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ApiTenant:
    name: str
    key: str
    key_id: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def services_of(app: Flask) -> Services:
    found = app.extensions["s4c"]
    assert isinstance(found, Services)
    return found


def row_counts(app: Flask) -> dict[str, int]:
    """Rows in every table a submission writes (compare before/after a rejected request)."""
    with services_of(app).sessions() as session:
        return {
            model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Job, JobRequest, Chunk, IdempotencyKey, Result)
        }


def batch_line(custom_id: str, **body: Any) -> dict[str, Any]:
    """One OpenAI Batch chat line; `body` overrides/extends the default body."""
    content = body.pop("content", f"Say hello to {custom_id}.")
    full = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    if "max_completion_tokens" in body:
        del full["max_tokens"]
    full.update(body)
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": full}


def jsonl(*lines: dict[str, Any] | str) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def inline_job(n: int = 2, **extra: Any) -> dict[str, Any]:
    requests = [
        {"custom_id": f"req-{i}", "prompt": f"Count to {i}.", "max_tokens": 8} for i in range(n)
    ]
    return {"requests": requests, **extra}


def assert_problem(response: TestResponse, status: int, *mentions: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with `status` whose text mentions each string."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    response_models.Problem.model_validate(body)
    assert body["status"] == status
    assert body["type"].startswith("urn:s4c:problem:")
    text = json.dumps(body)
    for mention in mentions:
        assert mention in text, f"{mention!r} not in {text}"
    return dict(body)


def assert_job(body: Any) -> dict[str, Any]:
    response_models.Job.model_validate(body)
    return dict(body)


def finish_job(app: Flask, job_id: str, *, failed: frozenset[int] = frozenset()) -> None:
    """Run the worker side of the store by hand: claim every chunk and record an outcome per
    request (text `out-<index>`; indexes in `failed` get an engine error instead)."""
    sessions = services_of(app).sessions
    with transaction(sessions) as session:
        chunk_ids = store.chunk_ids(session, job_id)
    for chunk_id in chunk_ids:
        with transaction(sessions) as session:
            claim = store.claim_chunk(session, chunk_id, "test-worker", lease_seconds=60)
            assert claim is not None
            outcomes = [
                RequestOutcome.failure(r.input_index, r.custom_id, "engine_error", "boom")
                if r.input_index in failed
                else RequestOutcome(
                    r.input_index,
                    r.custom_id,
                    ResultStatus.SUCCEEDED,
                    text=f"out-{r.input_index}",
                    finish_reason="stop",
                    stats=RequestStats(prompt_tokens=3, completion_tokens=2, target_forwards=1),
                )
                for r in store.pending_requests(session, claim)
            ]
            assert store.record_chunk_results(
                session, claim, ChunkOutcome(outcomes, generation_seconds=0.1, method="ar")
            )
