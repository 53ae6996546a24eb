"""What every browser test shares: headless Chromium through Playwright, and a page that collects its errors.

A test module takes the ``chromium`` fixture (tests/conftest.py) and opens pages with :func:`watched_page`; any
uncaught exception or console error on the page is appended to ``page.errors``, which the test asserts empty.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def need_chromium() -> None:
    """Skip the test when Chromium or Playwright is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install chromium for the browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def watched_page(context, upstream=()):
    """A new page of ``context`` whose uncaught exceptions and console errors go to ``page.errors``.

    ``upstream`` lists (message, where) pairs of known errors that are not ours: an uncaught exception with exactly
    that message, thrown from a stack containing ``where``, is not collected.
    """
    page = context.new_page()
    errors: list[str] = []

    def uncaught(exc):
        if not any(exc.message == message and where in (exc.stack or "") for message, where in upstream):
            errors.append(f"uncaught: {exc.message}\n{exc.stack}")

    page.on("pageerror", uncaught)
    page.on("console", lambda msg: msg.type == "error" and errors.append(f"console: {msg.text} at {msg.location}"))
    page.errors = errors
    return page
