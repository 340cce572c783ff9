"""Checking Forge's webhooks in the application that receives them.

    from forge.webhooks import verify, WebhookVerificationError

    event = verify(secret, request.headers, body)   # the parsed envelope, or an error

`verify` accepts either signature Forge sends (see docs/webhooks.md): Standard Webhooks
(`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`) or the original Go Forge's
(`X-Forge-Timestamp`, `X-Forge-Signature: sha256=<hex>`), and refuses a timestamp further than
`tolerance` seconds from now either way, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from forge.core.errors import InvalidRequest
from forge.delivery.signing import forge_signature, signing_key, standard_signature

__all__ = ["WebhookVerificationError", "verify"]

DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(ValueError):
    """The request is not a webhook Forge sent with this secret, or not a recent one. `reason`
    is one of `no_signature`, `bad_headers`, `bad_secret`, `signature_mismatch`,
    `timestamp_too_old`, `timestamp_in_future`, `bad_body`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """The event envelope of a webhook request, once its signature and timestamp check out.

    `headers` may be any mapping (names in any case: a dict, Starlette's, Flask's), `body` the
    raw body exactly as received (bytes, or text as sent). Raises `WebhookVerificationError`.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    found = {name.lower(): value for name, value in headers.items()}
    if "webhook-signature" in found:
        msg_id = found.get("webhook-id")
        timestamp = _timestamp(found.get("webhook-timestamp"), "webhook-timestamp")
        if not msg_id:
            raise WebhookVerificationError("bad_headers", "webhook-signature without webhook-id")
        try:
            key = signing_key(secret)
        except InvalidRequest as exc:
            raise WebhookVerificationError("bad_secret", exc.message) from None
        expected = standard_signature(key, msg_id, timestamp, raw)
        offered = found["webhook-signature"].split()
        matches = any(hmac.compare_digest(expected, candidate) for candidate in offered)
    elif "x-forge-signature" in found:
        timestamp = _timestamp(found.get("x-forge-timestamp"), "X-Forge-Timestamp")
        expected = forge_signature(secret, timestamp, raw)
        matches = hmac.compare_digest(expected, found["x-forge-signature"].strip())
    else:
        raise WebhookVerificationError(
            "no_signature",
            "the request carries no webhook-signature nor X-Forge-Signature header: it was not "
            "signed (was the message sent with a webhook_secret?)",
        )
    if not matches:
        raise WebhookVerificationError(
            "signature_mismatch",
            "the signature does not match the body: another secret, or a changed body (verify "
            "the raw body, before any parsing)",
        )
    age = (time.time() if now is None else now) - timestamp
    if age > tolerance:
        raise WebhookVerificationError(
            "timestamp_too_old", f"the webhook was signed {age:.0f} s ago (more than {tolerance})"
        )
    if age < -tolerance:
        raise WebhookVerificationError(
            "timestamp_in_future",
            f"the webhook's timestamp is {-age:.0f} s ahead of this clock (more than {tolerance})",
        )
    try:
        event = json.loads(raw)
    except ValueError as exc:
        raise WebhookVerificationError("bad_body", f"the body is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("bad_body", "the body is not a JSON object")
    return event


def _timestamp(value: str | None, name: str) -> int:
    if value is None or not value.strip().isdigit():
        raise WebhookVerificationError(
            "bad_headers", f"{name} must be the signing time in whole seconds, not {value!r}"
        )
    return int(value.strip())
