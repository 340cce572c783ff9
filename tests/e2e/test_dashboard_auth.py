"""The dashboard with API auth on: it asks for a key, refuses a wrong one, and keeps the session
in an HttpOnly cookie that the API and the live stream accept."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import start_server
from tests.integration.conftest import ForgeServer

pytestmark = pytest.mark.integration

ADMIN_KEY = "forge-e2e-admin-key-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForgeServer]:
    forge = start_server(
        tmp_path_factory.mktemp("forge"),
        "\n[auth]\nenabled = true\n",
        env={"FORGE_API_KEY": ADMIN_KEY},
    )
    forge.http.headers["authorization"] = f"Bearer {ADMIN_KEY}"
    try:
        yield forge
    finally:
        forge.close()


def test_sign_in_with_a_key_and_an_httponly_cookie(page: Page, server: ForgeServer) -> None:
    agent = server.create_agent(owner_id="me")
    page.goto(f"{server.base_url}/")
    form = page.get_by_test_id("signin-form")
    expect(form).to_be_visible()
    expect(page).to_have_url(f"{server.base_url}/#/signin")

    page.get_by_label("API key").fill("not-the-key")
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("signin-error")).to_be_visible()
    expect(page.get_by_test_id("signin-error")).not_to_be_empty()
    assert not page.context.cookies(server.base_url)

    page.get_by_label("API key").fill(ADMIN_KEY)
    page.get_by_test_id("signin-submit").click()
    row = page.locator(f"[data-testid=session-row][data-session-id={agent['id']}]")
    expect(row).to_be_visible()
    expect(page.get_by_test_id("signed-in-as")).to_contain_text("admin")

    cookies = page.context.cookies(server.base_url)
    assert cookies, "no session cookie was set"
    assert all(c["httpOnly"] for c in cookies), cookies
    assert page.evaluate("document.cookie") == ""

    # The cookie carries the live stream too (a WebSocket cannot send a header).
    page.goto(f"{server.base_url}/#/sessions/{agent['id']}")
    expect(page.get_by_test_id("stream-state")).to_have_text("live")

    # Signing out forgets it: the sign-in view again.
    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("signin-form")).to_be_visible()
    assert not page.context.cookies(server.base_url)
