"""Where the test setup installed the real agent CLIs (`scripts/install-agent-clis`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI_BIN = REPO / "tools" / "agent-clis" / "node_modules" / ".bin"


def cli_path(name: str) -> str:
    """The installed CLI's path; the test is skipped, saying why, when it is not installed."""
    path = CLI_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"the {name} CLI is not installed: run scripts/install-agent-clis")
