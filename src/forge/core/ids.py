"""Identifiers: a prefix and 26 characters that sort by creation time (ULID layout)."""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """`<prefix>_` + 10 chars of milliseconds + 16 random chars; later ids sort after earlier."""
    millis = int(time.time() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_encode(millis, 10)}{_encode(rand, 16)}"


AGENT_ID = re.compile(r"^ag_[0-9a-z]{26}$")


def agent_id() -> str:
    return new_id("ag")


def request_id() -> str:
    return new_id("req")


def event_id() -> str:
    return new_id("evt")


def delivery_id() -> str:
    return new_id("dlv")
