"""Rows the event-log tests start from, written straight into a database."""

from __future__ import annotations

from forge.store.db import Database
from forge.store.tables import AgentRow, RunRow


async def agent_with_running_run(
    db: Database,
    *,
    webhook_url: str | None = "http://example.com/hook",
    webhook_secret: str | None = None,
) -> None:
    """Agent `ag_1` (owner `o`) with run `r1` running, its events sent to `webhook_url`
    (signed with `webhook_secret`)."""
    async with db.write() as s:
        s.add(AgentRow(id="ag_1", owner_id="o", profile="p", executor="command", status="ready"))
        await s.flush()
        s.add(
            RunRow(
                agent_id="ag_1",
                request_id="r1",
                owner_id="o",
                prompt="hi",
                body_hash="h",
                status="running",
                webhook_url=webhook_url,
                webhook_secret=webhook_secret,
            )
        )
