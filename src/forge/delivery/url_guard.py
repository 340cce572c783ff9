"""Which webhook URLs Forge will send to.

A webhook URL is chosen by whoever sends a message, so without a check it would let them make the
platform POST to its own network: loopback services, private addresses, the cloud metadata service.
The check runs when the URL is accepted and again before every delivery, since DNS can change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from forge.config import WebhookSettings
from forge.core.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ERROR_CODE = "invalid_webhook_url"
# Cloud instance metadata services; named separately so the message says what was hit.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
RESOLVE_TIMEOUT_SECONDS = 5.0


class UnresolvableWebhookHost(InvalidRequest):
    """Raised when a webhook URL's host does not resolve. At delivery time this may be a passing
    DNS failure, so the dispatcher retries it instead of failing the delivery."""

    code = ERROR_CODE


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(message, code=ERROR_CODE)


def _parse(url: str) -> tuple[SplitResult, str]:
    """The split URL and its host (lower case, no brackets, no trailing dot), or raise."""
    if not isinstance(url, str) or not url:
        raise _refuse("webhook_url is empty; give an http:// or https:// URL")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise _refuse("webhook_url contains whitespace or control characters; remove them")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise _refuse(f"webhook_url is not a valid URL ({exc}); give an http(s) URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        shown = parts.scheme or "none"
        raise _refuse(f"webhook_url scheme must be http or https, not {shown!r}")
    if parts.username is not None or parts.password is not None:
        raise _refuse(
            "webhook_url must not contain a user name or password; "
            "remove them and use webhook_secret to authenticate deliveries"
        )
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise _refuse("webhook_url has no host; give a URL like https://example.com/hooks")
    return parts, host


def validate_webhook_url_form(url: str) -> None:
    """The checks that need no DNS: scheme, host present, no credentials. Raise `InvalidRequest`."""
    _parse(url)


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


def _is_allowed_host(host: str, settings: WebhookSettings) -> bool:
    host_ip = _literal_ip(host)
    for entry in settings.allowed_hosts:
        allowed = entry.strip().lower().strip("[]").rstrip(".")
        if allowed == host:
            return True
        if host_ip is not None and _literal_ip(allowed) == host_ip:
            return True
    return False


def address_problem(address: IPAddress) -> str | None:
    """Why `address` must not be sent to, or None when it is a public address."""
    if address in METADATA_ADDRESSES:
        return "the cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64:
            # NAT64 maps public IPv4 into IPv6; judge the IPv4 address inside.
            return address_problem(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            inner = address_problem(embedded)
            if inner is not None:
                return inner
    for problem, hit in (
        ("an unspecified address", address.is_unspecified),
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("a multicast address", address.is_multicast),
        ("a private address", address.is_private),
        ("a reserved address", address.is_reserved),
        ("a non-public address", not address.is_global),
    ):
        if hit:
            return problem
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to; DNS runs in a thread, never on the event loop."""
    literal = _literal_ip(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, TimeoutError) as exc:
        raise UnresolvableWebhookHost(
            f"webhook_url host {host!r} does not resolve ({type(exc).__name__}); "
            "check the name or use an address"
        ) from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = _literal_ip(str(sockaddr[0]))
        if address is not None and address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnresolvableWebhookHost(
            f"webhook_url host {host!r} resolves to no address; check the name"
        )
    return addresses


def address_refusal(host: str, address: IPAddress, settings: WebhookSettings) -> str | None:
    """Why `host`, resolved to `address`, must not be connected to, or None when it may be.

    The rule of `check_webhook_url` for one address, for use at connection time (the transport
    calls it on the addresses it actually connects to, so a DNS answer that changes after the
    check cannot lead into the private network).
    """
    if settings.allow_private or _is_allowed_host(host.lower().rstrip("."), settings):
        return None
    problem = address_problem(address)
    if problem is None:
        return None
    return f"{host} resolves to {address}, {problem}"


async def check_webhook_url(url: str, settings: WebhookSettings) -> None:
    """Raise `InvalidRequest` (code `invalid_webhook_url`) unless Forge may POST to `url`.

    Refused: schemes other than http/https, no host, credentials in the URL, names that do not
    resolve, and hosts that resolve to any loopback, private, link-local, multicast, reserved,
    unspecified or cloud metadata address. `settings.allow_private` or the host (name or literal
    address) in `settings.allowed_hosts` lifts the address rule.
    """
    parts, host = _parse(url)
    if _is_allowed_host(host, settings):
        return
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    addresses = await resolve(host, port)
    if settings.allow_private:
        return
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            shown = host if _literal_ip(host) is not None else f"{host} ({address})"
            raise _refuse(
                f"webhook_url host {shown} is {problem}; use a public address, or allow it "
                "with webhooks.allowed_hosts or webhooks.allow_private in the configuration"
            )
