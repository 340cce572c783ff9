"""`forge.webhooks.verify` on what a real `forge serve` sends: every delivery checks out, under
either signature scheme and either kind of secret, and a changed body, another secret or an old
timestamp is refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from forge.webhooks import WebhookVerificationError, verify
from tests.integration.conftest import ForgeServer, Received, WebhookReceiver

pytestmark = pytest.mark.integration

STANDARD = ("webhook-id", "webhook-timestamp", "webhook-signature")
GO_FORGE = ("x-forge-timestamp", "x-forge-signature")


def only(request: Received, names: tuple[str, ...]) -> dict[str, str]:
    return {name: value for name, value in request.headers.items() if name in names}


def refused(reason: str, secret: str, headers: dict[str, str], body: bytes, **kw: float) -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        verify(secret, headers, body, **kw)
    assert caught.value.reason == reason, caught.value
    assert str(caught.value)


# A Standard Webhooks secret (the key is the base64 after `whsec_`), and plain text.
SECRETS = ["whsec_c2VjcmV0LWJ5dGVzLWZvci10ZXN0cw==", "plain-text-secret"]


@pytest.mark.parametrize("secret", SECRETS)
def test_verify_accepts_what_forge_sends_and_refuses_the_rest(
    forge_server: Callable[..., ForgeServer], receiver: WebhookReceiver, secret: str
) -> None:
    server = forge_server()
    agent = server.create_agent()
    sent = server.http.post(
        f"/api/v1/agents/{agent['id']}/messages",
        json={"content": "hello", "webhook_url": receiver.url, "webhook_secret": secret},
    )
    assert sent.status_code == 202, sent.text
    receiver.wait_for(lambda got: any(r.json["is_final"] for r in got))
    requests = list(receiver.requests)
    assert len(requests) >= 3

    for request in requests:
        # Either scheme alone, with the headers in any case, the body as bytes or text.
        for names in (STANDARD, GO_FORGE):
            headers = only(request, names)
            event = verify(secret, headers, request.body)
            assert event == request.json
            assert verify(secret, {k.upper(): v for k, v in headers.items()}, request.body.decode())
    seqs = [verify(secret, r.headers, r.body)["seq"] for r in requests]
    assert sorted(seqs) == list(range(1, len(requests) + 1))

    last = requests[-1]
    timestamp = int(last.headers["webhook-timestamp"])
    for names in (STANDARD, GO_FORGE):
        headers = only(last, names)
        changed = last.body.replace(b'"is_final":true', b'"is_final":false')
        assert changed != last.body
        refused("signature_mismatch", secret, headers, changed)
        refused("signature_mismatch", "another-secret-entirely", headers, last.body)
        refused("timestamp_too_old", secret, headers, last.body, now=timestamp + 301)
        refused("timestamp_in_future", secret, headers, last.body, now=timestamp - 301)
        # Within the tolerance, and a tolerance of one's own.
        assert verify(secret, headers, last.body, now=timestamp + 299)
        refused("timestamp_too_old", secret, headers, last.body, tolerance=10, now=timestamp + 11)
    refused("no_signature", secret, {"content-type": "application/json"}, last.body)
    refused("bad_headers", secret, {**only(last, GO_FORGE), "x-forge-timestamp": "soon"}, last.body)
