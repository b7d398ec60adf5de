"""Initial schema: tenants, API keys, jobs, requests, chunks, results, idempotency keys, stats.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Written with op/sa only: never import jobs.models here (the models move on, revisions don't).
Reviewed against `alembic revision --autogenerate` output; `alembic check` is clean after it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES = (
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
)
CHUNK_STATES = ("queued", "running", "done", "cancelled")
RESULT_STATUSES = ("succeeded", "failed", "cancelled")


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def _big_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _enum(values: Sequence[str], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        _when("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        _when("created_at", nullable=False),
        _when("last_used_at"),
        _when("revoked_at"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("status", _enum(JOB_STATUSES, "job_status"), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("metadata", _json(), nullable=False),
        sa.Column("errors", _json(), nullable=False),
        sa.Column("baseline_sample", sa.Float(), nullable=False),
        sa.Column("total_count", sa.Integer(), nullable=False),
        sa.Column("completed_count", sa.Integer(), nullable=False),
        sa.Column("failed_count", sa.Integer(), nullable=False),
        sa.Column("cancelled_count", sa.Integer(), nullable=False),
        sa.Column("chunks_total", sa.Integer(), nullable=False),
        _when("created_at", nullable=False),
        _when("in_progress_at"),
        _when("finalizing_at"),
        _when("completed_at"),
        _when("failed_at"),
        _when("expired_at"),
        _when("cancelling_at"),
        _when("cancelled_at"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_jobs_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant_id", "created_at", "id"])

    op.create_table(
        "job_requests",
        sa.Column("id", _big_id(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("input_index", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(length=64), nullable=False),
        sa.Column("prompt", _json(), nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_requests_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_requests")),
        sa.UniqueConstraint(
            "job_id", "custom_id", name=op.f("uq_job_requests_job_id_custom_id")
        ),
        sa.UniqueConstraint(
            "job_id", "input_index", name=op.f("uq_job_requests_job_id_input_index")
        ),
    )

    op.create_table(
        "chunks",
        sa.Column("id", _big_id(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("start_index", sa.Integer(), nullable=False),
        sa.Column("end_index", sa.Integer(), nullable=False),
        sa.Column("state", _enum(CHUNK_STATES, "chunk_state"), nullable=False),
        sa.Column("measure_baseline", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        _when("lease_expires_at"),
        _when("claimed_at"),
        _when("finished_at"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_chunks_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chunks")),
        sa.UniqueConstraint("job_id", "seq", name=op.f("uq_chunks_job_id_seq")),
    )
    op.create_index("ix_chunks_state_lease", "chunks", ["state", "lease_expires_at"])

    op.create_table(
        "results",
        sa.Column("id", _big_id(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("custom_id", sa.String(length=64), nullable=False),
        sa.Column("input_index", sa.Integer(), nullable=False),
        sa.Column("status", _enum(RESULT_STATUSES, "result_status"), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("finish_reason", sa.String(length=16), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("stats", _json(), nullable=True),
        sa.Column("error", _json(), nullable=True),
        _when("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_results_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("job_id", "custom_id", name=op.f("uq_results_job_id_custom_id")),
        sa.UniqueConstraint("job_id", "input_index", name=op.f("uq_results_job_id_input_index")),
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        _when("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_idempotency_keys_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_idempotency_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_idempotency_keys")),
    )

    op.create_table(
        "job_stats",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=True),
        sa.Column("tokens_generated", sa.BigInteger(), nullable=True),
        sa.Column("generation_seconds", sa.Float(), nullable=True),
        sa.Column("tokens_per_second", sa.Float(), nullable=True),
        sa.Column("target_forwards", sa.BigInteger(), nullable=True),
        sa.Column("tau", sa.Float(), nullable=True),
        sa.Column("baseline_tokens_per_second", sa.Float(), nullable=True),
        sa.Column("speedup", sa.Float(), nullable=True),
        sa.Column("baseline_sample_size", sa.Integer(), nullable=True),
        sa.Column("acceptance", _json(), nullable=True),
        sa.Column("tree_sizes", _json(), nullable=True),
        sa.Column("batch_sizes", _json(), nullable=True),
        sa.Column("baseline", _json(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_stats_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_stats")),
    )


def downgrade() -> None:
    op.drop_table("job_stats")
    op.drop_table("idempotency_keys")
    op.drop_table("results")
    op.drop_index("ix_chunks_state_lease", table_name="chunks")
    op.drop_table("chunks")
    op.drop_table("job_requests")
    op.drop_index("ix_jobs_tenant_created", table_name="jobs")
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_table("jobs")
    op.drop_index(op.f("ix_api_keys_tenant_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
