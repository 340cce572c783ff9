"""The `forge` command: serve the platform, run a runner, inspect agents."""

from __future__ import annotations

import json
import logging
import os
from typing import Annotated, Any

import httpx
import typer

from forge import __version__
from forge.config import ConfigError, Settings, load_settings

app = typer.Typer(help="Forge: run AI coding agents in isolated workspaces.", no_args_is_help=True)
agents_app = typer.Typer(help="Inspect agents on a running server.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")

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
    if settings.server.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s without authentication: anyone who can reach this port can run "
            "commands through Forge",
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


def _get(url: str, params: dict[str, Any] | None = None) -> Any:
    try:
        response = httpx.get(url, params=params, timeout=30)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach Forge at {url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if response.status_code >= 400:
        try:
            body = response.json()
            typer.echo(f"error: {body.get('error')}: {body.get('message')}", err=True)
        except ValueError:
            typer.echo(f"error: HTTP {response.status_code}", err=True)
        raise typer.Exit(1)
    return response.json()


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
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
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


def main() -> None:
    app(prog_name="forge")


if __name__ == "__main__":
    main()
