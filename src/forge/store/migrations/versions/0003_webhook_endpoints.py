"""webhook endpoint health: disabled by 410 Gone, paused by the circuit breaker; delivery
generations, bumped by each redelivery

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("disabled_at", sa.DateTime(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("paused_until", sa.Float(), nullable=True),
        sa.Column("enabled_at", sa.Float(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("url"),
    )
    op.create_index("ix_webhook_endpoints_updated", "webhook_endpoints", ["updated_at"])
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("generation")
    op.drop_index("ix_webhook_endpoints_updated", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
