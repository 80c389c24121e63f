"""Ollama servers as backends: the native API relayed as is (model names mapped), discovery and ps.

(Built out by the OpenAI-API/Ollama-backend work; this module is the seam the Ollama handlers call.)
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..backends.http import HTTPBackend
from ..errors import NotImplementedByProxy
from ..observe import RequestRecord
from ..registry import ModelEntry, Route
from ..state import AppState

__all__ = ["discover", "relay", "remote_ps"]


async def relay(
    request: web.Request,
    state: AppState,
    rec: RequestRecord,
    route: Route,
    body: dict[str, Any],
    raw: bytes | None,
    path: str,
    stream: bool,
) -> web.StreamResponse:
    raise NotImplementedByProxy("Ollama backends are not supported yet")


async def discover(state: AppState, backend: HTTPBackend) -> list[ModelEntry]:
    return []


async def remote_ps(state: AppState) -> list[dict[str, Any]]:
    return []
