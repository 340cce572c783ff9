"""neurons: the agent of each neuron, per owner and project

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "neurons",
        sa.Column("owner_id", sa.String(length=128), nullable=False),
        sa.Column("project", sa.String(length=1024), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"]),
        sa.PrimaryKeyConstraint("owner_id", "project", "name"),
    )
    op.create_index("ix_neurons_agent_id", "neurons", ["agent_id"])


def downgrade() -> None:
    op.drop_index("ix_neurons_agent_id", table_name="neurons")
    op.drop_table("neurons")
