"""Secret values kept out of what Forge stores, sends and logs.

A `SecretRedactor` is built once from the configured secrets (`secret_values`): every value of
an `env` table (`[executors.KIND.VARIANT]`, `[profiles.NAME]`, agent files), the values the
executors' `credential_env` variables have in Forge's environment, `FORGE_API_KEY`, `[auth]
session_secret`, the database URL's password and the variables named in `[secrets]
redact_env`. The event log passes every event through it before the event is stored, so the
database, the streams, webhooks and transcripts never hold one of those values; the runner's log
filter does the same for the runner's log with the credentials of the runs it is given.

Values shorter than `MIN_SECRET_CHARS` are not redacted: `1`, `true` or a short word would be
cut out of ordinary text everywhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from forge.core.events import EventDraft
from forge.executors import EXECUTOR_CLASSES, executor_class

if TYPE_CHECKING:
    from forge.config import Settings
    from forge.core.profiles import ProfileCatalog

# What a secret is replaced with.
REDACTED = "[redacted]"
# Shorter values are not treated as secrets (see the module docstring).
MIN_SECRET_CHARS = 8
# Environment variables of Forge's own process whose values are always secret.
PLATFORM_SECRET_ENV = ("FORGE_API_KEY",)


class SecretRedactor:
    """Replaces known secret values with `REDACTED` in text and in JSON values.

    Each secret is matched as it is and as it reads inside a JSON string (quotes, backslashes,
    control and non-ASCII characters escaped), so a secret the agent printed inside JSON text
    is caught too.
    """

    def __init__(self, values: Iterable[str], *, marker: str = REDACTED) -> None:
        secrets = {value for value in values if len(value) >= MIN_SECRET_CHARS}
        forms: set[str] = set()
        for secret in secrets:
            forms.add(secret)
            forms.add(json.dumps(secret)[1:-1])
            forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
        # Longest first: where one secret contains another, the whole of it goes.
        ordered = sorted(forms, key=lambda form: (-len(form), form))
        self._marker = marker
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        # How each form reads in JSON text Forge wrote (`json.dumps`, ASCII escapes): text
        # holding none of these holds no secret in any of its strings.
        self._needles = tuple(sorted({json.dumps(form)[1:-1] for form in ordered}))
        self.count = len(secrets)

    def __bool__(self) -> bool:
        return self._pattern is not None

    def redact_text(self, text: str) -> str:
        """`text` with every secret replaced."""
        if self._pattern is None:
            return text
        return self._pattern.sub(self._marker, text)

    def redact_value(self, value: Any) -> Any:
        """A copy of a JSON value (nested dicts and lists) with every string redacted, keys too."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {self.redact_text(k): self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_value(item) for item in value]
        return value

    def found_in_json(self, text: str) -> bool:
        """Whether JSON text written by `json.dumps` may hold a secret in one of its strings.

        The fast check made for every event: a few substring searches, no parsing. It may say
        yes for text that holds none (a secret's form spanning an escape); `redact_value` on
        the parsed value is exact.
        """
        return any(needle in text for needle in self._needles)

    def redact_draft(self, draft: EventDraft) -> EventDraft:
        """The draft with every secret replaced in what the agent or executor could write (the
        raw event, the entry, messages, the executor's session id and event type)."""
        changes: dict[str, Any] = {
            "event": self.redact_value(draft.event),
            "entry": self.redact_value(draft.entry),
        }
        for name in ("session_id", "executor_event_type", "status", "message"):
            value = getattr(draft, name)
            if value is not None:
                changes[name] = self.redact_text(value)
        if draft.error is not None:
            changes["error"] = draft.error.model_copy(
                update={"message": self.redact_text(draft.error.message)}
            )
        return draft.model_copy(update=changes)


def secret_values(
    settings: Settings, profiles: ProfileCatalog, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Every configured secret value (see the module docstring), from `environ` (default: the
    process's environment) where it comes from the environment."""
    source = os.environ if environ is None else environ
    values: list[str] = []
    for variants in settings.executors.values():
        for variant in variants.values():
            values += variant.env.values()
    for profile in profiles.all():
        values += profile.env.values()
    # The key that signs dashboard cookies, from the file or the environment.
    if settings.auth.session_secret is not None:
        values.append(settings.auth.session_secret.get_secret_value())
    names = set(PLATFORM_SECRET_ENV) | set(settings.secrets.redact_env)
    for kind in EXECUTOR_CLASSES:
        try:
            names.update(executor_class(kind).credential_env)
        except ImportError:
            continue  # an executor whose optional dependencies are missing cannot run anyway
    values += [source[name] for name in sorted(names) if source.get(name)]
    if settings.database.url:
        try:
            password = urlsplit(settings.database.url).password
        except ValueError:
            password = None
        if password:
            values += [password, unquote(password)]
    return values


class SecretLogFilter(logging.Filter):
    """A logging filter that redacts secrets from log records (message, arguments, traceback).

    Install it on a handler; `add` more secrets as they become known (the runner learns its
    executors' credentials one run at a time).
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        super().__init__()
        self._values: set[str] = set()
        self._redactor = SecretRedactor(())
        self.add(values)

    def add(self, values: Iterable[str]) -> None:
        """Redact `values` too, from now on."""
        fresh = {value for value in values if len(value) >= MIN_SECRET_CHARS} - self._values
        if fresh:
            self._values |= fresh
            self._redactor = SecretRedactor(self._values)

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = self._redactor
        if not redactor:
            return True
        message = record.getMessage()
        redacted = redactor.redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor.redact_text(record.stack_info)
        return True
