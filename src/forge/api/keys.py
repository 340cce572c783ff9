"""The admin API for owners' keys: create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from forge.api.auth import admin_only, bearer_scheme
from forge.api.routes import AUTH_ERRORS, REQUEST_ERRORS, platform_of
from forge.core.auth import KEY_ID_PATTERN, ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyList
from forge.core.schemas import NAME_PATTERN, ErrorBody

keys_router = APIRouter(
    prefix="/api/v1/keys",
    tags=["keys"],
    responses={404: {"model": ErrorBody}, **REQUEST_ERRORS, **AUTH_ERRORS},
    dependencies=[Depends(bearer_scheme), Depends(admin_only)],
)


@keys_router.post("", status_code=201, response_model=ApiKeyCreated)
async def create_key(request: Request, body: ApiKeyCreate) -> ApiKeyCreated:
    """A new key for `owner_id`. The answer holds the key itself, this once: only its hash is
    kept."""
    return await platform_of(request).keys.create(body)


@keys_router.get("", response_model=ApiKeyList)
async def list_keys(
    request: Request,
    owner_id: Annotated[
        str | None, Query(pattern=NAME_PATTERN, description="Only this owner's keys.")
    ] = None,
) -> ApiKeyList:
    """Every key, newest first, revoked ones included; never the keys themselves."""
    return await platform_of(request).keys.list_keys(owner_id)


@keys_router.delete("/{key_id}", response_model=ApiKey)
async def revoke_key(
    request: Request,
    key_id: Annotated[str, Path(pattern=KEY_ID_PATTERN, description="Key id (key_...).")],
) -> ApiKey:
    """Revoke the key: it stops working at once (on other replicas within
    `[auth] key_cache_seconds`). Revoking it again changes nothing."""
    return await platform_of(request).keys.revoke(key_id)
