"""The OpenAPI document describes every public route (clients and fuzzers are built from it)."""

from __future__ import annotations

from pathlib import Path

from forge.api.app import create_app
from forge.api.openapi import openapi_document, render
from forge.config import Settings


def test_openapi_lists_the_routes_and_their_errors(tmp_path: Path) -> None:
    document = create_app(Settings(data_dir=tmp_path)).openapi()
    paths = document["paths"]
    expected = {
        "/api/v1/agents": {"get", "post"},
        "/api/v1/agents/{agent_id}": {"get", "delete"},
        "/api/v1/agents/{agent_id}/messages": {"post"},
        "/api/v1/agents/{agent_id}/interrupt": {"post"},
        "/api/v1/agents/{agent_id}/events": {"get"},
        "/api/v1/agents/{agent_id}/deliveries": {"get"},
        "/api/v1/deliveries/{delivery_id}/redeliver": {"post"},
        "/health": {"get"},
        "/healthz": {"get"},
        "/readyz": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    events = paths["/api/v1/agents/{agent_id}/events"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(events)
    message = paths["/api/v1/agents/{agent_id}/messages"]["post"]["responses"]
    assert {"202", "404", "409", "422"} <= set(message)
    assert message["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


def test_the_published_copy_in_docs_is_the_current_document() -> None:
    published = Path(__file__).parents[3] / "docs" / "openapi.json"
    assert published.read_text() == render(openapi_document()), (
        "docs/openapi.json is behind the routes: run "
        "`.venv/bin/python -m forge.api.openapi docs/openapi.json` and commit it"
    )
