"""Headless Debian Chromium driven by Playwright, for the browser tests (never
`playwright install`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def launch_chromium() -> Iterator[Any]:
    """Yields a launched Chromium browser, closed on exit."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium (never `playwright install`)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium not installed: apt-get install chromium")
    with launch_chromium() as chromium:
        yield chromium
