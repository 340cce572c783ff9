"""This replica among the others: its name, and the line between replicas over PostgreSQL.

Replicas share nothing but the database. A change one replica makes that another must act on is
written to the database first, then announced with `NOTIFY` (sent when the writing transaction
commits, so a listener always finds the change):

- `forge_events`, payload `<replica_id> <agent_id> <last_seq>`: an agent's log grew; live
  streams on the other replicas wake and read the log.
- `forge_agents`, payload `<agent_id>`: something the agent's supervising replica must act on
  (a queued run, an interrupt, a permission answer, a delete or stop).

One dedicated connection per replica listens, and also holds session advisory locks (one
webhook endpoint is delivered to by one replica at a time; the lock goes with the connection, so
a replica that dies frees its endpoints at once). On SQLite there is one replica and all of this
is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from forge.store.db import Database

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "forge_events"
AGENTS_CHANNEL = "forge_agents"
# How often a lost listening connection is retried.
RECONNECT_SECONDS = 1.0
# How often the listening connection is checked with a query: a connection dropped silently
# (a firewall forgetting it) would otherwise lose announcements and locks unnoticed.
PING_SECONDS = 10.0
# A query on the listening connection taking longer means it is dead.
QUERY_TIMEOUT_SECONDS = 5.0


def default_replica_id() -> str:
    host = socket.gethostname().split(".")[0][:48] or "forge"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


# Serializes the scheduler's claims and the runs' ends across replicas.
SCHEDULER_LOCK = lock_key("forge:scheduler")


async def serialize(session: AsyncSession, key: int = SCHEDULER_LOCK) -> None:
    """Hold `key` until the session's transaction ends (PostgreSQL); SQLite's single writer
    already serializes."""
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


async def notify(conn: AsyncConnection, channel: str, payload: str) -> None:
    """Announce `payload` on `channel` when the transaction commits (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
        )


class Cluster:
    """Listens for the other replicas' announcements and holds this replica's session locks."""

    def __init__(self, db: Database, replica_id: str = "") -> None:
        self.db = db
        self.replica_id = replica_id or default_replica_id()
        self.enabled = not db.is_sqlite
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._on_reconnect: Callable[[], None] = lambda: None
        self._conn: Any = None
        self._conn_lock = asyncio.Lock()
        self._held: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    def on(self, channel: str, handler: Callable[[str], None]) -> None:
        """Call `handler(payload)` for every announcement on `channel` (before `start`)."""
        self._handlers[channel] = handler

    def on_reconnect(self, handler: Callable[[], None]) -> None:
        """Call `handler()` after the listening connection was lost and made again: whatever
        was announced meanwhile was missed, so listeners should look at the database."""
        self._on_reconnect = handler

    async def start(self) -> None:
        if not self.enabled:
            return
        await self._connect()
        self._task = asyncio.create_task(self._watch(), name="cluster-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None

    async def announce(self, channel: str, payload: str) -> None:
        """`NOTIFY` outside any transaction (at once)."""
        if not self.enabled:
            return
        async with self.db.write() as session:
            await notify(await session.connection(), channel, payload)

    # ---- session locks ---------------------------------------------------------------------------

    async def try_lock(self, name: str) -> bool:
        """Take the session lock `name` for this replica if no other replica holds it. Always
        True on SQLite, and when this replica holds it already."""
        if not self.enabled:
            return True
        key = lock_key(name)
        if key in self._held:
            return True
        async with self._conn_lock:
            if self._conn is None or self._conn.is_closed():
                return False
            try:
                got = bool(await self._query("SELECT pg_try_advisory_lock($1)", key))
            except Exception:
                log.warning("could not take the lock %s", name, exc_info=True)
                return False
        if got:
            self._held.add(key)
        return got

    async def unlock(self, name: str) -> None:
        if not self.enabled:
            return
        key = lock_key(name)
        if key not in self._held:
            return
        self._held.discard(key)
        async with self._conn_lock:
            if self._conn is not None and not self._conn.is_closed():
                with contextlib.suppress(Exception):
                    await self._query("SELECT pg_advisory_unlock($1)", key)

    def holds(self, name: str) -> bool:
        return not self.enabled or lock_key(name) in self._held

    # ---- the listening connection ---------------------------------------------------------------

    async def _connect(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        url = make_url(self.db.url).set(drivername="postgresql")
        conn = await asyncpg.connect(url.render_as_string(hide_password=False))
        for channel in self._handlers:
            await conn.add_listener(channel, self._dispatch)
        self._conn = conn

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(payload)
        except Exception:
            log.exception("handling %s %r failed", channel, payload)

    async def _query(self, sql: str, *args: Any) -> Any:
        """One query on the listening connection (`_conn_lock` held); a connection that does
        not answer in time is closed, and `_watch` makes a new one."""
        try:
            return await asyncio.wait_for(self._conn.fetchval(sql, *args), QUERY_TIMEOUT_SECONDS)
        except TimeoutError:
            self._conn.terminate()
            raise

    async def _watch(self) -> None:
        """Check the connection now and then, and make it again when it is lost; the locks it
        held went with it."""
        last_ping = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(RECONNECT_SECONDS)
            if self._conn is not None and not self._conn.is_closed():
                now = asyncio.get_running_loop().time()
                if now - last_ping < PING_SECONDS:
                    continue
                last_ping = now
                async with self._conn_lock:
                    with contextlib.suppress(Exception):
                        await self._query("SELECT 1")
                if not self._conn.is_closed():
                    continue
            if self._held:
                log.warning("lost the cluster connection and with it %d locks", len(self._held))
            self._held.clear()
            try:
                async with self._conn_lock:
                    await self._connect()
            except Exception as exc:
                log.warning("cannot reach PostgreSQL to listen: %s; retrying", exc)
                continue
            log.info("listening to the other replicas again")
            self._on_reconnect()
