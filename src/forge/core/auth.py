"""API keys, and who a request acts for.

An owner's key is `fk_<id>_<secret>`: the id names its row, the secret (256 random bits, hex) is
kept only as a SHA-256 hash and compared in constant time. The admin key comes from
`FORGE_API_KEY` and may act for every owner. With `[auth] enabled = false` every request acts
as the admin (Forge then listens on loopback only).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import select

from forge.config import AuthSettings
from forge.core import ids
from forge.core.errors import Forbidden, InvalidRequest, NotFound
from forge.core.schemas import NAME_PATTERN
from forge.store.db import Database
from forge.store.tables import ApiKeyRow, utcnow

KEY_PREFIX = "fk_"
KEY_ID_PATTERN = r"^key_[0-9a-z]{26}$"
_ID_BODY = re.compile(r"^[0-9a-z]{26}$")
# Cached lookups, at most; the cache is emptied when it grows past this.
_CACHE_LIMIT = 10_000


@dataclass(frozen=True)
class Caller:
    """Who a request acts for: one owner (an owner's key) or every owner (`owner_id` None: the
    admin key, or auth turned off)."""

    key_id: str
    owner_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.owner_id is None

    def scope(self, requested: str | None) -> str | None:
        """The owner whose objects a request may reach: an owner key's own, whatever
        `user_id` says; for the admin, the `user_id` asked for (None: every owner's)."""
        if self.owner_id is None:
            return requested
        if requested is not None and requested != self.owner_id:
            raise Forbidden(
                f"this API key belongs to owner {self.owner_id!r}; leave out user_id or send "
                f"user_id={self.owner_id}",
                code="owner_mismatch",
            )
        return self.owner_id

    def owner_for_new(self, requested: str | None) -> str:
        """The owner of an object this caller creates."""
        owner = self.scope(requested)
        if owner is None:
            raise InvalidRequest(
                "owner_id is required: say which owner the new object belongs to "
                "(with an owner's API key it is that owner)"
            )
        return owner

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this route needs the admin key (FORGE_API_KEY)", code="admin_only")


ADMIN = Caller(key_id="admin", owner_id=None)


class ApiKeyCreate(BaseModel):
    """Body of `POST /api/v1/keys`."""

    owner_id: str = Field(pattern=NAME_PATTERN, description="The owner the key acts for.")
    name: str = Field(default="", max_length=128, description="A label: who or what uses it.")


class ApiKey(BaseModel):
    key_id: str
    owner_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The key itself: shown this once, store it now.")


class ApiKeyList(BaseModel):
    keys: list[ApiKey]


@dataclass(frozen=True)
class _Cached:
    at: float
    row: tuple[str, str, bool] | None  # (owner, secret hash, revoked), or no such key


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(token: str) -> tuple[str, str] | None:
    """`fk_<id>_<secret>` → (key id, secret)."""
    if not token.startswith(KEY_PREFIX):
        return None
    parts = token[len(KEY_PREFIX) :].split("_")
    if len(parts) != 2 or not _ID_BODY.match(parts[0]) or not parts[1]:
        return None
    return f"key_{parts[0]}", parts[1]


def _public(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        key_id=row.id,
        owner_id=row.owner_id,
        name=row.name,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


class ApiKeyService:
    """Makes, lists and revokes owners' keys, and says who a presented key acts for."""

    def __init__(self, db: Database, settings: AuthSettings) -> None:
        self.db = db
        self.settings = settings
        admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        # Digests are compared, so the comparison takes as long whatever the length presented.
        self._admin = hashlib.sha256(admin.encode()).digest() if admin else None
        self._cache: dict[str, _Cached] = {}
        # Revoked here: refused whatever a lookup that raced with the revocation cached.
        self._revoked: set[str] = set()

    async def authenticate(self, token: str) -> Caller | None:
        """The caller `token` stands for, or None if it is no valid key."""
        presented = hashlib.sha256(token.encode()).digest()
        # Always compared, so an owner's key takes as long to check as the admin's.
        is_admin = self._admin is not None and hmac.compare_digest(presented, self._admin)
        if is_admin:
            return ADMIN
        split = _split(token)
        if split is None:
            return None
        key_id, secret = split
        if key_id in self._revoked:
            return None
        row = await self._lookup(key_id)
        if row is None:
            return None
        owner, secret_hash, revoked = row
        if not hmac.compare_digest(_hash(secret).encode(), secret_hash.encode()) or revoked:
            return None
        return Caller(key_id=key_id, owner_id=owner)

    async def still_valid(self, caller: Caller) -> bool:
        """Whether the key `caller` authenticated with still works (for long-lived streams;
        the admin key and auth turned off always do)."""
        if not caller.key_id.startswith("key_"):
            return True
        if caller.key_id in self._revoked:
            return False
        row = await self._lookup(caller.key_id)
        return row is not None and not row[2]

    async def caller_by_id(self, key_id: str) -> Caller | None:
        """The caller of the owner's key `key_id` if it exists and is not revoked (for a
        session that was opened with the key: the dashboard's cookie names the key by id)."""
        if not key_id.startswith("key_") or not _ID_BODY.match(key_id.removeprefix("key_")):
            return None
        if key_id in self._revoked:
            return None
        row = await self._lookup(key_id)
        if row is None or row[2]:
            return None
        return Caller(key_id=key_id, owner_id=row[0])

    async def _lookup(self, key_id: str) -> tuple[str, str, bool] | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached.at < self.settings.key_cache_seconds:
            return cached.row
        async with self.db.read() as session:
            found = await session.get(ApiKeyRow, key_id)
            row = (
                (found.owner_id, found.secret_hash, found.revoked_at is not None)
                if found is not None
                else None
            )
        if len(self._cache) >= _CACHE_LIMIT:
            # Unknown ids go first: a flood of made-up keys must not push out the real ones.
            self._cache = {k: v for k, v in self._cache.items() if v.row is not None}
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
        self._cache[key_id] = _Cached(at=now, row=row)
        return row

    async def create(self, body: ApiKeyCreate) -> ApiKeyCreated:
        key_id = ids.new_id("key")
        secret = secrets.token_hex(32)
        row = ApiKeyRow(
            id=key_id,
            owner_id=body.owner_id,
            name=body.name,
            secret_hash=_hash(secret),
            created_at=utcnow(),
        )
        async with self.db.write() as session:
            session.add(row)
        self._cache.pop(key_id, None)
        token = f"{KEY_PREFIX}{key_id.removeprefix('key_')}_{secret}"
        return ApiKeyCreated(**_public(row).model_dump(), key=token)

    async def list_keys(self, owner_id: str | None) -> ApiKeyList:
        """Every key (of `owner_id`, if given), newest first; revoked ones too."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.id.desc())
        if owner_id is not None:
            query = query.where(ApiKeyRow.owner_id == owner_id)
        async with self.db.read() as session:
            rows = (await session.scalars(query)).all()
        return ApiKeyList(keys=[_public(row) for row in rows])

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke the key (again: no change). It stops working at once on this replica and
        within `key_cache_seconds` on the others."""
        async with self.db.write() as session:
            row = await session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"no API key {key_id}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            key = _public(row)
        self._revoked.add(key_id)
        self._cache.pop(key_id, None)
        return key
