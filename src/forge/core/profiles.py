"""Profiles: the named roles agents run as.

A profile names an executor kind and a variant and may override the variant's settings. They
come from three places, later ones winning on the same name:

1. `[executors.KIND.VARIANT]` in forge.toml: how a kind runs in a variant (`DEFAULT` always
   exists); an agent created with `executor` + `variant` instead of a profile uses it directly.
2. Markdown agent files (`agents_dir`, `*.md`): YAML front matter with `name`, `description`,
   `executor`, `variant`, `model` (and `permission_mode`), the body as the role's instructions.
3. `[profiles.NAME]` in forge.toml.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from forge.config import ExecutorVariantSettings, ProfileSettings, Settings, builtin_profiles
from forge.core.errors import InvalidRequest
from forge.executors import EXECUTOR_CLASSES, executor_class
from forge.executors.base import PermissionMode

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "DEFAULT"
BUILTIN_DEFAULT = builtin_profiles()["default"]


class ProfileError(Exception):
    """The configured profiles are inconsistent (unknown executor kind, ...)."""


@dataclass(frozen=True)
class Profile:
    """What the runner needs to execute a run for an agent of this profile."""

    name: str
    executor: str
    variant: str = DEFAULT_VARIANT
    command: str = ""
    model: str = ""
    permission_mode: PermissionMode = "bypass"
    permission_timeout_seconds: int | None = None
    append_prompt: str = ""
    additional_params: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # The sandbox's network: "none" or "host" (None = `[sandbox] network`).
    network: str | None = None
    # Run in the sandbox before the first message (see ProfileSettings).
    setup_script: str = ""
    # Where it was defined: "builtin", "forge.toml", "executors", or the Markdown file's path.
    source: str = "forge.toml"

    def executor_settings(self) -> dict[str, Any]:
        """The settings object the executor gets (`RunContext.settings`)."""
        merged = dict(self.settings)
        if self.executor != "command" and self.command:
            merged["command"] = self.command
        if self.append_prompt:
            merged["append_prompt"] = self.append_prompt
        if self.additional_params:
            merged["additional_params"] = list(self.additional_params)
        return merged

    @property
    def settings_json(self) -> str:
        return json.dumps(self.executor_settings())

    def credentials(self, parent: dict[str, str] | None = None) -> dict[str, str]:
        """The executor's environment: the credentials its kind reads, from the platform's
        environment, under the profile's own `env` (which wins). Nothing else of the platform's
        environment reaches it."""
        source = os.environ if parent is None else parent
        try:
            names = executor_class(self.executor).credential_env
        except Exception:
            names = ()
        env = {name: source[name] for name in names if source.get(name)}
        env.update(self.env)
        return env


class ProfileCatalog:
    """Looks profiles up by name, or by executor and variant."""

    def __init__(self, settings: Settings) -> None:
        self._default = settings.sessions.default_profile
        self._variants: dict[tuple[str, str], ExecutorVariantSettings] = {}
        for kind_key, variants in settings.executors.items():
            kind = kind_key.lower()
            _check_kind(kind, f"[executors.{kind_key}]")
            for variant, variant_settings in variants.items():
                self._variants[(kind, variant.upper())] = variant_settings
        self._profiles: dict[str, Profile] = {}
        for path, profile_settings in _agent_files(settings.agent_files_dir):
            name = profile_settings.pop("name")
            try:
                self._add(name, profile_settings, source=str(path))
            except ProfileError as exc:
                # One broken file must not take the others (or the server) down.
                log.warning("skipping agent file %s: %s", path, exc)
        for name, configured in settings.profiles.items():
            if name in self._profiles and configured == BUILTIN_DEFAULT:
                continue  # an agent file defines its own `default`
            source = "builtin" if configured == BUILTIN_DEFAULT else "forge.toml"
            self._add(name, configured.model_dump(exclude_unset=True), source=source)

    def _add(self, name: str, fields: dict[str, Any], *, source: str) -> None:
        try:
            configured = ProfileSettings.model_validate(fields)
        except ValueError as exc:
            raise ProfileError(f"profile {name!r} ({source}) is invalid: {exc}") from exc
        _check_kind(configured.executor, f"profile {name!r} ({source})")
        base = self._variant_profile(configured.executor, configured.variant.upper(), name)
        overrides = configured.model_dump(exclude_unset=True, exclude={"executor", "variant"})
        if "additional_params" in overrides:
            overrides["additional_params"] = tuple(overrides["additional_params"])
        if overrides.get("permission_mode") is None:
            overrides.pop("permission_mode", None)
        self._profiles[name] = replace(base, **overrides, source=source)

    def _variant_profile(self, executor: str, variant: str, name: str) -> Profile:
        configured = self._variants.get((executor, variant))
        if configured is None:
            return Profile(name=name, executor=executor, variant=variant, source="executors")
        return Profile(
            name=name,
            executor=executor,
            variant=variant,
            command=configured.command,
            model=configured.model,
            permission_mode=configured.permission_mode or "bypass",
            permission_timeout_seconds=configured.permission_timeout_seconds,
            append_prompt=configured.append_prompt,
            additional_params=tuple(configured.additional_params),
            env=dict(configured.env),
            settings=dict(configured.settings),
            source="executors",
        )

    def register(self, profile: Profile) -> None:
        """Add (or replace) a profile made elsewhere (a neuron's)."""
        self._profiles[profile.name] = profile

    def names(self) -> list[str]:
        return sorted(self._profiles)

    def all(self) -> list[Profile]:
        return [self._profiles[name] for name in self.names()]

    def kinds(self) -> list[str]:
        return sorted(EXECUTOR_CLASSES)

    def variants(self, executor: str) -> list[str]:
        """The variants of an executor kind (`DEFAULT` always exists)."""
        found = {variant for kind, variant in self._variants if kind == executor}
        return sorted(found | {DEFAULT_VARIANT})

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

    def for_executor(self, executor: str, variant: str | None) -> Profile:
        """The profile of `[executors.KIND.VARIANT]`; `InvalidRequest` naming what exists."""
        kind = executor.lower()
        if kind not in EXECUTOR_CLASSES:
            known = ", ".join(sorted(EXECUTOR_CLASSES))
            raise InvalidRequest(
                f"unknown executor {executor!r}; executors: {known}", code="unknown_executor"
            )
        wanted = (variant or DEFAULT_VARIANT).upper()
        if wanted not in self.variants(kind):
            known = ", ".join(self.variants(kind))
            raise InvalidRequest(
                f"unknown variant {variant!r} of executor {kind!r}; variants: {known}",
                code="unknown_variant",
            )
        return self._variant_profile(kind, wanted, f"{kind}:{wanted}")

    def resolve(
        self,
        profile: str | None = None,
        executor: str | None = None,
        variant: str | None = None,
    ) -> Profile:
        """What an agent runs as: a named profile, or an executor and variant."""
        if executor is not None:
            if profile is not None:
                raise InvalidRequest(
                    "give either `profile` or `executor` (+ `variant`), not both",
                    code="invalid_request",
                )
            return self.for_executor(executor, variant)
        if variant is not None:
            raise InvalidRequest("`variant` needs `executor`", code="invalid_request")
        return self.get(profile)

    def check_runnable(self, profile: Profile) -> None:
        """`InvalidRequest` when the executor cannot honour the profile's permission mode."""
        try:
            cls = executor_class(profile.executor)
        except ImportError as exc:
            raise InvalidRequest(
                f"executor {profile.executor!r} is not available: {exc}", code="unknown_executor"
            ) from exc
        if profile.permission_mode not in cls.permission_modes:
            supported = ", ".join(cls.permission_modes)
            raise InvalidRequest(
                f"executor {profile.executor!r} cannot use permission_mode "
                f"{profile.permission_mode!r}; it supports: {supported}",
                code="unsupported_permission_mode",
            )


def _check_kind(kind: str, where: str) -> None:
    if kind not in EXECUTOR_CLASSES:
        known = ", ".join(sorted(EXECUTOR_CLASSES))
        raise ProfileError(f"{where}: unknown executor {kind!r}; executors: {known}")


def _agent_files(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The profiles of the Markdown agent files in `folder` (missing folder: none)."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.md")):
        try:
            found.append((path, parse_agent_file(path.read_text(encoding="utf-8"), path.stem)))
        except (OSError, ValueError) as exc:
            # One broken file must not take the others (or the server) down.
            log.warning("skipping agent file %s: %s", path, exc)
    return found


AGENT_FILE_KEYS = frozenset(
    {
        "name",
        "description",
        "executor",
        "variant",
        "model",
        "permission_mode",
        "permission_timeout_seconds",
        "command",
        "additional_params",
        "env",
        "settings",
        "network",
        "setup_script",
    }
)


def parse_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """The YAML front matter (a mapping) and the body of a Markdown file; ValueError saying what
    is wrong otherwise."""
    if not text.startswith("---"):
        raise ValueError("it does not start with YAML front matter (a '---' line)")
    parts = text.split("\n---", 1)
    if len(parts) != 2:
        raise ValueError("its front matter has no closing '---' line")
    header, body = parts[0].removeprefix("---"), parts[1]
    body = body.split("\n", 1)[1] if "\n" in body else ""
    try:
        meta = yaml.safe_load(header) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"its front matter is not valid YAML: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError("its front matter must be a mapping")
    return meta, body


def parse_agent_file(text: str, default_name: str) -> dict[str, Any]:
    """Profile fields from a Markdown agent file: front matter + body as `append_prompt`."""
    meta, body = parse_front_matter(text)
    unknown = sorted(set(meta) - AGENT_FILE_KEYS)
    if unknown:
        raise ValueError(f"unknown front matter keys {unknown}; known: {sorted(AGENT_FILE_KEYS)}")
    fields: dict[str, Any] = {key: value for key, value in meta.items() if value is not None}
    fields["name"] = str(fields.get("name") or default_name)
    if "executor" not in fields:
        raise ValueError("its front matter needs `executor`")
    if body.strip():
        fields["append_prompt"] = body.strip()
    return fields
