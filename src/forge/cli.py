"""The `forge` command: serve the platform, run a runner; run, follow and inspect sessions."""

from __future__ import annotations

import getpass
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from forge import __version__, cli_import
from forge.cli_stream import (
    EventStream,
    StreamError,
    auth_headers,
    history,
    render_event,
    run_exit_code,
)
from forge.config import LOOPBACK_HOSTS, ConfigError, Settings, load_settings

app = typer.Typer(help="Forge: run AI coding agents in isolated workspaces.", no_args_is_help=True)
agents_app = typer.Typer(help="Inspect agents on a running server.", no_args_is_help=True)
sessions_app = typer.Typer(help="List, read and stop sessions.", no_args_is_help=True)
worktrees_app = typer.Typer(help="List and clean up worktrees.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")
app.add_typer(sessions_app, name="sessions")
app.add_typer(worktrees_app, name="worktrees")
keys_app = typer.Typer(
    help="Manage owners' API keys (needs the admin key in FORGE_API_KEY).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
cli_import.register(app)

ConfigOption = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Path of forge.toml (default: $FORGE_CONFIG)."),
]


def _settings(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def version() -> None:
    """Print Forge's version."""
    typer.echo(__version__)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Override [server] host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override [server] port.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Start the Forge server (applies database migrations first)."""
    from sqlalchemy.engine import make_url

    from forge.api.app import run_server
    from forge.core.profiles import ProfileCatalog, ProfileError

    settings = _settings(config)
    try:
        ProfileCatalog(settings)
    except ProfileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log = logging.getLogger("forge")
    if settings.server.mcp_port == settings.server.port:
        typer.echo(
            f"error: the MCP port ([server] mcp_port or MCP_PORT) is {settings.server.port}, the "
            "port Forge's API listens on, which serves MCP at /mcp already. Choose another port "
            "or leave it unset.",
            err=True,
        )
        raise typer.Exit(2)
    auth = settings.auth
    if auth.enabled:
        log.info(
            "authentication is on: every request needs an API key (admin key %s)",
            "set" if auth.admin_key else "not set: set FORGE_API_KEY to manage keys",
        )
    elif settings.server.host not in LOOPBACK_HOSTS:
        if not settings.server.allow_remote_without_auth:
            typer.echo(
                f"error: authentication is off, so Forge listens on 127.0.0.1 only, not on "
                f"{settings.server.host}. Turn it on ([auth] enabled = true or "
                "FORGE_AUTH_ENABLED=true, with keys from `forge keys create`) or, if something "
                "in front of Forge authenticates, set [server] allow_remote_without_auth = true.",
                err=True,
            )
            raise typer.Exit(2)
        log.warning(
            "authentication is off and Forge listens on %s: anyone who can reach this port can "
            "run commands through Forge",
            settings.server.host,
        )
    else:
        log.warning(
            "authentication is off: Forge listens on %s only; anything on this machine that "
            "can reach it, agents in sandboxes with the host's network included, can use the API",
            settings.server.host,
        )
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    log.info("data directory: %s; database: %s", settings.data_dir, database)
    run_server(settings, log_level=log_level)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def runner(ctx: typer.Context) -> None:
    """Run the in-sandbox runner (started by the platform; see `forge runner --help`)."""
    from forge.runner.server import main as runner_main

    raise typer.Exit(runner_main(list(ctx.args)))


def _base_url(config: str | None, base_url: str | None) -> str:
    if base_url:
        return base_url.rstrip("/")
    if os.environ.get("FORGE_BASE_URL"):
        return os.environ["FORGE_BASE_URL"].rstrip("/")
    return _settings(config).base_url


def _request(
    method: str,
    url: str,
    params: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    """One request; a server that cannot be reached, or answers an error, ends the command
    with `error: <code>: <message>` and exit code 1."""
    try:
        response = httpx.request(
            method, url, params=params, json=body, headers=auth_headers(), timeout=30
        )
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach Forge at {url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if response.status_code >= 400:
        try:
            error = response.json()
            typer.echo(f"error: {error.get('error')}: {error.get('message')}", err=True)
        except ValueError:
            typer.echo(f"error: HTTP {response.status_code}", err=True)
        raise typer.Exit(1)
    return response


def _get(url: str, params: dict[str, Any] | None = None) -> Any:
    return _request("GET", url, params).json()


def _post(url: str, body: dict[str, Any] | None = None) -> Any:
    return _request("POST", url, body=body).json()


def _delete(url: str, params: dict[str, Any] | None = None) -> Any:
    return _request("DELETE", url, params).json()


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Rows of cells, the first one the header, in aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


BaseUrlOption = Annotated[
    str | None, typer.Option(help="Server URL (default: $FORGE_BASE_URL, else from the config).")
]


@agents_app.command("list")
def agents_list(
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
    user_id: Annotated[str | None, typer.Option(help="Only this owner's agents.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List agents, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if user_id:
        params["user_id"] = user_id
    data = _get(f"{_base_url(config, base_url)}/api/v1/agents", params)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    rows = [("ID", "OWNER", "PROFILE", "STATUS", "EVENTS", "CREATED")]
    for agent in data["agents"]:
        rows.append(
            (
                agent["id"],
                agent["owner_id"],
                agent["profile"],
                agent["status"],
                str(agent["last_seq"]),
                agent["created_at"][:19],
            )
        )
    _print_table(rows)
    typer.echo(f"{len(data['agents'])} of {data['total']} agents")


@agents_app.command("show")
def agents_show(
    agent_id: str,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Show one agent as JSON."""
    data = _get(f"{_base_url(config, base_url)}/api/v1/agents/{agent_id}")
    typer.echo(json.dumps(data, indent=2))


# ---- running and following sessions ------------------------------------------------------------

SESSION_FILE = Path(".forge") / "session"

BackgroundOption = Annotated[
    bool, typer.Option("--background", help="Print the session id and return at once.")
]


def _git_toplevel(path: Path) -> Path | None:
    """The top of the git repository containing `path`, if any."""
    try:
        result = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def _write_session_file(repo: Path, base: str, session_id: str) -> Path:
    """Remember the session in `<repo>/.forge/session`, for `forge resume` without an id."""
    path = repo / SESSION_FILE
    path.parent.mkdir(exist_ok=True)
    # The directory is Forge's bookkeeping, not the project's: keep it out of `git status`.
    ignore = path.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    record = {
        "session_id": session_id,
        "url": base,
        "dashboard_url": f"{base}/sessions/{session_id}",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _session_from_file() -> str:
    repo = _git_toplevel(Path.cwd())
    if repo is None:
        typer.echo("error: no session id given and not inside a git repository", err=True)
        raise typer.Exit(2)
    path = repo / SESSION_FILE
    try:
        session_id = json.loads(path.read_text())["session_id"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        typer.echo(f"error: no session id given and no usable {path}: {exc}", err=True)
        raise typer.Exit(2) from exc
    return str(session_id)


def _follow_run(base: str, session_id: str, request_id: str, after: int) -> int:
    """Print the events of run `request_id` live until its final event; its exit code."""
    typer.echo(typer.style(f"session {session_id}  (forge logs -f {session_id})", dim=True))
    try:
        for envelope in EventStream(base, session_id, after):
            if envelope.get("request_id") != request_id:
                continue
            _print_event(envelope)
            if envelope.get("is_final"):
                return run_exit_code(envelope)
    except StreamError as exc:
        typer.echo(f"error: {exc.code}: {exc.message}", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo(f"\ndetached; the session goes on: forge logs -f {session_id}", err=True)
        return 130
    typer.echo("error: the stream ended before the run did", err=True)
    return 1


def _print_event(envelope: dict[str, Any]) -> None:
    line = render_event(envelope)
    if line is not None:
        typer.echo(line)


def _default_owner() -> str | None:
    """$FORGE_OWNER; else, with an API key, None (an owner's key decides for itself); else the
    login name."""
    if os.environ.get("FORGE_OWNER"):
        return os.environ["FORGE_OWNER"]
    if auth_headers():
        return None
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # No login name (a container without a passwd entry).
        typer.echo("error: no --owner given, $FORGE_OWNER is unset and no login name", err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    profile: Annotated[str, typer.Argument(help="The profile to run (see forge.toml).")],
    prompt: Annotated[str, typer.Argument(help="What the agent should do.")],
    repo: Annotated[
        Path | None,
        typer.Option(help="Repository to work on (default: the one containing the cwd)."),
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option(
            help="Owner id (default: $FORGE_OWNER; else your key's owner with FORGE_API_KEY, "
            "or your login without)."
        ),
    ] = None,
    priority: Annotated[int, typer.Option(min=-1000, max=1000, help="Higher runs first.")] = 0,
    title: Annotated[str | None, typer.Option(help="Default: the prompt's first line.")] = None,
    base_branch: Annotated[str | None, typer.Option(help="Branch to start from.")] = None,
    background: BackgroundOption = False,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Start a task in a new session and follow it (exit code 0 if it succeeded)."""
    base = _base_url(config, base_url)
    here = _git_toplevel(Path.cwd())
    work_repo = repo.resolve() if repo is not None else here
    body: dict[str, Any] = {
        "title": title or prompt.strip().splitlines()[0][:80] or "task",
        "prompt": prompt,
        "owner_id": owner or _default_owner(),
        "profile": profile,
        "repo": str(work_repo) if work_repo is not None else None,
        "base_branch": base_branch,
        "priority": priority,
    }
    task = _post(f"{base}/api/v1/tasks", body)
    session_id = task["session_id"]
    if here is not None:
        _write_session_file(here, base, session_id)
    if background:
        typer.echo(session_id)
        return
    raise typer.Exit(_follow_run(base, session_id, task["request_id"], after=0))


@app.command()
def resume(
    arguments: Annotated[
        list[str], typer.Argument(metavar="[SESSION_ID] PROMPT", help="Default id: .forge/session.")
    ],
    background: BackgroundOption = False,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Send the next message to a session and follow its run."""
    if len(arguments) not in (1, 2):
        typer.echo("error: expected [SESSION_ID] PROMPT", err=True)
        raise typer.Exit(2)
    session_id = arguments[0] if len(arguments) == 2 else _session_from_file()
    base = _base_url(config, base_url)
    after = _get(f"{base}/api/v1/agents/{session_id}")["last_seq"]
    accepted = _post(f"{base}/api/v1/sessions/{session_id}/resume", {"prompt": arguments[-1]})
    if background:
        typer.echo(session_id)
        return
    raise typer.Exit(_follow_run(base, session_id, accepted["request_id"], after=after))


@app.command()
def logs(
    session_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")
    ] = False,
    after: Annotated[int, typer.Option(min=0, help="Start after this seq.")] = 0,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Print a session's events (its history; with -f, then live)."""
    base = _base_url(config, base_url)
    try:
        events = (
            EventStream(base, session_id, after) if follow else history(base, session_id, after)
        )
        for envelope in events:
            _print_event(envelope)
    except StreamError as exc:
        typer.echo(f"error: {exc.code}: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def talk(
    neuron: Annotated[str, typer.Argument(help="The neuron to talk to (wish, forge, ...).")],
    project: Annotated[
        Path | None, typer.Option(help="Repository the neuron works in (default: none).")
    ] = None,
    message: Annotated[
        str | None,
        typer.Option("--message", "-m", help="Send this one message, print the reply, exit."),
    ] = None,
    owner: Annotated[
        str | None, typer.Option(help="Whose neuron (default: as for `forge run`).")
    ] = None,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Talk to a neuron: each line is a message; its thinking, tools and reply show live."""
    from forge.cli_talk import talk as talk_to

    where = str(project.resolve()) if project is not None else None
    base = _base_url(config, base_url)
    raise typer.Exit(
        talk_to(base, neuron, project=where, owner=owner or _default_owner(), message=message)
    )


# ---- server status -----------------------------------------------------------------------------

ACTIVE_STATUSES = ("running", "queued", "provisioning")


@app.command()
def status(config: ConfigOption = None, base_url: BaseUrlOption = None) -> None:
    """The server's health, its active sessions and its queue."""
    base = _base_url(config, base_url)
    health = _get(f"{base}/health")
    typer.echo(
        f"Forge {health['version']} at {base}: {health['status']} "
        f"(up {_duration(health['uptime_s'])}, database {health['database'].get('status')}, "
        f"sandbox {health.get('sandbox', {}).get('runtime', '?')})"
    )
    rows: list[tuple[str, ...]] = [("SESSION", "STATUS", "PROFILE", "OWNER", "REPO")]
    counts = []
    for name in ACTIVE_STATUSES:
        page = _get(f"{base}/api/v1/sessions", {"status": name, "limit": 20})
        counts.append(f"{page['total']} {name}")
        if name != "provisioning":
            rows.extend(
                (s["id"], s["status"], s["profile"], s["owner_id"], s["repo"] or "-")
                for s in page["sessions"]
            )
    typer.echo("sessions: " + ", ".join(counts))
    if len(rows) > 1:
        _print_table(rows)
    queued = [
        t for t in _get(f"{base}/api/v1/tasks", {"limit": 500})["tasks"] if t["status"] == "queued"
    ]
    typer.echo(f"queue: {len(queued)} task(s) waiting")
    queued.sort(key=lambda t: t["queue_position"] or 0)
    if queued:
        _print_table(
            [("POS", "TASK", "SESSION", "PRIORITY", "TITLE")]
            + [
                (
                    str(t["queue_position"]),
                    t["task_id"],
                    t["session_id"],
                    str(t["priority"]),
                    t["title"],
                )
                for t in queued
            ]
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@app.command("mcp")
def mcp_stdio(
    owner: Annotated[
        str | None,
        typer.Option(
            help="Owner of new tasks, and whose neurons, when a tool call names none (default: "
            "$FORGE_OWNER; else your key's owner with FORGE_API_KEY, or your login without)."
        ),
    ] = None,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Serve MCP over stdio for a local client (Claude Code, an IDE...): its tools act on the
    running Forge server, with the key in FORGE_API_KEY. See docs/mcp.md."""
    import asyncio

    from forge.mcp.stdio import serve_stdio

    base = _base_url(config, base_url)
    default_owner = owner or _default_owner()
    # stdout carries the protocol: anything logged goes to stderr.
    logging.basicConfig(level=logging.WARNING, format="forge mcp: %(levelname)s %(message)s")
    asyncio.run(serve_stdio(base, auth_headers(), default_owner=default_owner))


# ---- sessions ----------------------------------------------------------------------------------


@sessions_app.command("list")
def sessions_list(
    status: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    profile: Annotated[str | None, typer.Option(help="Only this profile.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """List sessions, newest first."""
    params: dict[str, Any] = {"limit": limit, "status": status, "profile": profile}
    params = {k: v for k, v in params.items() if v is not None}
    data = _get(f"{_base_url(config, base_url)}/api/v1/sessions", params)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    rows: list[tuple[str, ...]] = [("ID", "STATUS", "PROFILE", "OWNER", "RUNS", "CREATED")]
    rows.extend(
        (s["id"], s["status"], s["profile"], s["owner_id"], str(s["runs"]), s["created_at"][:19])
        for s in data["sessions"]
    )
    _print_table(rows)
    typer.echo(f"{len(data['sessions'])} of {data['total']} sessions")


@sessions_app.command("show")
def sessions_show(
    session_id: str, config: ConfigOption = None, base_url: BaseUrlOption = None
) -> None:
    """Show one session as JSON."""
    data = _get(f"{_base_url(config, base_url)}/api/v1/sessions/{session_id}")
    typer.echo(json.dumps(data, indent=2))


@sessions_app.command("transcript")
def sessions_transcript(
    session_id: str,
    format: Annotated[str, typer.Option(help="markdown or json.")] = "markdown",
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Print a session's transcript."""
    url = f"{_base_url(config, base_url)}/api/v1/sessions/{session_id}/transcript"
    response = _request("GET", url, {"format": format})
    if format == "json":
        typer.echo(json.dumps(response.json(), indent=2))
    else:
        typer.echo(response.text.rstrip("\n"))


@sessions_app.command("stop")
def sessions_stop(
    session_id: str, config: ConfigOption = None, base_url: BaseUrlOption = None
) -> None:
    """Stop a session: interrupt its run, end queued ones, remove its sandbox."""
    data = _post(f"{_base_url(config, base_url)}/api/v1/sessions/{session_id}/stop")
    typer.echo(f"{data['id']}: {data['status']}")


# ---- worktrees ---------------------------------------------------------------------------------


@worktrees_app.command("list")
def worktrees_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """List the directories under the worktree base."""
    data = _get(f"{_base_url(config, base_url)}/api/v1/worktrees")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    rows: list[tuple[str, ...]] = [("SESSION", "KIND", "STATUS", "SIZE", "AGE", "PATH")]
    rows.extend(
        (
            w["session"] or "-",
            w["kind"],
            w["status"] or "-",
            _size(w["size_bytes"]),
            _duration(w["age_seconds"]),
            w["path"],
        )
        for w in data["worktrees"]
    )
    _print_table(rows)
    typer.echo(
        f"{data['count']} of {data['max_worktrees'] or 'unlimited'} worktrees, "
        f"{_size(data['total_size_bytes'])}"
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@worktrees_app.command("cleanup")
def worktrees_cleanup(
    older_than_hours: Annotated[
        float | None,
        typer.Option(min=0, help="Default: the server's [worktrees] cleanup_hours; 0: all."),
    ] = None,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Remove the worktrees of finished sessions (branches are kept) and prune git metadata."""
    params = {} if older_than_hours is None else {"older_than_hours": older_than_hours}
    report = _delete(f"{_base_url(config, base_url)}/api/v1/worktrees/cleanup", params)
    for item in report["removed"]:
        typer.echo(f"removed {item['path']} ({item['reason']}, {item['session'] or 'orphan'})")
    for item in report["pruned"]:
        typer.echo(f"pruned {item['repo']}: {item['entry']} ({item['reason']})")
    for error in report["errors"]:
        typer.echo(f"error: {error}", err=True)
    typer.echo(f"{len(report['removed'])} removed, {len(report['pruned'])} pruned")
    if report["errors"]:
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="forge")


if __name__ == "__main__":
    main()


@keys_app.command("create")
def keys_create(
    owner: Annotated[str, typer.Option(help="The owner the key acts for.")],
    name: Annotated[str, typer.Option(help="A label: who or what uses the key.")] = "",
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Make a key for OWNER and print it (only now: the server keeps a hash)."""
    key = _post(f"{_base_url(config, base_url)}/api/v1/keys", {"owner_id": owner, "name": name})
    typer.echo(
        f"created {key['key_id']} for {key['owner_id']}; the key (shown only now):", err=True
    )
    typer.echo(key["key"])


@keys_app.command("list")
def keys_list(
    owner: Annotated[str | None, typer.Option(help="Only this owner's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """List the keys (never the keys themselves), newest first."""
    params = {"owner_id": owner} if owner else None
    data = _get(f"{_base_url(config, base_url)}/api/v1/keys", params)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    rows: list[tuple[str, ...]] = [("KEY", "OWNER", "NAME", "CREATED", "REVOKED")]
    rows.extend(
        (
            k["key_id"],
            k["owner_id"],
            k["name"] or "-",
            k["created_at"][:19],
            (k["revoked_at"] or "-")[:19],
        )
        for k in data["keys"]
    )
    _print_table(rows)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...), from `forge keys list`.")],
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Revoke a key: requests with it are refused from now on."""
    key = _delete(f"{_base_url(config, base_url)}/api/v1/keys/{key_id}")
    typer.echo(f"revoked {key['key_id']} ({key['owner_id']})")
