"""Webhook delivery: signing, the URL guard and the outbox dispatcher."""

from forge.delivery.dispatcher import WebhookDispatcher
from forge.delivery.signing import headers_for, sign, validate_webhook_secret
from forge.delivery.url_guard import (
    UnresolvableWebhookHost,
    check_webhook_url,
    validate_webhook_url_form,
)

__all__ = [
    "UnresolvableWebhookHost",
    "WebhookDispatcher",
    "check_webhook_url",
    "headers_for",
    "sign",
    "validate_webhook_secret",
    "validate_webhook_url_form",
]
