"""Forge's configuration: one pydantic-settings model from `forge.toml` and `FORGE_*` variables.

Precedence, highest first: arguments given in code, `FORGE_*` environment variables (nested with
`__`, e.g. `FORGE_SERVER__PORT=9000`), the TOML file (`--config` or `FORGE_CONFIG`), defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

APP_NAME = "forge"


def default_data_dir() -> Path:
    """Where Forge keeps its database, worktrees and runner state unless told otherwise."""
    override = os.environ.get("FORGE_DATA_DIR")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_data_dir(APP_NAME))


class ServerSettings(BaseModel):
    """`[server]`: where the HTTP API listens."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8887, ge=0, le=65535)
    # Also serve MCP (`/mcp` alone) on this port, same host; also `MCP_PORT`, which wins.
    mcp_port: int | None = Field(default=None, ge=1, le=65535)
    # Without authentication Forge refuses to listen beyond loopback; set this to listen anyway
    # (behind a proxy that authenticates, say).
    allow_remote_without_auth: bool = False


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# An admin key shorter than this is refused: it must not be guessable.
MIN_ADMIN_KEY_CHARS = 24


class AuthSettings(BaseModel):
    """`[auth]`: API keys. `enabled` is also `FORGE_AUTH_ENABLED`; the admin key comes from the
    environment, `FORGE_API_KEY` (keep it out of files)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    admin_key: SecretStr | None = Field(default=None, exclude=True)
    # Requests each key may make per minute (0 = no limit), refilled evenly; `rate_limit_burst`
    # is how many may come at once.
    rate_limit_per_minute: int = Field(default=1200, ge=0, le=1_000_000)
    rate_limit_burst: int = Field(default=200, ge=1, le=1_000_000)
    # Wrong or revoked keys one client address may present a minute (each costs a database
    # read), after a first burst; beyond, 429.
    failed_auth_per_minute: int = Field(default=30, ge=1, le=1_000_000)
    failed_auth_burst: int = Field(default=20, ge=1, le=1_000_000)
    # How long a checked key is trusted before the database is asked again; a revocation made
    # on another replica takes effect within this time (at once on the replica that made it).
    key_cache_seconds: float = Field(default=10.0, ge=0, le=3600)
    # Signs the dashboard's session cookies. Unset: derived from the admin key (so every replica
    # agrees), else a random secret per process (sessions then end with a restart and do not
    # span replicas). Like the admin key, keep it out of files: FORGE_AUTH__SESSION_SECRET.
    session_secret: SecretStr | None = Field(default=None, exclude=True)
    # The cookie's `Secure` attribute: None sets it when the sign-in came over https, true
    # always (behind a proxy that ends TLS), false never.
    secure_cookies: bool | None = None
    # Origins besides the server's own that the dashboard may act from, e.g.
    # "https://forge.example.com" behind a proxy that terminates TLS or changes the Host header.
    dashboard_origins: list[str] = Field(default_factory=list)

    @field_validator("session_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            value = SecretStr(value.get_secret_value().strip())
            if len(value.get_secret_value()) < MIN_ADMIN_KEY_CHARS:
                raise ValueError(
                    f"[auth] session_secret must be at least {MIN_ADMIN_KEY_CHARS} characters; "
                    "make one with `openssl rand -hex 32`"
                )
        return value

    @field_validator("admin_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            # A key from a file or a Secret often ends with a newline no client sends.
            value = SecretStr(value.get_secret_value().strip())
        if value is not None and len(value.get_secret_value()) < MIN_ADMIN_KEY_CHARS:
            raise ValueError(
                f"FORGE_API_KEY must be at least {MIN_ADMIN_KEY_CHARS} characters; "
                "make one with `openssl rand -hex 32`"
            )
        return value


class DatabaseSettings(BaseModel):
    """`[database]`: the state store. Empty `url` means a SQLite file in the data directory."""

    model_config = ConfigDict(extra="forbid")

    # `sqlite:///path/forge.db` or `postgresql://user:password@host:5432/database` (`postgres://`
    # too); the async driver (aiosqlite, asyncpg) is chosen here. Several replicas need PostgreSQL.
    url: str = ""
    # PostgreSQL: connections kept open per process (SQLite ignores the pool settings).
    pool_size: int = Field(default=10, ge=1)
    # PostgreSQL: how long a request waits for a free connection before failing.
    pool_timeout_seconds: float = Field(default=30.0, gt=0)
    # PostgreSQL: a connection older than this is replaced, before a proxy or firewall between
    # Forge and the server drops it idle (-1: never).
    max_lifetime_seconds: float = Field(default=1800.0, ge=-1)

    @field_validator("url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value:
            return value
        # Imported here: the settings are read by processes that never open the database.
        from forge.store.db import normalize_url

        return normalize_url(value)


class WorktreeSettings(BaseModel):
    """`[worktrees]`: where agent workspaces are created. Empty means `<data_dir>/worktrees`."""

    model_config = ConfigDict(extra="forbid")

    base_path: str = ""
    # `DELETE /worktrees/cleanup` removes the worktrees of stopped (or deleted) sessions whose
    # last activity is older than this many hours.
    cleanup_hours: float = Field(default=72.0, ge=0)
    # Creating an agent with a repository is refused (409) while this many worktrees exist
    # (0 = no limit).
    max_worktrees: int = Field(default=200, ge=0)
    # Directories agents' repositories must be under (empty: anywhere on the host but Forge's
    # own data). Set it when owners should not name each other's, or any, repositories.
    allowed_repo_roots: list[str] = Field(default_factory=list)


class ClusterSettings(BaseModel):
    """`[cluster]`: several replicas over one PostgreSQL database (see docs/deploy.md)."""

    model_config = ConfigDict(extra="forbid")

    # A replica owns the agents it supervises for this long and renews them every third of it;
    # when a replica dies, another adopts its agents (and their running runs) once it lapses.
    lease_seconds: float = Field(default=15.0, ge=1.0, le=600.0)
    # This replica's name in the database ("" = host name, process id and a random suffix).
    replica_id: str = Field(default="", max_length=96)


class SessionSettings(BaseModel):
    """`[sessions]`: limits on runs."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent: int = Field(default=8, ge=1)
    # Runs one owner may have executing at once, across the server (0 = only max_concurrent).
    max_concurrent_per_owner: int = Field(default=0, ge=0)
    # A session ready with nothing to do this long is stopped: its sandbox goes, its workspace
    # and the executor's conversation stay, and the next message continues it (0 = never).
    idle_stop_seconds: float = Field(default=1800.0, ge=0)
    # 0 disables the per-run timeout.
    timeout_seconds: int = Field(default=3600, ge=0)
    default_profile: str = "default"
    # How long an interrupted executor gets between SIGINT, SIGTERM and SIGKILL.
    interrupt_grace_seconds: float = Field(default=3.0, gt=0)


NetworkMode = Literal["none", "host"]


class SandboxLimitSettings(BaseModel):
    """`[sandbox.limits]`: what one sandbox may use. 0 means no limit of that kind."""

    model_config = ConfigDict(extra="forbid")

    # Processes and threads at once (cgroup pids, else RLIMIT_NPROC): contains a fork bomb.
    processes: int = Field(default=1024, ge=0)
    # Memory of the whole sandbox (cgroup memory; RLIMIT_AS per process where no cgroup works).
    memory_mb: int = Field(default=4096, ge=0)
    # CPU seconds one process may use (RLIMIT_CPU).
    cpu_seconds: int = Field(default=0, ge=0)
    # Share of CPUs for the whole sandbox (cgroup CPU quota; 1.5 = one and a half cores).
    cpus: float = Field(default=0, ge=0)
    # Largest file a process may write (RLIMIT_FSIZE).
    file_size_mb: int = Field(default=1024, ge=0)
    # Open files per process (RLIMIT_NOFILE).
    open_files: int = Field(default=4096, ge=0)


class BwrapSettings(BaseModel):
    """`[sandbox.bwrap]`: the bubblewrap runtime."""

    model_config = ConfigDict(extra="forbid")

    # The bwrap program ("" = `bwrap` on PATH).
    command: str = ""
    # The user and group id processes have inside the sandbox (cosmetic: files of the workspace
    # look owned by them).
    uid: int = Field(default=1000, ge=1)
    gid: int = Field(default=1000, ge=1)
    # Use cgroups (v2, else v1) for the memory, process and CPU limits when Forge may create
    # them; rlimits apply in any case.
    cgroups: bool = True


class DockerSettings(BaseModel):
    """`[sandbox.docker]`: one container per agent through the Docker Engine API (podman's
    Docker-compatible socket works too)."""

    model_config = ConfigDict(extra="forbid")

    # Engine address ("" = DOCKER_HOST, else the default socket), e.g.
    # unix:///run/podman/podman.sock.
    base_url: str = ""
    # Image with Python and Forge installed (deploy/runner.Dockerfile, or for tests and
    # development scripts/build-runner-image).
    image: str = "forge-runner:latest"
    # uid[:gid] (numeric) the runner runs as inside the container: never root.
    user: str = "1000:1000"
    # Development: a Forge source tree (the directory holding the `forge` package) bind-mounted
    # read-only and put first on PYTHONPATH, so an image need not be rebuilt for each change.
    forge_source: str = ""
    # The Python interpreter inside the image (/opt/forge/venv/bin/python in the one
    # scripts/build-runner-image makes).
    python: str = "python3"


class KubernetesSettings(BaseModel):
    """`[sandbox.kubernetes]`: one pod per agent."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "forge"
    image: str = "forge-runner:latest"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # "" = in-cluster configuration when running in a pod, else ~/.kube/config.
    kubeconfig: str = ""
    # The workspace volume: "" = an emptyDir; else the name of a PersistentVolumeClaim shared
    # with Forge, mounted with the agent's worktree path (relative to the worktree base) as
    # subPath.
    workspace_claim: str = ""
    service_account: str = ""
    runner_port: int = Field(default=7070, ge=1, le=65535)
    # Resource requests (limits come from `[sandbox.limits]`).
    cpu_request: str = "250m"
    memory_request: str = "256Mi"
    # Executor credentials from Secrets, by reference: environment name -> "secret-name/key".
    secret_env: dict[str, str] = Field(default_factory=dict)
    # Extra labels on every pod.
    labels: dict[str, str] = Field(default_factory=dict)


class WarmPoolSettings(BaseModel):
    """One `[[sandbox.warm_pool]]` entry: sandboxes kept started for agents of `profile`, with
    an empty workspace, or with a worktree of `repo` (its top directory) at `base_ref`."""

    model_config = ConfigDict(extra="forbid")

    profile: str = "default"
    size: int = Field(default=1, ge=1, le=64)
    repo: str = ""
    base_ref: str = "HEAD"

    @model_validator(mode="after")
    def _absolute_repo(self) -> WarmPoolSettings:
        if self.repo and not Path(self.repo).is_absolute():
            raise ValueError(f"sandbox.warm_pool repo must be an absolute path, got {self.repo!r}")
        return self


class SandboxSettings(BaseModel):
    """`[sandbox]`: where runners live."""

    model_config = ConfigDict(extra="forbid")

    # auto = bwrap on Linux when bubblewrap works here, else local (with a warning).
    runtime: Literal["auto", "local", "bwrap", "docker", "kubernetes"] = "auto"
    # Seconds to wait for a new runner to accept connections.
    start_timeout_seconds: float = Field(default=20.0, gt=0)
    # A runner alive but unreachable this long is given up: its run ends with RUNNER_LOST.
    unreachable_timeout_seconds: float = Field(default=60.0, gt=0)
    # Network of a sandbox unless its profile says otherwise: `host` (the host's network) or
    # `none` (loopback only, nothing reaches out).
    network: NetworkMode = "host"
    # Host paths made visible read-only inside `bwrap` sandboxes, besides the system, Python and
    # Forge itself (for example where agent CLIs are installed).
    read_only_paths: list[str] = Field(default_factory=list)
    limits: SandboxLimitSettings = Field(default_factory=SandboxLimitSettings)
    # Seconds between sweeps for containers or pods (docker, kubernetes) whose agent no longer
    # exists (0 = never).
    orphan_sweep_seconds: float = Field(default=300.0, ge=0)
    # Sandboxes started ahead of time: creating a matching agent takes one (see WarmPoolSettings).
    warm_pool: list[WarmPoolSettings] = Field(default_factory=list)
    bwrap: BwrapSettings = Field(default_factory=BwrapSettings)
    docker: DockerSettings = Field(default_factory=DockerSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)


class AgentFileSettings(BaseModel):
    """`[agent_files]`: Markdown agent files (YAML front matter + the role's instructions), read
    as profiles at start. Empty `dir` means `<data_dir>/agents`."""

    model_config = ConfigDict(extra="forbid")

    dir: str = ""


class NeuronSettings(BaseModel):
    """`[neurons]`: the named, long-lived agents (docs/neurons.md). Definitions are Markdown
    files (YAML front matter + the neuron's instructions) read at start from `dirs`, in order,
    a later file winning on the same name; relative folders are taken from the directory
    `forge serve` starts in (the project). The four examples Forge ships come first unless
    `examples` is false."""

    model_config = ConfigDict(extra="forbid")

    dirs: list[str] = Field(default_factory=lambda: [".genie/neurons", ".forge/neurons"])
    examples: bool = True


class AttachmentSettings(BaseModel):
    """`[attachments]`: files sent with messages."""

    model_config = ConfigDict(extra="forbid")

    max_files: int = Field(default=10, ge=0, le=20)
    max_file_bytes: int = Field(default=10 * 1024 * 1024, ge=1, le=25 * 1024 * 1024)
    # At most 48 MiB: a run and its attachments travel to the runner as one 64 MiB gRPC message.
    max_total_bytes: int = Field(default=25 * 1024 * 1024, ge=1, le=48 * 1024 * 1024)


class WebhookSettings(BaseModel):
    """`[webhooks]`: delivery of events to applications."""

    model_config = ConfigDict(extra="forbid")

    # The first attempt is immediate; these are the seconds to wait before each retry (5 s,
    # 5 min, 30 min, 2 h, 5 h, 10 h, 10 h). The delivery is given up (`exhausted`) after the last.
    retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    # Each wait is multiplied by a random factor in [1 - jitter, 1 + jitter].
    jitter: float = Field(default=0.2, ge=0, le=1)
    timeout_seconds: float = Field(default=10.0, gt=0)
    # Allow URLs that resolve to loopback, private or link-local addresses.
    allow_private: bool = False
    # Hosts (names or IP addresses) allowed even when they are private.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Deliveries attempted at once across all endpoints.
    max_in_flight: int = Field(default=64, ge=1)
    # Deliveries attempted at once to one endpoint URL, so a slow or stalled endpoint cannot take
    # every slot. At most `max_in_flight`; when not given it is 16, or `max_in_flight` if smaller.
    max_in_flight_per_endpoint: int = Field(default=16, ge=1)
    # Longest honoured Retry-After, in seconds.
    max_retry_after_seconds: float = Field(default=36000, ge=0)
    # Circuit breaker per endpoint URL (across all its agents): after this many consecutive
    # retryable failures (timeouts, refused connections, 408, 429, 5xx) the endpoint's deliveries
    # are paused, not attempted and not using up retries. 0 turns the breaker off.
    circuit_failure_threshold: int = Field(default=5, ge=0)
    # The first pause, in seconds; each further failure (of the one probe sent when a pause
    # ends) doubles it, up to `circuit_max_open_seconds`.
    circuit_open_seconds: float = Field(default=30.0, gt=0)
    circuit_max_open_seconds: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _circuit_pauses_in_order(self) -> WebhookSettings:
        if self.circuit_max_open_seconds < self.circuit_open_seconds:
            raise ValueError(
                "webhooks.circuit_max_open_seconds must be at least webhooks.circuit_open_seconds"
            )
        return self

    @model_validator(mode="after")
    def _per_endpoint_limit_within_the_total(self) -> WebhookSettings:
        if self.max_in_flight_per_endpoint <= self.max_in_flight:
            return self
        if "max_in_flight_per_endpoint" in self.model_fields_set:
            raise ValueError(
                "webhooks.max_in_flight_per_endpoint must be at most webhooks.max_in_flight"
            )
        # The default follows a smaller max_in_flight rather than refusing it.
        self.max_in_flight_per_endpoint = self.max_in_flight
        return self


class WebSocketSettings(BaseModel):
    """`[websocket]`: the live event stream `WS /api/v1/agents/{id}/stream`."""

    model_config = ConfigDict(extra="forbid")

    # Seconds between pings; a client that does not answer within `ping_timeout_seconds` is
    # disconnected. 0 turns pings off.
    ping_interval_seconds: float = Field(default=20.0, ge=0)
    ping_timeout_seconds: float = Field(default=20.0, gt=0)
    # Largest message a client may send, in bytes (clients only ever need to send small ones).
    max_message_size: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # permessage-deflate, when the client offers it.
    compression: bool = True
    # A client that takes longer than this to accept one frame (its socket buffers are full: it
    # stopped reading) is closed with code 4008, to resume later with `after=`.
    send_timeout_seconds: float = Field(default=30.0, gt=0)


class SseSettings(BaseModel):
    """`[sse]`: the Server-Sent Events stream (`GET .../events`, `Accept: text/event-stream`)."""

    model_config = ConfigDict(extra="forbid")

    # Seconds of silence after which a `: keep-alive` comment is sent, so proxies and load
    # balancers do not close an idle stream.
    keepalive_seconds: float = Field(default=15.0, gt=0, le=3600)


class SecretSettings(BaseModel):
    """`[secrets]`: values replaced with `[redacted]` in events, transcripts and runner logs.

    Always redacted, without being named here: every `env` value of `[executors.KIND.VARIANT]`,
    `[profiles.NAME]` and agent files, the executors' credential variables in Forge's own
    environment (`ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, ...), `FORGE_API_KEY`, `[auth]
    session_secret` and the database URL's password. Values shorter than 8 characters are never
    redacted (see docs/security.md).
    """

    model_config = ConfigDict(extra="forbid")

    # Names of further variables of Forge's environment whose values are secret.
    redact_env: list[str] = Field(default_factory=list)


PermissionModeSetting = Literal["bypass", "accept_edits", "ask"]


class ExecutorVariantSettings(BaseModel):
    """`[executors.KIND.VARIANT]` (e.g. `[executors.CLAUDE_CODE.DEFAULT]`): how one executor kind
    runs in one variant. Profiles name an executor and a variant and may override each field."""

    model_config = ConfigDict(extra="forbid")

    # `command` executor: the shell command line. Agent CLIs: the program to launch (with
    # arguments) instead of the CLI found on PATH.
    command: str = ""
    # The model ("" = the executor's default).
    model: str = ""
    # bypass | accept_edits | ask; None = bypass unless a variant says otherwise.
    permission_mode: PermissionModeSetting | None = None
    # Seconds an `ask` request waits for an answer before it counts as denied.
    permission_timeout_seconds: int | None = Field(default=None, ge=1, le=86_400)
    # Text added after every message's prompt (instructions for the role).
    append_prompt: str = ""
    # Extra command-line arguments for the agent CLI.
    additional_params: list[str] = Field(default_factory=list)
    # Extra environment for the executor's process alone (credentials, endpoints).
    env: dict[str, str] = Field(default_factory=dict)
    # Executor-specific settings, passed through as they are.
    settings: dict[str, Any] = Field(default_factory=dict)


class ProfileSettings(ExecutorVariantSettings):
    """`[profiles.NAME]`: a named role an agent runs as."""

    executor: str = "command"
    variant: str = "DEFAULT"
    description: str = ""
    # The sandbox's network (None = `[sandbox] network`).
    network: NetworkMode | None = None
    # Shell command run in the sandbox, in the workspace, before the agent's first message
    # (`npm ci`, `uv sync`). Without one, a repository's committed `.forge/setup.sh` is run.
    setup_script: str = ""

    @model_validator(mode="after")
    def _command_needed(self) -> ProfileSettings:
        if self.executor == "command" and not self.command.strip():
            raise ValueError("a profile with executor = 'command' needs a non-empty `command`")
        return self


def builtin_profiles() -> dict[str, ProfileSettings]:
    # `default` echoes the message back, so a fresh install does something visible.
    return {"default": ProfileSettings(executor="command", command="cat", description="Echo")}


class Settings(BaseSettings):
    """All of Forge's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="FORGE_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    worktrees: WorktreeSettings = Field(default_factory=WorktreeSettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    attachments: AttachmentSettings = Field(default_factory=AttachmentSettings)
    websocket: WebSocketSettings = Field(default_factory=WebSocketSettings)
    sse: SseSettings = Field(default_factory=SseSettings)
    secrets: SecretSettings = Field(default_factory=SecretSettings)
    profiles: dict[str, ProfileSettings] = Field(default_factory=builtin_profiles)
    # `[executors.KIND.VARIANT]`, KIND in upper case (CLAUDE_CODE, OPENCODE, CODEX, GEMINI,
    # FORGE, COMMAND).
    executors: dict[str, dict[str, ExecutorVariantSettings]] = Field(default_factory=dict)
    agent_files: AgentFileSettings = Field(default_factory=AgentFileSettings)
    neurons: NeuronSettings = Field(default_factory=NeuronSettings)

    @model_validator(mode="before")
    @classmethod
    def _auth_from_environment(cls, data: Any) -> Any:
        # The documented short names, FORGE_AUTH_ENABLED and FORGE_API_KEY, rather than the
        # nested FORGE_AUTH__ENABLED; like every environment variable they win over the file.
        if not isinstance(data, dict):
            return data
        enabled = os.environ.get("FORGE_AUTH_ENABLED")
        key = os.environ.get("FORGE_API_KEY")
        if enabled is None and not key:
            return data
        auth = data.get("auth")
        auth = dict(auth) if isinstance(auth, dict) else {}
        if enabled is not None:
            auth["enabled"] = enabled
        if key:
            auth["admin_key"] = key
        return {**data, "auth": auth}

    @model_validator(mode="before")
    @classmethod
    def _mcp_port_from_environment(cls, data: Any) -> Any:
        # `MCP_PORT`, the name MCP deployments know, rather than FORGE_SERVER__MCP_PORT; like
        # every environment variable it wins over the file.
        value = os.environ.get("MCP_PORT", "").strip()
        if not value or not isinstance(data, dict):
            return data
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise ValueError(f"MCP_PORT={value!r} is not a port number (1-65535)")
        server = data.get("server")
        if isinstance(server, ServerSettings):
            server = server.model_dump()
        server = dict(server) if isinstance(server, dict) else {}
        return {**data, "server": {**server, "mcp_port": int(value)}}

    @field_validator("profiles", mode="after")
    @classmethod
    def _keep_builtin_default(cls, value: dict[str, ProfileSettings]) -> dict[str, ProfileSettings]:
        merged = builtin_profiles()
        merged.update(value)
        return merged

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = _config_path_from_env()
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    # ---- derived paths ---------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{self.data_dir / 'forge.db'}"

    @property
    def worktree_base(self) -> Path:
        if self.worktrees.base_path:
            return Path(self.worktrees.base_path).expanduser()
        return self.data_dir / "worktrees"

    @property
    def agent_files_dir(self) -> Path:
        if self.agent_files.dir:
            return Path(self.agent_files.dir).expanduser()
        return self.data_dir / "agents"

    @property
    def runner_state_dir(self) -> Path:
        return self.data_dir / "runners"

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.server.host in ("0.0.0.0", "::", "") else self.server.host
        return f"http://{host}:{self.server.port}"


class ConfigError(Exception):
    """Raised when the configuration file is missing or invalid."""


def _config_path_from_env() -> Path | None:
    raw = os.environ.get("FORGE_CONFIG")
    if not raw:
        return None
    return Path(raw).expanduser()


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the settings; `config_file` wins over `FORGE_CONFIG`."""
    if config_file is not None:
        os.environ["FORGE_CONFIG"] = str(config_file)
    path = _config_path_from_env()
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return Settings(**overrides)
    except ValueError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}: {exc}") from exc
