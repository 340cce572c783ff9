"""The database handle: engine, sessions for reading and writing, migrations."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# The async driver Forge uses for each database it supports, by the scheme users may write.
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


class UnsupportedDatabaseError(ValueError):
    """Raised for a database URL Forge cannot use (an unknown scheme, or not a URL at all)."""


def normalize_url(url: str) -> str:
    """`url` with the async driver Forge uses: `postgres://` and `postgresql://` become
    `postgresql+asyncpg://`, `sqlite://` becomes `sqlite+aiosqlite://`; anything else is refused."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UnsupportedDatabaseError(f"not a database URL: {exc}") from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise UnsupportedDatabaseError(
            f"unsupported database URL scheme {parsed.drivername!r}: use "
            "sqlite:///path/to/forge.db or postgresql://user:password@host:5432/database"
        )
    if driver == parsed.drivername:
        return url
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


class Database:
    """An async engine plus the rules for using it safely.

    SQLite allows one writer at a time; a second writer gets `SQLITE_BUSY` rather than waiting when
    its snapshot is stale. Writes in this process therefore take an asyncio lock on SQLite, so they
    queue in the event loop instead of failing. Reads run concurrently (WAL mode).

    On PostgreSQL writes run concurrently, in this process and across replicas; code that reads a
    row to decide what to write to it must lock it (`with_for_update()`) or write atomically.
    `pool_size`, `pool_timeout` and `pool_recycle` (seconds) size the connection pool there;
    SQLite ignores them (its pool is one connection per thread, and a file needs no recycling).
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        pool_size: int = 10,
        pool_timeout: float = 30.0,
        pool_recycle: float = 1800.0,
    ) -> None:
        self.url = url = normalize_url(url)
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        # A logged database error leaves out the bound values: they can hold webhook secrets.
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.is_sqlite:
            db_path = parsed.database
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = pool_size
            kwargs["pool_timeout"] = pool_timeout
            # Connections are replaced after this long, before a proxy or the server drops them.
            kwargs["pool_recycle"] = pool_recycle
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock()

    @property
    def backend(self) -> str:
        return "sqlite" if self.is_sqlite else make_url(self.url).get_backend_name()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for queries; nothing it does is committed."""
        async with self._sessions() as session:
            yield session

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction, committed on success and rolled back on error."""
        if self.is_sqlite:
            async with self._write_lock, self._sessions() as session, session.begin():
                yield session
        else:
            async with self._sessions() as session, session.begin():
                yield session

    async def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()

    async def migrate(self) -> None:
        """Bring the schema to the newest migration."""
        await asyncio.to_thread(upgrade_schema, self.url)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def upgrade_schema(url: str) -> None:
    """Run Alembic's `upgrade head` for `url` (blocking; call it from a thread)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    command.upgrade(config, "head")
