"""Webhook delivery: signing, the URL guard, the outbox dispatcher and its HTTP transport.

- `signing`: Standard Webhooks and Go Forge signature headers.
- `url_guard`: which URLs may be sent to (checked on accepting a URL and before each delivery).
- `dispatcher`: `WebhookDispatcher`, which sends the `deliveries` outbox in order per stream.
- `endpoints`: endpoint health: disabled by `410 Gone`, paused by the circuit breaker.
- `outbox`: the dispatcher's SQL. `retry`: the backoff policy. `transport`: lean HTTP/1.1, used
  directly by the dispatcher and usable as an httpx transport.
"""

from forge.delivery.dispatcher import WebhookDispatcher
from forge.delivery.signing import headers_for, sign, validate_webhook_secret
from forge.delivery.transport import WebhookTransport
from forge.delivery.url_guard import (
    UnresolvableWebhookHost,
    check_webhook_url,
    validate_webhook_url_form,
)

__all__ = [
    "UnresolvableWebhookHost",
    "WebhookDispatcher",
    "WebhookTransport",
    "check_webhook_url",
    "headers_for",
    "sign",
    "validate_webhook_secret",
    "validate_webhook_url_form",
]
