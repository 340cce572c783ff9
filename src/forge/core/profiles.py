"""Profiles: the named roles agents run as (from `[profiles.NAME]` in forge.toml, for now)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from forge.config import Settings
from forge.core.errors import InvalidRequest


@dataclass(frozen=True)
class Profile:
    """What the runner needs to execute a run for an agent of this profile."""

    name: str
    executor: str
    command: str = ""
    env: dict[str, str] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def settings_json(self) -> str:
        return json.dumps(self.settings)


class ProfileCatalog:
    """Looks profiles up by name."""

    def __init__(self, settings: Settings) -> None:
        self._default = settings.sessions.default_profile
        self._profiles = {
            name: Profile(name=name, executor=p.executor, command=p.command, env=dict(p.env))
            for name, p in settings.profiles.items()
        }

    def names(self) -> list[str]:
        return sorted(self._profiles)

    def get(self, name: str | None) -> Profile:
        """The named profile (the default one for None); `InvalidRequest` if there is none."""
        wanted = name or self._default
        profile = self._profiles.get(wanted)
        if profile is None:
            known = ", ".join(self.names()) or "none"
            raise InvalidRequest(
                f"unknown profile {wanted!r}; configured profiles: {known}", code="unknown_profile"
            )
        return profile
