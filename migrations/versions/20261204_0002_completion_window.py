"""Completion windows: jobs.completion_window ('24h') and jobs.expires_at.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

Written with op/sa only (never import jobs.models here). Both columns are nullable: jobs
created before this revision have no window and never expire.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("completion_window", sa.String(length=16), nullable=True))
    op.add_column("jobs", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("expires_at")
        batch.drop_column("completion_window")
