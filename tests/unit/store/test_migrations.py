"""The Alembic migrations build exactly the schema the table classes describe."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from forge.store.db import Database
from forge.store.tables import Base


async def test_migrations_match_the_tables(db: Database) -> None:
    def differences(sync_conn: Any) -> list[Any]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with db.read() as session:
        conn = await session.connection()
        diff = await conn.run_sync(differences)
    assert diff == [], f"tables and migrations differ; add a migration: {diff}"
