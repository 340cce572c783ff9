"""indexes on when runs and agents were created (and runs started): analytics and date filters

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 07:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_index("ix_runs_started_at", "runs", ["started_at"])
    op.create_index("ix_agents_created_at", "agents", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_agents_created_at", table_name="agents")
    op.drop_index("ix_runs_started_at", table_name="runs")
    op.drop_index("ix_runs_created_at", table_name="runs")
