"""A session's status is read from its agent and its runs together."""

from __future__ import annotations

from forge.core.sessions import SessionService
from forge.store.db import Database
from forge.store.tables import AgentRow, RunRow


async def test_a_ready_agent_with_a_running_run_is_a_running_session(db: Database) -> None:
    """The scheduler marks a run running a moment before its agent: the session is running
    then, not idle (a caller waiting for `idle` would read a transcript without the run)."""
    async with db.write() as session:
        for agent_id in ("running", "queued", "idle"):
            session.add(
                AgentRow(id=agent_id, owner_id="o", profile="p", executor="command", status="ready")
            )
        await session.flush()
        for agent_id, status in (
            ("running", "running"),
            ("queued", "queued"),
            ("idle", "succeeded"),
        ):
            session.add(
                RunRow(
                    agent_id=agent_id, request_id=f"r-{agent_id}", owner_id="o", prompt="p",
                    body_hash="h", status=status,
                )
            )  # fmt: skip
    sessions = SessionService(db)
    for agent_id in ("running", "queued", "idle"):
        assert (await sessions.get(agent_id, "o")).status == agent_id
        listed = await sessions.list_sessions("o", status=agent_id)  # type: ignore[arg-type]
        assert [s.id for s in listed.sessions] == [agent_id]
