"""Small builders for job-store rows used by the jobs and worker tests."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from jobs import store
from jobs.models import Job, Tenant
from jobs.settings import Settings
from jobs.types import NewJob, NewRequest
from s4c_engine.config import ChatMessage, Prompt, SamplingParams


def settings(**changes: object) -> Settings:
    return Settings.from_env({}).with_overrides(**changes)


def tenant(session: Session, name: str | None = None) -> Tenant:
    """A tenant; unnamed ones are unique, because the PostgreSQL test database is shared
    with other test packages that commit rows."""
    return store.create_tenant(session, name or f"tenant-{uuid.uuid4().hex[:10]}")


def new_job(
    n: int,
    *,
    max_tokens: int = 4,
    baseline_sample: float | None = 0.0,
    idempotency_key: str | None = None,
    metadata: dict[str, str] | None = None,
    completion_window: str | None = None,
) -> NewJob:
    requests = []
    for i in range(n):
        prompt = (
            Prompt(messages=(ChatMessage("user", f"question {i}"),))
            if i % 2
            else Prompt(text=f"prompt {i}")
        )
        requests.append(NewRequest(f"req-{i}", prompt, SamplingParams(max_tokens=max_tokens), i))
    return NewJob(
        requests=requests,
        metadata=metadata or {},
        baseline_sample=baseline_sample,
        idempotency_key=idempotency_key,
        completion_window=completion_window,
    )


def job(
    session: Session, owner: Tenant, n: int = 5, *, chunk_size: int = 2, **kwargs: object
) -> Job:
    created = store.create_job(
        session,
        owner,
        new_job(n, **kwargs),
        settings=settings(chunk_size=chunk_size),  # type: ignore[arg-type]
    )
    session.flush()
    return created
