"""How the runner packs its messages into stream writes (`PlatformConnection.next_batch`)."""

from __future__ import annotations

import asyncio

from forge.runner.proto import runner_pb2
from forge.runner.server import Outbox, PlatformConnection


def event(text: str = "x") -> runner_pb2.RunnerMessage:
    return runner_pb2.RunnerMessage(
        request_id="req_1", event=runner_pb2.Event(executor="command", raw_json=text)
    )


def queued(outbox: Outbox, connection: PlatformConnection, count: int, text: str = "x") -> None:
    for _ in range(count):
        message = event(text)
        outbox.append(message)
        connection.send(message)


def seqs(batch: runner_pb2.RunnerBatch | None) -> list[int]:
    assert batch is not None
    return [message.runner_seq for message in batch.messages]


async def test_a_lone_message_is_written_at_once() -> None:
    outbox = Outbox()
    connection = PlatformConnection(outbox)
    queued(outbox, connection, 1)
    batch = await asyncio.wait_for(connection.next_batch(), 1)
    assert seqs(batch) == [1]

    # The next batch waits for the next message, however long it takes.
    waiting = asyncio.create_task(connection.next_batch())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    queued(outbox, connection, 1)
    assert seqs(await asyncio.wait_for(waiting, 1)) == [2]


async def test_what_is_queued_goes_in_batches_bounded_by_count() -> None:
    outbox = Outbox()
    connection = PlatformConnection(outbox, max_messages=1000)
    queued(outbox, connection, 2500)
    connection.send(runner_pb2.RunnerMessage(state=runner_pb2.State(status="idle")))
    connection.close()

    batches = [await connection.next_batch() for _ in range(3)]
    assert [len(seqs(batch)) for batch in batches] == [1000, 1000, 501]
    flat = [seq for batch in batches for seq in seqs(batch)]
    assert flat == [*range(1, 2501), 0]  # in order, the State last
    assert await connection.next_batch() is None
    assert await connection.next_batch() is None  # and stays ended


async def test_batches_are_bounded_by_size_but_never_empty() -> None:
    outbox = Outbox()
    connection = PlatformConnection(outbox, max_bytes=1000)
    queued(outbox, connection, 5, text="y" * 300)  # ~ 320 bytes each: three fit
    queued(outbox, connection, 1, text="z" * 5000)  # alone larger than the bound
    queued(outbox, connection, 2)
    connection.close()

    sizes = []
    batches = []
    while (batch := await connection.next_batch()) is not None:
        batches.append(seqs(batch))
        sizes.append(batch.ByteSize())
    assert batches == [[1, 2, 3], [4, 5], [6], [7, 8]]
    assert all(size <= 1000 for size in sizes[:2] + sizes[3:])


async def test_messages_acknowledged_while_queued_are_not_written() -> None:
    outbox = Outbox()
    connection = PlatformConnection(outbox)
    queued(outbox, connection, 10)
    outbox.ack(7)  # e.g. by a resume_after on a newer stream
    connection.send(runner_pb2.RunnerMessage(state=runner_pb2.State(status="idle")))
    assert seqs(await connection.next_batch()) == [8, 9, 10, 0]
