"""Headless Chromium (Debian's package) driven by Playwright for Python; never a downloaded browser.

The tests skip, with the reason printed in the summary, only when the browser or Playwright is
missing. ``DUALCALL_CHROMIUM`` names another system browser binary (default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
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


#: set by `.ci/run`, which installs Chromium while the other tox environments run: a file that says
#: "installing" until the install ends, then "done <exit status>"
INSTALL_STATUS = os.environ.get("DUALCALL_CHROMIUM_INSTALL")
INSTALL_WAIT_S = 600.0


def _chromium_present() -> bool:
    return (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) or shutil.which(CHROMIUM) is not None


def _wait_for_ci_install() -> None:
    """Wait (bounded) for the concurrent CI install of Chromium to end, whatever its outcome."""
    if not INSTALL_STATUS:
        return
    status = Path(INSTALL_STATUS)
    deadline = time.monotonic() + INSTALL_WAIT_S
    while time.monotonic() < deadline:
        if not status.exists() or status.read_text(encoding="utf-8").startswith("done"):
            return
        time.sleep(1.0)


def _missing_prerequisite() -> str | None:
    if not _chromium_present():
        _wait_for_ci_install()
    if not _chromium_present():
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
