"""What a request sends upstream besides its body: the request id, the encoding, the client's key."""

from __future__ import annotations

from aiohttp import web

from ..observe import RequestRecord
from ..state import AppState

__all__ = ["REQUEST_ID", "client_auth", "identity_headers", "upstream_headers"]

REQUEST_ID = "x-request-id"


def upstream_headers(request: web.Request, rec: RequestRecord) -> dict[str, str]:
    return {REQUEST_ID: rec.id}


def identity_headers(request: web.Request, rec: RequestRecord) -> dict[str, str]:
    """Upstream headers for an answer we parse or rewrite: it must come uncompressed (the client does not
    decompress)."""
    return {REQUEST_ID: rec.id, "Accept-Encoding": "identity"}


def client_auth(request: web.Request, state: AppState) -> str | None:
    """The client's Authorization to pass on: none when inbound keys are on (the key is ours, not the
    backend's); HTTPBackend replaces it anyway with a backend's configured key."""
    return None if state.inbound_auth else request.headers.get("Authorization")
