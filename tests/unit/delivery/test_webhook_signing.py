"""Webhook signatures, checked with the `standardwebhooks` package and an independent HMAC."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

import forge
from forge.core.errors import InvalidRequest
from forge.delivery.signing import headers_for, sign, signing_key, validate_webhook_secret

BODY = b'{"event_type":"agent.event","event_id":"evt_1","seq":1,"text":"h\xc3\xa9"}'


def forge_hex(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def test_whsec_secret_verifies_with_standardwebhooks() -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    headers = sign(secret, "evt_1", int(time.time()), BODY)

    assert Webhook(secret).verify(BODY, headers)["seq"] == 1
    # The Go Forge signature is keyed with the whole string, prefix included.
    assert headers["X-Forge-Signature"] == "sha256=" + forge_hex(
        secret, headers["X-Forge-Timestamp"], BODY
    )
    assert headers["X-Forge-Timestamp"] == headers["webhook-timestamp"]


def test_unpadded_whsec_secret_is_accepted() -> None:
    raw = os.urandom(16)  # base64 of 16 bytes ends in "=="
    unpadded = "whsec_" + base64.b64encode(raw).decode().rstrip("=")
    assert signing_key(unpadded) == raw
    headers = sign(unpadded, "evt_2", int(time.time()), BODY)
    Webhook(raw).verify(BODY, headers)


def test_plain_secret_is_its_utf8_bytes() -> None:
    secret = "my shared sécret"
    headers = sign(secret, "evt_3", int(time.time()), BODY)

    Webhook(secret.encode()).verify(BODY, headers)
    assert headers["X-Forge-Signature"] == "sha256=" + forge_hex(
        secret, headers["X-Forge-Timestamp"], BODY
    )


def test_a_changed_body_or_id_does_not_verify() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    headers = sign(secret, "evt_4", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "evt_5"})


def test_headers_for_without_secret_still_identify_the_message() -> None:
    headers = headers_for("evt_6", BODY, None, timestamp=1_700_000_000)
    assert headers == {
        "content-type": "application/json",
        "user-agent": f"Forge-Webhooks/{forge.__version__}",
        "webhook-id": "evt_6",
        "webhook-timestamp": "1700000000",
    }


def test_headers_for_with_secret_signs_both_ways() -> None:
    headers = headers_for("evt_7", BODY, "s3cret")
    assert headers["webhook-id"] == "evt_7"
    assert headers["content-type"] == "application/json"
    Webhook(b"s3cret").verify(BODY, headers)
    assert headers["X-Forge-Signature"].startswith("sha256=")


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_!!!not base64!!!"])
def test_unusable_secrets_are_refused(secret: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_webhook_secret(secret)
    assert caught.value.code == "invalid_webhook_secret"
