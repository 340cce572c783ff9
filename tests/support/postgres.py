"""Throwaway PostgreSQL databases for tests: each made fresh on the server and dropped after.

The server comes from `FORGE_TEST_POSTGRES_URL` (default: the local one the test machines and CI
run, `postgresql+asyncpg://postgres@127.0.0.1:5432/test`). Its database is only the way in: tests
never write there, they create `forge_test_<random>` databases through it and drop them.

    async with temporary_database() as url:
        db = Database(url)
        await db.migrate()
        ...

`MigratedTemplate` hands out copies of one migrated database, which is faster than migrating each.

Without a server, `require_postgres()` skips the test, except in CI (`CI=true`), where a missing
PostgreSQL is a broken machine and fails the test instead of hiding a whole database's tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from forge.store.db import normalize_url, upgrade_schema

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
# Seconds to wait for the server before deciding it is not there.
CONNECT_TIMEOUT = 3.0


def server_url() -> URL:
    """The server the tests use (its database is only used to connect)."""
    return make_url(normalize_url(os.environ.get("FORGE_TEST_POSTGRES_URL") or DEFAULT_URL))


def _admin_engine() -> AsyncEngine:
    # AUTOCOMMIT: CREATE DATABASE and DROP DATABASE cannot run inside a transaction.
    return create_async_engine(
        server_url(),
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout": CONNECT_TIMEOUT},
    )


# Why the server could not be reached, once a test found out: later tests skip without waiting.
_unreachable: str | None = None


async def require_postgres() -> None:
    """Skip the calling test when no PostgreSQL answers; fail instead when `CI` is "true"."""
    global _unreachable
    if _unreachable is None:
        engine = _admin_engine()
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return
        except Exception as exc:
            where = server_url().render_as_string(hide_password=True)
            _unreachable = (
                f"PostgreSQL is not reachable at {where} (set FORGE_TEST_POSTGRES_URL): {exc!r}"
            )
        finally:
            await engine.dispose()
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{_unreachable}; CI must run the PostgreSQL tests", pytrace=False)
    pytest.skip(_unreachable)


async def create_database(template: str | None = None) -> str:
    """Create a fresh database and return its URL (with the asyncpg driver): empty, or a copy
    of the database `template` (which nothing may be connected to meanwhile)."""
    name = f"forge_test_{secrets.token_hex(6)}"
    copy = f' TEMPLATE "{template}"' if template else ""
    engine = _admin_engine()
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    finally:
        await engine.dispose()
    return server_url().set(database=name).render_as_string(hide_password=False)


async def drop_database(url: str) -> None:
    """Drop the database of `url`, closing whatever connections are still open to it."""
    name = make_url(url).database
    assert name and name.startswith("forge_test_"), f"not a test database: {name}"
    engine = _admin_engine()
    try:
        async with engine.connect() as conn:
            # WITH (FORCE) (PostgreSQL 13+) ends the other sessions itself; terminating them
            # first also covers older servers.
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            version = (await conn.execute(text("SHOW server_version_num"))).scalar_one()
            force = " WITH (FORCE)" if int(version) >= 130000 else ""
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"{force}'))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def temporary_database(template: str | None = None) -> AsyncIterator[str]:
    """A fresh database for the duration of the block (empty, or a copy of `template`): its URL,
    then it is dropped. Skips (or, in CI, fails) the test when PostgreSQL is not reachable."""
    await require_postgres()
    url = await create_database(template)
    try:
        yield url
    finally:
        await drop_database(url)


class MigratedTemplate:
    """A database migrated once, that tests copy (`CREATE DATABASE ... TEMPLATE`) instead of
    each running the migrations: a copy takes a fraction of the time. Made on first use."""

    def __init__(self) -> None:
        self._url: str | None = None

    async def name(self) -> str:
        """The template's database name, made and migrated on the first call."""
        if self._url is None:
            await require_postgres()
            url = await create_database()
            try:
                await asyncio.to_thread(upgrade_schema, url)
            except BaseException:
                await drop_database(url)
                raise
            self._url = url
        name = make_url(self._url).database
        assert name
        return name

    @contextlib.asynccontextmanager
    async def copy(self) -> AsyncIterator[str]:
        """A migrated database for the duration of the block: its URL, then it is dropped."""
        async with temporary_database(await self.name()) as url:
            yield url

    def drop(self) -> None:
        """Drop the template, if it was made (blocking: for a session fixture's teardown)."""
        if self._url is not None:
            asyncio.run(drop_database(self._url))
            self._url = None
