"""Browser fixtures: Debian's headless Chromium driven by Playwright (never Playwright's own
browser download). Servers come from the project's `start_server` / `server` fixtures."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

IN_CI = bool(os.environ.get("CI"))
CHROMIUM = os.environ.get("GOFIDDLE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} not available")


def _chromium_path() -> str | None:
    if os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Module scope, not session: sync Playwright keeps its event loop marked as running
# while it is started, which would break the asyncio tests that run after these.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (Python package)")
    path = _chromium_path()
    if path is None:
        _missing(f"chromium ({CHROMIUM})")
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
    except Exception as exc:  # a broken browser install
        pw.stop()
        if IN_CI:
            raise
        pytest.skip(f"chromium did not start: {exc}")
    yield b
    b.close()
    pw.stop()


class PageErrors(list):
    """Uncaught exceptions and console errors seen on a page."""


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """Factory: new_page(viewport=..., color_scheme=...) -> a Page in a fresh context.

    Every page records uncaught errors and any request that leaves 127.0.0.1 (the
    editor must make none); the fixture fails the test on either.
    """
    contexts: list[Any] = []
    pages: list[Any] = []

    def factory(*, viewport: dict[str, int] | None = None, color_scheme: str = "light",
                **context_args: Any) -> Any:
        ctx = browser.new_context(
            viewport=viewport or {"width": 1280, "height": 800},
            color_scheme=color_scheme,
            **context_args,
        )
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        page.errors = PageErrors()
        page.foreign_requests = []
        page.on("pageerror", lambda exc, p=page: p.errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg, p=page: p.errors.append(f"console: {msg.text}")
                if msg.type == "error" and "WebSocket" not in msg.text else None)

        def on_request(req: Any, p: Any = page) -> None:
            url = req.url
            if not (url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))
                    or url.startswith("about:")):
                p.foreign_requests.append(url)

        page.on("request", on_request)
        pages.append(page)
        return page

    yield factory
    problems = []
    for p in pages:
        problems += p.errors
        problems += [f"request to {u}" for u in p.foreign_requests]
    for ctx in contexts:
        ctx.close()
    assert not problems, "page problems:\n" + "\n".join(problems)
