"""Webhook signatures: Standard Webhooks and the original Go Forge's `X-Forge-Signature`.

Standard Webhooks (https://www.standardwebhooks.com): `webhook-signature: v1,<base64 HMAC-SHA256>`
over `"{id}.{timestamp}.{body}"`. A `whsec_` secret is base64 after the prefix and the decoded bytes
are the key; any other secret is used as its UTF-8 bytes.

Go Forge: `X-Forge-Signature: sha256=<hex HMAC-SHA256>` over `"{timestamp}.{body}"`, keyed with the
secret string exactly as given (prefix and all), and `X-Forge-Timestamp`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import time

import forge
from forge.core.errors import InvalidRequest

SECRET_PREFIX = "whsec_"
USER_AGENT = f"Forge-Webhooks/{forge.__version__}"


def signing_key(secret: str) -> bytes:
    """The HMAC key Standard Webhooks uses for `secret`.

    Raises `InvalidRequest` (code `invalid_webhook_secret`) when a `whsec_` secret is not base64
    or is empty.
    """
    if not secret:
        raise InvalidRequest("webhook_secret must not be empty", code="invalid_webhook_secret")
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    key = _decoded_key(secret)
    if not key:
        raise InvalidRequest(
            "a webhook_secret starting with 'whsec_' must be followed by base64 bytes "
            "(or leave out the prefix to use the text itself as the key)",
            code="invalid_webhook_secret",
        )
    return key


@functools.lru_cache(maxsize=1024)
def _decoded_key(secret: str) -> bytes:
    """The bytes after `whsec_`, or b"" if they are not base64. Cached: every attempt of every
    delivery signs with its secret, and a run's deliveries share one."""
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return b""


def validate_webhook_secret(secret: str) -> None:
    """Raise `InvalidRequest` if `secret` cannot sign; call it where the secret is accepted."""
    signing_key(secret)


def standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64>` for the `webhook-signature` header."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def forge_signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>` for the `X-Forge-Signature` header."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return "sha256=" + digest


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Both signature header sets for one attempt to send `body`."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_signature(signing_key(secret), msg_id, timestamp, body),
        "X-Forge-Timestamp": str(timestamp),
        "X-Forge-Signature": forge_signature(secret, timestamp, body),
    }


def headers_for(
    msg_id: str, body: bytes, secret: str | None = None, *, timestamp: int | None = None
) -> dict[str, str]:
    """Every header of one delivery attempt; signed when there is a secret.

    `msg_id` must be the same on every attempt of one event (Forge uses the event id), so that
    receivers can drop duplicates. `timestamp` defaults to now: each attempt is signed afresh.
    """
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
    }
    if secret:  # an empty secret signs nothing; the API refuses one up front
        headers.update(sign(secret, msg_id, ts, body))
    return headers
