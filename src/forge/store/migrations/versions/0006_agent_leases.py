"""agents.lease_owner, lease_expires_at: which replica supervises an agent, until when

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))
        batch.create_index("ix_agents_lease_owner", ["lease_owner"])


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_index("ix_agents_lease_owner")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
