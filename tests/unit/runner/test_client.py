"""The platform's client on its own: addresses, and a runner that is not there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from forge.runner import RunnerClient, RunnerUnavailable, grpc_target


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("unix:/tmp/x/r.sock", "unix:///tmp/x/r.sock"),
        ("unix:///tmp/x/r.sock", "unix:///tmp/x/r.sock"),
        ("tcp:127.0.0.1:5000", "127.0.0.1:5000"),
        ("tcp:[::1]:5000", "[::1]:5000"),
        ("tcp:runner.svc:80", "runner.svc:80"),
    ],
)
def test_grpc_target(address: str, target: str) -> None:
    assert grpc_target(address) == target


@pytest.mark.parametrize(
    "address", ["unix:relative.sock", "tcp:127.0.0.1", "tcp:host:port", "http://x", ""]
)
def test_grpc_target_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        grpc_target(address)


async def test_wait_ready_times_out_when_nobody_listens(tmp_path: Path) -> None:
    client = RunnerClient(f"unix:{tmp_path}/missing.sock")
    with pytest.raises(RunnerUnavailable):
        await client.wait_ready(0.3)
    await client.close()


async def test_connect_fails_when_nobody_listens(tmp_path: Path) -> None:
    client = RunnerClient(f"unix:{tmp_path}/missing.sock")
    with pytest.raises(RunnerUnavailable):
        await asyncio.wait_for(client.connect(), 5)
    await client.close()
