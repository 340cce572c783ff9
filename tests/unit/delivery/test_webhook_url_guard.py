"""Which webhook URLs are refused, and how configuration lets private ones through."""

from __future__ import annotations

import ipaddress

import pytest

from forge.config import WebhookSettings
from forge.core.errors import InvalidRequest
from forge.delivery.url_guard import (
    UnresolvableWebhookHost,
    address_problem,
    check_webhook_url,
    validate_webhook_url_form,
)

STRICT = WebhookSettings()

PRIVATE_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://10.1.2.3/hook",
    "https://192.168.0.10/hook",
    "http://172.16.5.4/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://169.254.1.1/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://100.64.0.1/",
]


async def refused(url: str, settings: WebhookSettings = STRICT) -> str:
    with pytest.raises(InvalidRequest) as caught:
        await check_webhook_url(url, settings)
    assert caught.value.code == "invalid_webhook_url"
    return caught.value.message


@pytest.mark.parametrize("url", PRIVATE_URLS)
async def test_private_addresses_are_refused(url: str) -> None:
    message = await refused(url)
    assert "allowed_hosts" in message  # says how to allow it


async def test_metadata_address_is_named() -> None:
    assert "metadata" in await refused("http://169.254.169.254/latest/meta-data/")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/hook", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("example.com/hook", "scheme"),
        ("http://user:pw@example.com/hook", "password"),
        ("http://user@example.com/hook", "user name"),
        ("http:///hook", "no host"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://exa mple.com/", "whitespace"),
        ("", "empty"),
    ],
)
async def test_malformed_urls_are_refused(url: str, words: str) -> None:
    assert words in await refused(url)
    with pytest.raises(InvalidRequest):
        validate_webhook_url_form(url)


async def test_unresolvable_names_are_refused() -> None:
    with pytest.raises(UnresolvableWebhookHost) as caught:
        await check_webhook_url("https://no-such-host.invalid/hook", STRICT)
    assert caught.value.code == "invalid_webhook_url"
    # Even with private addresses allowed, the name must resolve.
    with pytest.raises(UnresolvableWebhookHost):
        await check_webhook_url(
            "https://no-such-host.invalid/hook", WebhookSettings(allow_private=True)
        )


@pytest.mark.parametrize("url", PRIVATE_URLS)
async def test_allow_private_permits_them(url: str) -> None:
    await check_webhook_url(url, WebhookSettings(allow_private=True))


async def test_allowed_hosts_permit_named_hosts_and_addresses() -> None:
    settings = WebhookSettings(allowed_hosts=["LOCALHOST", "10.1.2.3", "[::1]", "169.254.169.254"])
    await check_webhook_url("http://localhost:9000/hook", settings)
    await check_webhook_url("http://10.1.2.3/hook", settings)
    await check_webhook_url("http://[::1]:8080/hook", settings)
    await check_webhook_url("http://169.254.169.254/", settings)
    # Only those hosts: others stay refused.
    await refused("http://10.1.2.4/hook", settings)
    await refused("http://127.0.0.1/hook", settings)


async def test_public_addresses_pass() -> None:
    await check_webhook_url("https://93.184.215.14/hook", STRICT)
    await check_webhook_url("http://[2606:4700:4700::1111]/hook", STRICT)
    validate_webhook_url_form("https://hooks.example.com/forge?x=1")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("8.8.8.8", None),
        ("64:ff9b::808:808", None),  # NAT64 of a public address
        ("64:ff9b::a00:1", "a private address"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "a loopback address"),  # 6to4 of 127.0.0.1
        ("fe80::1", "a link-local address"),
        ("fd00:ec2::254", "the cloud metadata address"),
    ],
)
def test_address_problem(address: str, expected: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == expected
