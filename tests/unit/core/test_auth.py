"""API keys against a real SQLite database, and the owner a caller may act for."""

from __future__ import annotations

import time

import pytest

from forge.config import AuthSettings, Settings
from forge.core.auth import ADMIN, ApiKeyCreate, ApiKeyService, Caller, _Cached
from forge.core.errors import Forbidden, InvalidRequest, NotFound
from forge.store.db import Database
from forge.store.tables import ApiKeyRow

ADMIN_KEY = "a" * 40


def service(db: Database, **settings: object) -> ApiKeyService:
    return ApiKeyService(db, AuthSettings(enabled=True, admin_key=ADMIN_KEY, **settings))


async def test_a_created_key_acts_for_its_owner_and_only_a_hash_is_kept(db: Database) -> None:
    keys = service(db)
    created = await keys.create(ApiKeyCreate(owner_id="alice", name="ci"))
    assert created.key.startswith("fk_") and created.key_id.startswith("key_")

    caller = await keys.authenticate(created.key)
    assert caller == Caller(key_id=created.key_id, owner_id="alice")
    async with db.read() as session:
        row = await session.get(ApiKeyRow, created.key_id)
    assert row is not None
    secret = created.key.rsplit("_", 1)[1]
    assert secret not in row.secret_hash and created.key not in repr(row.__dict__)

    listed = await keys.list_keys("alice")
    assert [k.key_id for k in listed.keys] == [created.key_id]
    assert "key" not in listed.keys[0].model_dump()
    assert (await keys.list_keys("bob")).keys == []


async def test_wrong_forged_and_revoked_keys_are_refused(db: Database) -> None:
    keys = service(db)
    created = await keys.create(ApiKeyCreate(owner_id="alice"))
    key_part, secret = created.key.rsplit("_", 1)
    other = "0" if secret[0] != "0" else "1"
    for bad in (
        f"{key_part}_{other}{secret[1:]}",  # one character off
        f"{key_part}_",
        created.key + "x",
        "fk_" + "0" * 26 + "_" + secret,  # no such key id
        "Bearer " + created.key,
        "",
        ADMIN_KEY[:-1],
    ):
        assert await keys.authenticate(bad) is None, bad

    assert await keys.authenticate(ADMIN_KEY) == ADMIN
    revoked = await keys.revoke(created.key_id)
    assert revoked.revoked_at is not None
    # Revoked at once on this replica, although the key was cached.
    assert await keys.authenticate(created.key) is None
    assert (await keys.revoke(created.key_id)).revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        await keys.revoke("key_" + "0" * 26)


async def test_a_revocation_by_another_replica_counts_after_the_cache_time(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("forge.core.auth.time.monotonic", lambda: clock[0])
    here, there = service(db, key_cache_seconds=10), service(db)
    created = await here.create(ApiKeyCreate(owner_id="alice"))
    caller = await here.authenticate(created.key)
    assert caller is not None
    await there.revoke(created.key_id)
    # Within the cache time this replica still trusts what it read ...
    clock[0] += 9
    assert await here.authenticate(created.key) == caller
    assert await here.still_valid(caller)
    # ... and no longer after it.
    clock[0] += 2
    assert await here.authenticate(created.key) is None
    assert not await here.still_valid(caller)
    assert await there.still_valid(ADMIN)


async def test_a_lookup_racing_a_revocation_cannot_bring_the_key_back(db: Database) -> None:
    keys = service(db, key_cache_seconds=60)
    created = await keys.create(ApiKeyCreate(owner_id="alice"))
    stale = await keys._lookup(created.key_id)  # read before the revocation commits
    await keys.revoke(created.key_id)
    keys._cache[created.key_id] = _Cached(at=time.monotonic(), row=stale)
    assert await keys.authenticate(created.key) is None


async def test_made_up_key_ids_do_not_push_real_keys_out_of_the_cache(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("forge.core.auth._CACHE_LIMIT", 5)
    keys = service(db, key_cache_seconds=600)
    created = await keys.create(ApiKeyCreate(owner_id="alice"))
    assert await keys.authenticate(created.key) is not None
    for n in range(20):
        assert await keys.authenticate(f"fk_{n:026d}_{'0' * 64}") is None
    assert created.key_id in keys._cache
    # Not even looked up: an id that cannot be one.
    assert await keys.authenticate("fk_" + "Z" * 26 + "_secret") is None


def test_an_owner_key_acts_for_its_owner_only() -> None:
    alice = Caller(key_id="key_1", owner_id="alice")
    assert alice.scope(None) == "alice"
    assert alice.scope("alice") == "alice"
    with pytest.raises(Forbidden) as refused:
        alice.scope("bob")
    assert refused.value.code == "owner_mismatch" and "alice" in refused.value.message
    assert alice.owner_for_new(None) == "alice"
    with pytest.raises(Forbidden):
        alice.owner_for_new("bob")
    with pytest.raises(Forbidden) as admin_only:
        alice.require_admin()
    assert admin_only.value.code == "admin_only"


def test_the_admin_acts_for_any_owner_but_must_name_the_owner_of_new_objects() -> None:
    assert ADMIN.scope(None) is None
    assert ADMIN.scope("bob") == "bob"
    assert ADMIN.owner_for_new("bob") == "bob"
    with pytest.raises(InvalidRequest) as missing:
        ADMIN.owner_for_new(None)
    assert "owner_id is required" in missing.value.message
    ADMIN.require_admin()


def test_auth_settings_come_from_the_documented_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORGE_AUTH_ENABLED", "true")
    monkeypatch.setenv("FORGE_API_KEY", ADMIN_KEY)
    settings = Settings()
    assert settings.auth.enabled is True
    assert settings.auth.admin_key is not None
    assert settings.auth.admin_key.get_secret_value() == ADMIN_KEY
    # The key never shows in a dump of the settings.
    assert ADMIN_KEY not in repr(settings) and ADMIN_KEY not in settings.model_dump_json()

    monkeypatch.setenv("FORGE_API_KEY", "short")
    with pytest.raises(ValueError, match="at least 24 characters"):
        Settings()

    # A key read from a file or Secret with its newline is the key without it.
    monkeypatch.setenv("FORGE_API_KEY", ADMIN_KEY + "\n")
    key = Settings().auth.admin_key
    assert key is not None and key.get_secret_value() == ADMIN_KEY
