"""SQLAlchemy 2 typed models: tenants, API keys, jobs, requests, chunks, results, statistics.

Schema only. Reading and writing rows is `jobs.store`'s business; migrations are written by
hand in `migrations/versions` and must match these models (`alembic check`).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY, so big ids are plain integers there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(enum.StrEnum):
    """OpenAI Batch's job states, stored by value."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED}
)


class ChunkState(enum.StrEnum):
    QUEUED = "queued"  # waiting for a worker (its message may or may not be in the broker)
    RUNNING = "running"  # leased by `lease_owner` until `lease_expires_at`
    DONE = "done"  # every request of the chunk has a result
    CANCELLED = "cancelled"  # the job was cancelled before the chunk finished


class ResultStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # VARCHAR plus a CHECK constraint on every backend: adding a state later is a plain migration.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """An API key: only its SHA-256 hash and a short display prefix are stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    tenant: Mapped[Tenant] = relationship(lazy="joined")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"))
    model: Mapped[str] = mapped_column(String(128))
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONType, default=dict)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    baseline_sample: Mapped[float] = mapped_column(Float)
    # OpenAI Batch's completion window ('24h'); past expires_at the job stops and expires.
    completion_window: Mapped[str | None] = mapped_column(String(16))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    total_count: Mapped[int] = mapped_column(Integer)
    completed_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    cancelled_count: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    stats: Mapped[JobStats] = relationship(
        lazy="joined", innerjoin=True, back_populates="job", cascade="all, delete-orphan"
    )

    __table_args__ = (
        # list_jobs: a tenant's jobs newest first, keyset-paginated on (created_at, id).
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status", "status"),
    )


class JobRequest(Base):
    """One accepted request; prompt and params are `dataclasses.asdict` of the engine types."""

    __tablename__ = "job_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    input_index: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[dict[str, Any]] = mapped_column(JSONType)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)

    __table_args__ = (
        UniqueConstraint("job_id", "input_index"),
        UniqueConstraint("job_id", "custom_id"),
    )


class Chunk(Base):
    """A slice [start_index, end_index) of a job's requests: the unit of work and of leasing."""

    __tablename__ = "chunks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    start_index: Mapped[int] = mapped_column(Integer)
    end_index: Mapped[int] = mapped_column(Integer)
    state: Mapped[ChunkState] = mapped_column(_enum(ChunkState, "chunk_state"))
    measure_baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        # the sweep: expired leases and chunks still waiting for a worker
        Index("ix_chunks_state_lease", "state", "lease_expires_at"),
    )


class Result(Base):
    """Exactly one row per request of a job: UNIQUE(job_id, custom_id) makes writes idempotent."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    custom_id: Mapped[str] = mapped_column(String(64))
    input_index: Mapped[int] = mapped_column(Integer)
    status: Mapped[ResultStatus] = mapped_column(_enum(ResultStatus, "result_status"))
    text: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("job_id", "custom_id"),
        UniqueConstraint("job_id", "input_index"),
    )


class IdempotencyKey(Base):
    """(tenant, Idempotency-Key header) -> the job the first request with that key created."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobStats(Base):
    """Per-job generation statistics, aggregated as each chunk is recorded.

    The main figures are columns (so SQL can rank jobs by speedup); per-depth acceptance,
    tree and batch sizes and the raw baseline sums are JSON. Columns stay NULL until known.
    """

    __tablename__ = "job_stats"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    method: Mapped[str | None] = mapped_column(String(16))
    tokens_generated: Mapped[int | None] = mapped_column(BigInteger)
    generation_seconds: Mapped[float | None] = mapped_column(Float)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    target_forwards: Mapped[int | None] = mapped_column(BigInteger)
    tau: Mapped[float | None] = mapped_column(Float)
    baseline_tokens_per_second: Mapped[float | None] = mapped_column(Float)
    speedup: Mapped[float | None] = mapped_column(Float)
    baseline_sample_size: Mapped[int | None] = mapped_column(Integer)
    # {"accepted": [int per depth], "attempted": [int per depth]}
    acceptance: Mapped[dict[str, list[int]] | None] = mapped_column(JSONType)
    tree_sizes: Mapped[list[int] | None] = mapped_column(JSONType)
    batch_sizes: Mapped[list[int] | None] = mapped_column(JSONType)
    # raw sums (jobs.stats.BASELINE_KEYS): tokens/seconds of the plain-decoding re-runs and of
    # the job's method on the same sample, how many runs of each, greedy_checked / _matched
    baseline: Mapped[dict[str, float] | None] = mapped_column(JSONType)

    job: Mapped[Job] = relationship(back_populates="stats")
