"""`forge import DIR`: move sessions from the file-based store into Forge's database.

Registered on the main app by `register(app)`; kept apart from `cli.py` (and importing nothing of
it) so the command is one file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from forge.config import ConfigError, load_settings
from forge.importer import ImportReport, ImportSourceError, import_sessions
from forge.store.db import Database


def register(app: typer.Typer) -> None:
    """Add the `import` command to `app`."""
    app.command("import")(import_command)


def import_command(
    directory: Annotated[
        Path, typer.Argument(help="The store's directory (the one holding sessions.json).")
    ],
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Path of forge.toml (default: $FORGE_CONFIG)."),
    ] = None,
    owner: Annotated[
        str, typer.Option(help="Owner of sessions whose index entry names none.")
    ] = "default",
    progress_every: Annotated[
        int, typer.Option(min=1, help="Print a progress line every this many sessions.")
    ] = 100,
) -> None:
    """Import sessions and their transcripts from a file-based store (sessions.json and one log
    per session). Sessions imported before are left alone."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        report = asyncio.run(_run(settings.database_url, directory, owner, progress_every))
    except ImportSourceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    _print_report(report)
    if report.skipped:
        raise typer.Exit(1)


async def _run(url: str, directory: Path, owner: str, progress_every: int) -> ImportReport:
    db = Database(url)
    try:
        await db.migrate()
        return await import_sessions(
            db,
            directory,
            owner_default=owner,
            progress=lambda done, total: typer.echo(f"{done}/{total} sessions read"),
            progress_every=progress_every,
        )
    finally:
        await db.close()


def _print_report(report: ImportReport) -> None:
    for skipped in report.skipped:
        typer.echo(f"skipped {skipped.source_id}: {skipped.reason}", err=True)
    runs = sum(s.runs for s in report.imported)
    events = sum(s.events for s in report.imported)
    typer.echo(
        f"imported {len(report.imported)} sessions ({runs} runs, {events} events); "
        f"{len(report.already_imported)} already imported; {len(report.skipped)} skipped; "
        f"{report.total} in {report.directory}"
    )
