"""Identifiers: a prefix and 26 characters that sort by creation time.

The 128 bits are 48 bits of milliseconds then 80 random bits, written in base32 with Crockford's
alphabet in lower case (whose order matches the values'), so later ids sort after earlier ones.
"""

from __future__ import annotations

import base64
import os
import re
import time

# RFC 4648 base32 letters for the values 0..31, and Crockford's for the same values.
_RFC4648 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_CROCKFORD = b"0123456789abcdefghjkmnpqrstvwxyz"
_TO_CROCKFORD = bytes.maketrans(_RFC4648, _CROCKFORD)


def new_id(prefix: str) -> str:
    """`<prefix>_` + 26 characters; ids made later sort after ids made earlier."""
    millis = int(time.time() * 1000) & ((1 << 48) - 1)
    raw = millis.to_bytes(6, "big") + os.urandom(10)
    # 16 bytes are 26 base32 characters and 6 padding characters.
    return f"{prefix}_{base64.b32encode(raw)[:26].translate(_TO_CROCKFORD).decode()}"


AGENT_ID = re.compile(r"^ag_[0-9a-z]{26}$")


def agent_id() -> str:
    return new_id("ag")


def request_id() -> str:
    return new_id("req")


def event_id() -> str:
    return new_id("evt")


def delivery_id() -> str:
    return new_id("dlv")


def task_id() -> str:
    return new_id("tk")
