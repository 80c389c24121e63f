"""Backends: one protocol (`base.Backend`), an OpenAI-compatible and an Ollama implementation over one
long-lived HTTP client (`http`), retries and fallbacks (`failover`), health checks (`health`).

`make_backend` is the one place that reads a backend's configured type.
"""

from __future__ import annotations

import aiohttp

from ..config import BackendSettings
from .base import Answer, Api, Backend, Lease, PivotKind, PivotPlan
from .http import HTTPBackend, new_client_session
from .ollama import OllamaBackend
from .openai import OpenAIBackend

__all__ = [
    "Answer",
    "Api",
    "Backend",
    "HTTPBackend",
    "Lease",
    "OllamaBackend",
    "OpenAIBackend",
    "PivotKind",
    "PivotPlan",
    "make_backend",
    "new_client_session",
]

_KINDS: dict[str, type[HTTPBackend]] = {"openai": OpenAIBackend, "ollama": OllamaBackend}


def make_backend(settings: BackendSettings, client: aiohttp.ClientSession) -> HTTPBackend:
    return _KINDS[settings.type](settings, client)
