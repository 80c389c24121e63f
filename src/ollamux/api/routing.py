"""What a request that matches no route gets: Gin's answers, as Ollama's server gives them.

Ollama's router (server/routes.go `GenerateRoutes`: `gin.Default()`, `HandleMethodNotAllowed = true`):
- a path with a trailing slash that names a route without it is redirected there (Gin's
  `RedirectTrailingSlash`): 301 for GET, 307 for every other method (the client sends the body again),
  the query kept; only when the route exists for the request's method, else the request is unknown;
- an unknown path is 404 with the text/plain body "404 page not found";
- a known path with another method is 405 "405 method not allowed", also text/plain. ollamux keeps its
  `Allow` header, which says what would have worked (Gin sends none).

Outside Ollama's API (`/v1/...`, `/upstream/...`, llama.cpp's root routes: `guard.core.api_of`) clients
expect JSON errors: those 404s and 405s are in their API's envelope (OpenAI's `Invalid URL (POST /v1/x)`,
Anthropic's), with the same statuses.

The middleware sits inside the guard's: a request the guard refuses (its Host, its key, its body) is
refused with or without a trailing slash, and the redirected request is a new one it checks again.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from yarl import URL

from ..errors import OllamuxError
from ..guard.core import api_of

__all__ = ["install", "middleware"]

_TEXT = "text/plain"  # Gin's MIMEPlain, without a charset


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=text.encode(), status=status, content_type=_TEXT, headers=headers)


@dataclass(frozen=True, slots=True)
class _Probe:
    rel_url: URL
    method: str


async def _redirect(request: web.Request) -> web.Response | None:
    """Gin's trailing-slash redirect, when the path without its slash is a route for this method."""
    raw = request.rel_url.raw_path
    if len(raw) < 2 or not raw.endswith("/"):
        return None
    raw = raw[:-1]  # one slash, as Gin: `/api/tags//` names no route
    query = request.rel_url.raw_query_string
    target = URL.build(path=raw, query_string=query, encoded=True)
    # the router reads only these two of a request (a clone is refused once the guard read the body)
    probe = cast(web.Request, _Probe(rel_url=target, method=request.method))
    match = await request.app.router.resolve(probe)
    if match.http_exception is not None:
        return None
    location = str(target)
    status = 301 if request.method == "GET" else 307
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=status, headers={"Location": location})
    # Go's http.Redirect writes a short HTML note for GET and HEAD
    note = "Moved Permanently" if status == 301 else "Temporary Redirect"
    body = f'<a href="{html.escape(location)}">{note}</a>.\n\n'.encode()
    return web.Response(
        status=status, body=body, content_type="text/html", charset="utf-8", headers={"Location": location}
    )


def _unmatched(request: web.Request, exc: web.HTTPException) -> web.Response:
    api = api_of(request.path)
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    if api == "ollama":
        text = "404 page not found" if exc.status == 404 else "405 method not allowed"
        return _plain(exc.status, text, headers)
    if exc.status == 404:
        err = OllamuxError(f"Invalid URL ({request.method} {request.path})", status=404)
    else:
        err = OllamuxError(f"Method {request.method} is not allowed for {request.path}", status=exc.status)
    return web.Response(
        body=err.body_for(api), status=exc.status, content_type="application/json", charset="utf-8", headers=headers
    )


@web.middleware
async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    exc = request.match_info.http_exception
    if exc is None or exc.status not in (404, 405):
        return await handler(request)  # type: ignore[no-any-return]
    if exc.status == 404:
        redirect = await _redirect(request)
        if redirect is not None:
            return redirect
    return _unmatched(request, exc)


def install(app: web.Application) -> None:
    """Add the middleware (after the guard's, which `guard.install` puts first)."""
    app.middlewares.append(middleware)
