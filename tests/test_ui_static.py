"""The dashboard's files over real HTTP: what a browser needs (types, caching, no key), and nothing else.

The page itself is driven in a real browser by tests/test_dashboard_browser.py; this file checks the
serving: content types and cache headers, the redirect of `/ui/`, revalidation, that nothing outside
static/ is reachable, and that with keys on the files need no key while the data still does.
"""

from __future__ import annotations

import re

import httpx
import pytest

from ollamux.ui import STATIC_DIR

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI

VENDOR = STATIC_DIR / "vendor"


@pytest.fixture
def ui(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> str:
    return start_proxy(basic_config(fake_openai[1]))


def test_page_and_its_files_have_their_types(ui: str) -> None:
    page = httpx.get(ui + "/ui")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    # every file the page names is served, with the type a browser insists on for scripts and styles
    refs = re.findall(r'(?:src|href)="(ui/[^"]+)"', page.text)
    assert {"ui/app.js", "ui/app.css", "ui/vendor/alpine.min.js", "ui/vendor/uPlot.iife.min.js"} <= set(refs)
    for ref in refs:
        r = httpx.get(f"{ui}/{ref}")
        assert r.status_code == 200, ref
        want = {"css": "text/css; charset=utf-8", "svg": "image/svg+xml"}.get(ref.rsplit(".", 1)[1])
        assert r.headers["content-type"] == (want or "text/javascript; charset=utf-8"), ref
        assert r.headers["x-content-type-options"] == "nosniff"
    # the module app.js imports, as the browser resolves it
    r = httpx.get(ui + "/ui/vendor/eventsource-parser/index.js")
    assert r.status_code == 200 and "createParser" in r.text


def test_own_files_revalidate_vendored_ones_are_cached(ui: str) -> None:
    own = httpx.get(ui + "/ui/app.js")
    assert own.headers["cache-control"] == "no-cache"
    again = httpx.get(ui + "/ui/app.js", headers={"If-None-Match": own.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    vendored = httpx.get(ui + "/ui/vendor/uPlot.min.css")
    assert vendored.headers["cache-control"] == "public, max-age=86400"
    assert vendored.content == (VENDOR / "uPlot.min.css").read_bytes()


def test_trailing_slash_redirects_to_the_page(ui: str) -> None:
    r = httpx.get(ui + "/ui/")
    assert r.status_code == 301 and r.headers["location"] == "/ui"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/missing.js",
        "/ui/vendor/LICENSE.uplot",  # shipped for the license, not served: not a type the page uses
        "/ui/%2e%2e/__init__.py",
        "/ui/..%2f..%2fpyproject.toml",
        "/ui/vendor/../../ui/__init__.py",
    ],
)
def test_nothing_outside_the_page_files(ui: str, path: str) -> None:
    r = httpx.get(ui + path)
    assert r.status_code == 404, r.text
    assert "import" not in r.text


def test_with_keys_on_the_files_need_no_key_the_data_does(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    config = {**basic_config(fake_openai[1]), "auth": {"keys": {"boss": {"key": "sk-boss-admin", "admin": True}}}}
    url = start_proxy(config)
    assert httpx.get(url + "/ui").status_code == 200
    assert httpx.get(url + "/ui/app.js").status_code == 200
    assert httpx.get(url + "/api/tags").status_code == 401  # the page's files open no other door
    assert httpx.get(url + "/uix").status_code == 401  # only /ui and what is under it
