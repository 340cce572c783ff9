"""The OpenAPI document a running server publishes is the copy in docs/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.integration.conftest import ForgeServer

PUBLISHED = Path(__file__).parents[2] / "docs" / "openapi.json"


def test_the_server_serves_the_document_published_in_docs(forge_server: Any) -> None:
    server: ForgeServer = forge_server(
        "\n[auth]\nenabled = true\n", env={"FORGE_API_KEY": "a" * 32}
    )
    served = server.http.get("/openapi.json")
    assert served.status_code == 200, served.text  # public, even with auth on
    assert served.json() == json.loads(PUBLISHED.read_text())
