"""Shared fixtures for unit tests: a migrated database, once on SQLite and once on PostgreSQL.

Every test that takes `db` runs on both (`[sqlite]`, `[postgres]`). The PostgreSQL database is a
fresh copy of one migrated for the session, dropped after the test (tests/support/postgres.py);
without a server the `[postgres]` case is skipped, or fails in CI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from forge.store.db import Database
from tests.support.postgres import MigratedTemplate


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[MigratedTemplate]:
    """The migrated PostgreSQL database that `db` copies (made on first use)."""
    template = MigratedTemplate()
    yield template
    template.drop()


@pytest.fixture(params=["sqlite", "postgres"])
async def db(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_template: MigratedTemplate
) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'forge.db'}")
        await database.migrate()
        yield database
        await database.close()
        return
    async with postgres_template.copy() as url:
        database = Database(url)
        try:
            # Already migrated (a copy of the template): this only checks it is at the head.
            await database.migrate()
            yield database
        finally:
            await database.close()


@pytest.fixture
async def postgres_url(postgres_template: MigratedTemplate) -> AsyncIterator[str]:
    """The URL of a migrated PostgreSQL database made for this test, for tests that open several
    `Database`s on it, as replicas do. Dropped after the test."""
    async with postgres_template.copy() as url:
        yield url
