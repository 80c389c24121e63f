"""The dashboard at `/ui`: static files shipped inside the package, served by the app itself.

The page is plain files (index.html, app.js, app.css and the vendored libraries in static/vendor/, copied
there by scripts/vendor_ui.sh): no build step at install time, nothing from a CDN at run time. Every datum
it shows comes from the admin JSON endpoints (`/admin/...`) and the model APIs, fetched with the admin key
the user types in; the files themselves hold nothing secret, so the guard lets them through without a key
(`guard.core.is_page`), which is what lets the page ask for one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web

__all__ = ["PAGE_PATH", "STATIC_DIR", "add_routes"]

PAGE_PATH = "/ui"
STATIC_DIR = Path(__file__).parent / "static"

# Only these kinds of file are served; anything else under static/ (a stray editor file) is a 404.
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
# Own files may change with any release under the same name: the browser revalidates them (the ETag makes
# that a 304). Vendored files change only with a new pin.
_REVALIDATE = "no-cache"
_VENDOR_CACHE = "public, max-age=86400"
# Alpine evaluates its attribute expressions with `new Function` ('unsafe-eval'); uPlot and Alpine set
# inline styles. Everything else is this origin only, and no other site may frame the buttons.
_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def add_routes(app: web.Application) -> None:
    """`GET /ui` (the page) and `GET /ui/{path}` (its files). `/ui/` is redirected to `/ui` by the
    trailing-slash rule of `api.routing`, so relative URLs in the page resolve the same way."""
    files = _Files()
    app.router.add_get(PAGE_PATH, files.page)
    app.router.add_get(PAGE_PATH + "/{path:.+}", files.file)


def _headers(path: Path, cache: str) -> dict[str, str]:
    headers = {
        "Content-Type": _TYPES[path.suffix],
        "Cache-Control": cache,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = _CSP
    return headers


class _Files:
    """The page's files, read once and answered from memory (they are small: the largest, uPlot, ~50 KB).
    Not FileResponse: a client that hung up mid-sendfile left its file open (an unclosed-file warning per
    such client, seen under the fuzz suite). One per app, re-read when a file's mtime changes."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[int, bytes, str]] = {}  # path -> (mtime_ns, body, etag)

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._send(request, STATIC_DIR / "index.html", _REVALIDATE)

    async def file(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        root = STATIC_DIR.resolve()
        target = (root / rel).resolve()
        # resolve() follows `..` and links: whatever the path says, only files under static/ are served
        if not target.is_relative_to(root) or target.suffix not in _TYPES or not target.is_file():
            raise web.HTTPNotFound(text="404 page not found")
        vendored = target.is_relative_to(root / "vendor")
        return self._send(request, target, _VENDOR_CACHE if vendored else _REVALIDATE)

    def _send(self, request: web.Request, path: Path, cache: str) -> web.Response:
        mtime = path.stat().st_mtime_ns
        hit = self._cache.get(path)
        if hit is None or hit[0] != mtime:
            body = path.read_bytes()
            hit = (mtime, body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
            self._cache[path] = hit
        _, body, etag = hit
        headers = {**_headers(path, cache), "ETag": etag}
        if etag in request.headers.get("If-None-Match", ""):
            del headers["Content-Type"]
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers)
