"""Bad requests get a 4xx the OpenAPI document declares, with a message that says what to fix
(found by schemathesis; see tests/integration/test_fuzz_api.py). The app is not started:
these are refused before any route reaches the platform."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from forge.api.app import create_app
from forge.config import Settings
from forge.core.schemas import MAX_METADATA_BYTES
from forge.core.tasks import TaskCreate


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return create_app(Settings(data_dir=tmp_path))


async def _request(app: FastAPI, method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://forge") as client:
        return await client.request(method, path)


async def test_a_method_the_route_does_not_have_is_405_with_allow(app: FastAPI) -> None:
    response = await _request(app, "TRACE", "/api/v1/agents")
    assert response.status_code == 405
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    body = response.json()
    assert body["error"] == "method_not_allowed"
    assert "TRACE" in body["message"] and "GET" in body["message"], body


@pytest.mark.parametrize("value", ["0.5", "1700000000", "2026-11-21", "2026-11-21T10:00:00"])
async def test_session_times_need_iso_8601_with_an_offset(app: FastAPI, value: str) -> None:
    response = await _request(app, "GET", f"/api/v1/sessions?created_after={value}")
    assert response.status_code == 422, response.text
    assert "created_after" in response.json()["message"]
    assert "ISO 8601" in response.json()["message"]


def test_every_route_declares_the_errors_a_request_can_get(app: FastAPI) -> None:
    document = app.openapi()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            declared = set(operation["responses"])
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= declared, (method, path, declared)
            if path.startswith("/api/"):
                assert {"401", "403", "429"} <= declared, (method, path, declared)
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]


@pytest.mark.parametrize(
    "fields",
    [
        {"profile": ""},
        {"executor": ""},
        {"executor": "Not A Kind"},
        {"variant": "1"},
        {"metadata": {"x": "y" * MAX_METADATA_BYTES}},
    ],
)
def test_a_task_is_refused_for_what_its_session_would_refuse(fields: dict[str, object]) -> None:
    # These reached `AgentCreate` inside the service and failed there, as a 500.
    with pytest.raises(ValidationError):
        TaskCreate.model_validate({"title": "t", "prompt": "p", **fields})
