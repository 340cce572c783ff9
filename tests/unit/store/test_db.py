"""The database handle: the URLs it accepts and the engine it builds from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge.store.db import Database, UnsupportedDatabaseError, normalize_url


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p@h:5432/d", "postgresql+asyncpg://u:p@h:5432/d"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+asyncpg://u@h/d?ssl=require", "postgresql+asyncpg://u@h/d?ssl=require"),
        ("sqlite:////srv/forge.db", "sqlite+aiosqlite:////srv/forge.db"),
        ("sqlite+aiosqlite:///forge.db", "sqlite+aiosqlite:///forge.db"),
    ],
)
def test_urls_get_the_async_driver(given: str, used: str) -> None:
    assert normalize_url(given) == used


@pytest.mark.parametrize("url", ["mysql://u@h/d", "postgresql+psycopg2://u@h/d", "not a url"])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsupportedDatabaseError):
        normalize_url(url)


async def test_the_pool_settings_reach_a_postgresql_engine() -> None:
    db = Database("postgres://u@127.0.0.1/d", pool_size=3, pool_timeout=5, pool_recycle=60)
    try:
        assert db.url == "postgresql+asyncpg://u@127.0.0.1/d" and not db.is_sqlite
        pool = db.engine.pool
        assert (pool.size(), pool._timeout, pool._recycle) == (3, 5, 60)  # type: ignore[attr-defined]
        assert db.engine.sync_engine.hide_parameters
    finally:
        await db.close()


async def test_sqlite_ignores_the_pool_settings(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'forge.db'}", pool_size=3)
    try:
        assert db.is_sqlite and db.backend == "sqlite"
        await db.ping()
    finally:
        await db.close()
