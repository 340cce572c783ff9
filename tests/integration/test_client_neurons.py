"""`neuron_stream` of both clients against a real server: each keeps the neuron's state document
by applying the operations (`forge.patch`), resumes across a server restart without a second
snapshot, and ends with the server's document and version; an unknown neuron is a 404."""

from __future__ import annotations

import asyncio
import json
import queue
import shlex
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from forge.client import (
    AsyncForgeClient,
    AsyncNeuronStream,
    ForgeClient,
    NeuronFrame,
    NeuronStream,
    NotFoundError,
)
from forge.patch import apply_operation
from tests.integration.conftest import ForgeServer

pytestmark = pytest.mark.integration

OWNER = "alice"
# Thinks, then waits for the test (a `go` file in its workspace) before answering.
WAITER = "; ".join(
    [
        "cat > /dev/null",
        "printf '%s\\n' "
        + shlex.quote(json.dumps({"entry": {"kind": "thinking", "text": "waiting for go"}})),
        "while [ ! -f go ]; do sleep 0.05; done",
        "echo answered",
    ]
)
FRAME_TIMEOUT_SECONDS = 30.0


def _server(forge_server: Callable[..., ForgeServer], tmp_path: Path) -> ForgeServer:
    folder = tmp_path / "neurons"
    folder.mkdir()
    (folder / "waiter.md").write_text(
        "---\nname: waiter\ndescription: Waits\nforge_profile_name: waiter\n---\nYou wait.\n"
    )
    config = (
        f"\n[neurons]\ndirs = [{json.dumps(str(folder))}]\nexamples = false\n"
        f'\n[profiles.waiter]\nexecutor = "command"\ncommand = {json.dumps(WAITER)}\n'
    )
    return forge_server(extra_config=config)


class Document:
    """The neuron's document as a client keeps it: the last snapshot, with each operation
    applied after it."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {}
        self.version = -1

    def apply(self, frame: NeuronFrame) -> bool:
        """Apply `frame`; whether the document is now at the end of an event."""
        if frame.is_snapshot:
            self.doc = frame.data
        else:
            assert frame.version == self.version + 1, (frame, self.version)
            doc = apply_operation(self.doc, frame.data)
            assert isinstance(doc, dict)
            self.doc = doc
        self.version = frame.version
        return frame.is_snapshot or frame.data["path"] == "/seq"


def _go(server: ForgeServer, agent_id: str) -> None:
    agent = server.http.get(f"/api/v1/agents/{agent_id}").json()
    (Path(agent["workspace_path"]) / "go").write_text("")


def _server_state(server: ForgeServer) -> dict[str, Any]:
    response = server.http.get("/api/v1/neurons/waiter", params={"user_id": OWNER})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _working(doc: dict[str, Any]) -> bool:
    return doc.get("status") == "working" and doc.get("thinking") == "waiting for go"


def _answered(doc: dict[str, Any]) -> bool:
    return doc.get("status") == "idle" and doc.get("outcome") is not None


def test_the_sync_stream_resumes_across_a_restart_and_resyncs_from_another_thread(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    server = _server(forge_server, tmp_path)
    with ForgeClient(server.base_url) as client:
        with pytest.raises(NotFoundError) as unknown:
            next(iter(client.neuron_stream("nobody", user_id=OWNER)))
        assert unknown.value.status_code == 404

        stream = client.neuron_stream("waiter", user_id=OWNER)
        # Read in a thread, as an application with a UI would; resync() and close() come from
        # this one.
        frames: queue.Queue[NeuronFrame | BaseException] = queue.Queue()
        reader = threading.Thread(target=_read, args=(stream, frames), daemon=True)
        reader.start()
        document = Document()

        def until(done: Callable[[dict[str, Any]], bool]) -> None:
            while True:
                item = frames.get(timeout=FRAME_TIMEOUT_SECONDS)
                if isinstance(item, BaseException):
                    raise item
                if (
                    item.generation == stream.generation
                    and document.apply(item)
                    and done(document.doc)
                ):
                    return

        until(lambda doc: True)
        assert document.version == 0 and stream.agent_id == document.doc["agent_id"]
        client.message_neuron("waiter", "hello", user_id=OWNER)
        until(_working)

        server.stop()
        server.start()
        _go(server, document.doc["agent_id"])
        until(_answered)
        assert stream.snapshots == 1 and stream.resumes >= 1

        state = _server_state(server)
        assert document.doc == state["state"] and document.version == state["version"]
        assert stream.version == state["version"] and stream.fold is not None
        assert [m["role"] for m in document.doc["messages"]] == ["user", "assistant"]

        # resync() from this thread while the reader waits: the next frame is a snapshot.
        stream.resync()
        item = frames.get(timeout=FRAME_TIMEOUT_SECONDS)
        assert isinstance(item, NeuronFrame) and item.is_snapshot and item.generation == 1
        assert item.data == state["state"] and stream.snapshots == 2

        stream.close()
        reader.join(timeout=10)
        assert not reader.is_alive()


def _read(stream: NeuronStream, frames: queue.Queue[NeuronFrame | BaseException]) -> None:
    try:
        for frame in stream:
            frames.put(frame)
    except BaseException as exc:  # handed to the test's thread
        frames.put(exc)


async def test_the_async_stream_resumes_across_a_restart(
    forge_server: Callable[..., ForgeServer], tmp_path: Path
) -> None:
    server = await asyncio.to_thread(_server, forge_server, tmp_path)
    async with AsyncForgeClient(server.base_url) as client:
        with pytest.raises(NotFoundError):
            async for _ in client.neuron_stream("nobody", user_id=OWNER):
                pass

        stream = client.neuron_stream("waiter", user_id=OWNER)
        document = Document()

        async def until(done: Callable[[dict[str, Any]], bool], frames: AsyncNeuronStream) -> None:
            iterator = aiter(frames)
            while True:
                frame = await asyncio.wait_for(anext(iterator), FRAME_TIMEOUT_SECONDS)
                if document.apply(frame) and done(document.doc):
                    return

        await until(lambda doc: True, stream)
        assert document.version == 0
        await client.message_neuron("waiter", "hello", user_id=OWNER)
        await until(_working, stream)

        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        await asyncio.to_thread(_go, server, document.doc["agent_id"])
        await until(_answered, stream)
        assert stream.snapshots == 1 and stream.resumes >= 1

        state = await asyncio.to_thread(_server_state, server)
        assert document.doc == state["state"] and document.version == state["version"]
        assert stream.agent_id == document.doc["agent_id"] == state["agent_id"]
        await stream.aclose()
