"""The dashboard in a real browser: Debian's Chromium driven by Playwright for Python, against
the real `forge serve` (started by `ForgeServer` from the integration tests' fixtures).

Browsers are never downloaded: Chromium comes from Debian's `chromium` package (installed here
when it is missing), launched with the flags that keep it off the network. Every test saves a
screenshot to `test-output/screenshots/<test name>.png`, pass or fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.integration.conftest import ForgeServer

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
# Without the background-networking flags Chromium keeps trying Google's hosts, which this
# machine's closed network refuses many at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Bounded waits for what the page shows (milliseconds).
UI_TIMEOUT_MS = 15_000


def _unavailable(reason: str) -> None:
    # CI must run these tests; a developer's machine without a browser skips them, saying why.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _install_chromium() -> None:
    if CHROMIUM.exists() or not shutil.which("apt-get"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-qq", "chromium"]
    if subprocess.run(install, env=env, check=False, capture_output=True).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(install, env=env, check=False, capture_output=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module, with a fresh profile directory."""
    _install_chromium()
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing and could not be installed (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="forge-e2e-chromium-")
    with sync_playwright() as playwright:
        # A persistent context is the only way to give Chromium its own --user-data-dir.
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield BrowserContexts(context)
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


class BrowserContexts:
    """The module's browser. Its one context's cookies are cleared between tests, so each test
    starts signed out; the page's local storage (the owner field) is kept for the module's
    server, whose tests all use the default owner."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def fresh_page(self) -> Any:
        self.context.clear_cookies()
        for page in list(self.context.pages):
            page.close()
        page = self.context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        return page


@pytest.fixture
def page(browser: BrowserContexts, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A new page; its screenshot is saved when the test ends, whatever the outcome."""
    page = browser.fresh_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
    try:
        yield page
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        try:
            page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
        except Exception as exc:  # a crashed page: say so, and still check its errors
            messages.append(f"screenshot failed: {exc}")
        errors = [m for m in messages if m.startswith(("pageerror", "screenshot failed"))]
        assert not errors, f"the page raised: {errors}"


def start_server(root: Path, extra_config: str, env: dict[str, str] | None = None) -> ForgeServer:
    root.mkdir(parents=True, exist_ok=True)
    server = ForgeServer(root, extra_config, env=env)
    server.start()
    return server
