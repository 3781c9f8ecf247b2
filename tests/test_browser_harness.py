"""The browser harness itself (tests/browser.py): Debian's Chromium, headless, loads a page
from the harness's static server, a click there fetches our server's /versions across
origins (CORS) and the page shows them. A template for page tests."""

from __future__ import annotations

from typing import Any

import requests
from browser import run_browser_script
from conftest import ServerProcess


def test_a_page_in_chromium_shows_what_it_fetched_from_the_server(server: ServerProcess) -> None:
    result = run_browser_script("smoke.mjs", server.base_url, timeout=60)
    versions: list[Any] = requests.get(server.url("/_matrix/client/versions"), timeout=10).json()["versions"]
    assert result["shown"] == " ".join(versions)
    assert "HeadlessChrome" in result["userAgent"] and result["secureContext"] is True
