"""Headless Chromium (Debian's package) driven by Playwright for Python; never a downloaded browser.

The tests skip, with the reason printed in the summary, only when the browser or Playwright is
missing. ``DUALCALL_CHROMIUM`` names another system browser binary (default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("DUALCALL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_skip_reasons: list[str] = []


def _missing_prerequisite() -> str | None:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        return f"no Chromium at {CHROMIUM} (install Debian's package: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module, with a fresh profile directory; pages come from ``context``."""
    reason = _missing_prerequisite()
    if reason is not None:
        if reason not in _skip_reasons:
            _skip_reasons.append(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="dualcall-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for reason in _skip_reasons:
        terminalreporter.write_line(f"browser tests SKIPPED: {reason}", yellow=True)
