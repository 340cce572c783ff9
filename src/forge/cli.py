"""The `forge` command: serve the platform, run a runner; run, follow and inspect sessions."""

from __future__ import annotations

import getpass
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from pydantic import BaseModel

from forge import __version__, cli_import
from forge.cli_stream import render_event, run_exit_code
from forge.client import ForgeClient, ForgeClientError, resolve_base_url
from forge.client.models import EventEnvelope, SessionStatus
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
    """The server's URL: `--base-url`, else `$FORGE_BASE_URL`, else the config's."""
    url = base_url or os.environ.get("FORGE_BASE_URL") or _settings(config).base_url
    try:
        return resolve_base_url(url)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@contextmanager
def _client(config: str | None, base_url: str | None) -> Iterator[ForgeClient]:
    """The client of the server the command talks to, with the key in `$FORGE_API_KEY`. Any
    error it raises (no answer, or an error answer) ends the command with
    `error: <code>: <message>` and exit code 1."""
    client = ForgeClient(_base_url(config, base_url))
    try:
        with client:
            yield client
    except ForgeClientError as exc:
        typer.echo(f"error: {exc.code}: {exc.message}", err=True)
        raise typer.Exit(1) from exc


def _print_json(model: BaseModel) -> None:
    typer.echo(json.dumps(model.model_dump(mode="json"), indent=2))


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
    with _client(config, base_url) as client:
        page = client.list_agents(user_id=user_id or None, limit=limit)
    if as_json:
        _print_json(page)
        return
    rows = [("ID", "OWNER", "PROFILE", "STATUS", "EVENTS", "CREATED")]
    rows.extend(
        (a.id, a.owner_id, a.profile, a.status, str(a.last_seq), _time(a.created_at))
        for a in page.agents
    )
    _print_table(rows)
    typer.echo(f"{len(page.agents)} of {page.total} agents")


def _time(moment: datetime | None) -> str:
    """A time as the table shows it: ISO 8601 to the second, `-` for none."""
    return moment.isoformat()[:19] if moment is not None else "-"


@agents_app.command("show")
def agents_show(
    agent_id: str,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Show one agent as JSON."""
    with _client(config, base_url) as client:
        _print_json(client.get_agent(agent_id))


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


def _follow_run(client: ForgeClient, session_id: str, request_id: str, after: int) -> int:
    """Print the events of run `request_id` live until its final event; its exit code."""
    typer.echo(typer.style(f"session {session_id}  (forge logs -f {session_id})", dim=True))
    try:
        with client.stream(session_id, after=after, request_id=request_id) as events:
            for event in events:
                _print_event(event)
                if event.is_final:
                    return run_exit_code(event)
    except KeyboardInterrupt:
        typer.echo(f"\ndetached; the session goes on: forge logs -f {session_id}", err=True)
        return 130
    typer.echo("error: the stream ended before the run did", err=True)
    return 1


def _print_event(event: EventEnvelope) -> None:
    line = render_event(event)
    if line is not None:
        typer.echo(line)


def _default_owner() -> str | None:
    """$FORGE_OWNER; else, with an API key, None (an owner's key decides for itself); else the
    login name."""
    if os.environ.get("FORGE_OWNER"):
        return os.environ["FORGE_OWNER"]
    if os.environ.get("FORGE_API_KEY", "").strip():
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
    here = _git_toplevel(Path.cwd())
    work_repo = repo.resolve() if repo is not None else here
    fields: dict[str, Any] = {
        "title": title or prompt.strip().splitlines()[0][:80] or "task",
        "prompt": prompt,
        "owner_id": owner or _default_owner(),
        "profile": profile,
        "repo": str(work_repo) if work_repo is not None else None,
        "base_branch": base_branch,
        "priority": priority,
    }
    with _client(config, base_url) as client:
        task = client.create_task(**{k: v for k, v in fields.items() if v is not None})
        if here is not None:
            _write_session_file(here, client.base_url, task.session_id)
        if background:
            typer.echo(task.session_id)
            return
        code = _follow_run(client, task.session_id, task.request_id, after=0)
    raise typer.Exit(code)


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
    with _client(config, base_url) as client:
        after = client.get_agent(session_id).last_seq
        accepted = client.resume_session(session_id, arguments[-1])
        if background:
            typer.echo(session_id)
            return
        code = _follow_run(client, session_id, accepted.request_id, after=after)
    raise typer.Exit(code)


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
    with _client(config, base_url) as client:
        try:
            if follow:
                with client.stream(session_id, after=after) as stream:
                    for event in stream:
                        _print_event(event)
            else:
                for event in client.iter_events(session_id, after=after):
                    _print_event(event)
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

ACTIVE_STATUSES: tuple[SessionStatus, ...] = ("running", "queued", "provisioning")


@app.command()
def status(config: ConfigOption = None, base_url: BaseUrlOption = None) -> None:
    """The server's health, its active sessions and its queue."""
    with _client(config, base_url) as client:
        health = client.health()
        typer.echo(
            f"Forge {health.version} at {client.base_url}: {health.status} "
            f"(up {_duration(health.uptime_s)}, database {health.database.get('status')}, "
            f"sandbox {health.sandbox.get('runtime', '?')})"
        )
        rows: list[tuple[str, ...]] = [("SESSION", "STATUS", "PROFILE", "OWNER", "REPO")]
        counts = []
        for name in ACTIVE_STATUSES:
            page = client.list_sessions(status=name, limit=20)
            counts.append(f"{page.total} {name}")
            if name != "provisioning":
                rows.extend(
                    (s.id, s.status, s.profile, s.owner_id, s.repo or "-") for s in page.sessions
                )
        typer.echo("sessions: " + ", ".join(counts))
        if len(rows) > 1:
            _print_table(rows)
        queued = [t for t in client.list_tasks(limit=500).tasks if t.status == "queued"]
    typer.echo(f"queue: {len(queued)} task(s) waiting")
    queued.sort(key=lambda t: t.queue_position or 0)
    if queued:
        _print_table(
            [("POS", "TASK", "SESSION", "PRIORITY", "TITLE")]
            + [
                (str(t.queue_position), t.task_id, t.session_id, str(t.priority), t.title)
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
    asyncio.run(serve_stdio(base, default_owner=default_owner))


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
    with _client(config, base_url) as client:
        # The server checks the status (and names the ones it knows).
        page = client.list_sessions(
            status=cast("SessionStatus | None", status), profile=profile, limit=limit
        )
    if as_json:
        _print_json(page)
        return
    rows: list[tuple[str, ...]] = [("ID", "STATUS", "PROFILE", "OWNER", "RUNS", "CREATED")]
    rows.extend(
        (s.id, s.status, s.profile, s.owner_id, str(s.runs), _time(s.created_at))
        for s in page.sessions
    )
    _print_table(rows)
    typer.echo(f"{len(page.sessions)} of {page.total} sessions")


@sessions_app.command("show")
def sessions_show(
    session_id: str, config: ConfigOption = None, base_url: BaseUrlOption = None
) -> None:
    """Show one session as JSON."""
    with _client(config, base_url) as client:
        _print_json(client.get_session(session_id))


@sessions_app.command("transcript")
def sessions_transcript(
    session_id: str,
    format: Annotated[str, typer.Option(help="markdown or json.")] = "markdown",
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Print a session's transcript."""
    if format not in ("markdown", "json"):
        typer.echo(f"error: --format is markdown or json, not {format!r}", err=True)
        raise typer.Exit(2)
    with _client(config, base_url) as client:
        if format == "json":
            _print_json(client.transcript(session_id))
        else:
            typer.echo(client.transcript_markdown(session_id).rstrip("\n"))


@sessions_app.command("stop")
def sessions_stop(
    session_id: str, config: ConfigOption = None, base_url: BaseUrlOption = None
) -> None:
    """Stop a session: interrupt its run, end queued ones, remove its sandbox."""
    with _client(config, base_url) as client:
        session = client.stop_session(session_id)
    typer.echo(f"{session.id}: {session.status}")


# ---- worktrees ---------------------------------------------------------------------------------


@worktrees_app.command("list")
def worktrees_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """List the directories under the worktree base."""
    with _client(config, base_url) as client:
        listing = client.list_worktrees()
    if as_json:
        _print_json(listing)
        return
    rows: list[tuple[str, ...]] = [("SESSION", "KIND", "STATUS", "SIZE", "AGE", "PATH")]
    rows.extend(
        (
            w.session or "-",
            w.kind,
            w.status or "-",
            _size(w.size_bytes),
            _duration(w.age_seconds),
            w.path,
        )
        for w in listing.worktrees
    )
    _print_table(rows)
    typer.echo(
        f"{listing.count} of {listing.max_worktrees or 'unlimited'} worktrees, "
        f"{_size(listing.total_size_bytes)}"
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
    with _client(config, base_url) as client:
        report = client.cleanup_worktrees(older_than_hours=older_than_hours)
    for removed in report.removed:
        typer.echo(f"removed {removed.path} ({removed.reason}, {removed.session or 'orphan'})")
    for pruned in report.pruned:
        typer.echo(f"pruned {pruned.repo}: {pruned.entry} ({pruned.reason})")
    for error in report.errors:
        typer.echo(f"error: {error}", err=True)
    typer.echo(f"{len(report.removed)} removed, {len(report.pruned)} pruned")
    if report.errors:
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
    with _client(config, base_url) as client:
        key = client.create_key(owner, name=name)
    typer.echo(f"created {key.key_id} for {key.owner_id}; the key (shown only now):", err=True)
    typer.echo(key.key)


@keys_app.command("list")
def keys_list(
    owner: Annotated[str | None, typer.Option(help="Only this owner's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """List the keys (never the keys themselves), newest first."""
    with _client(config, base_url) as client:
        keys = client.list_keys(owner_id=owner or None)
    if as_json:
        _print_json(keys)
        return
    rows: list[tuple[str, ...]] = [("KEY", "OWNER", "NAME", "CREATED", "REVOKED")]
    rows.extend(
        (k.key_id, k.owner_id, k.name or "-", _time(k.created_at), _time(k.revoked_at))
        for k in keys.keys
    )
    _print_table(rows)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...), from `forge keys list`.")],
    config: ConfigOption = None,
    base_url: BaseUrlOption = None,
) -> None:
    """Revoke a key: requests with it are refused from now on."""
    with _client(config, base_url) as client:
        key = client.revoke_key(key_id)
    typer.echo(f"revoked {key.key_id} ({key.owner_id})")
