"""Browser fixtures: the real app in a subprocess, Debian's Chromium driven by Playwright, screenshots on failure.

Chromium comes from the system (`apt-get install chromium`, which `make browser` does), not from
`playwright install`; BRANDGEN_CHROMIUM points at another binary. A missing browser is a failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app_server import REPO_ROOT, AppServer, running_app

ARTIFACTS = REPO_ROOT / "test-artifacts"  # git-ignored; screenshots and app logs of failed browser tests
expect.set_options(timeout=15_000)  # the app shares two CPU cores with the browser: allow for slow renders


def chromium_path() -> Path | None:
    """BRANDGEN_CHROMIUM, else Debian's /usr/bin/chromium, else whatever chromium is on PATH."""
    if os.environ.get("BRANDGEN_CHROMIUM"):
        return Path(os.environ["BRANDGEN_CHROMIUM"])
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the test item so the page fixture knows whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    with running_app(tmp_path_factory.mktemp("brandgen_home")) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = chromium_path()
    if chromium is None or not chromium.is_file():
        pytest.fail("No Chromium found: run `make browser` (apt-get install chromium) or set BRANDGEN_CHROMIUM.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, app_server: AppServer, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh tab on the app; only requests to the app itself leave the browser (the box is offline)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.route(lambda url: not url.startswith(app_server.url), lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(app_server.url, wait_until="domcontentloaded")
        page.get_by_role("tab", name="Generate").wait_for()
    except Exception:
        save_artifacts(page, app_server, request.node.name)
        context.close()
        raise
    try:
        yield page
    finally:
        if any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")):
            save_artifacts(page, app_server, request.node.name)
        context.close()


def save_artifacts(page: Page, app_server: AppServer, test_name: str) -> None:
    """A full-page screenshot and the app's log tail, named after the test, in test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", test_name)
    try:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    finally:
        (ARTIFACTS / f"{name}.app.log").write_text(app_server.log_tail(20_000), encoding="utf-8")
