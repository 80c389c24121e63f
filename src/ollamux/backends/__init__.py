"""Backends: one protocol (`base.Backend`), an OpenAI-compatible and an Ollama implementation over
long-lived HTTP clients (`http`, whose hot path is `wire`), retries and fallbacks (`failover`), health checks
(`health`).

`make_backend` is the one place that reads a backend's configured type.
"""

from __future__ import annotations

from ..config import BackendSettings
from .base import Answer, Api, Backend, Lease, PivotKind, PivotPlan
from .http import Clients, HTTPBackend, new_clients
from .ollama import OllamaBackend
from .openai import OpenAIBackend

__all__ = [
    "Answer",
    "Api",
    "Backend",
    "Clients",
    "HTTPBackend",
    "Lease",
    "OllamaBackend",
    "OpenAIBackend",
    "PivotKind",
    "PivotPlan",
    "make_backend",
    "new_clients",
]

_KINDS: dict[str, type[HTTPBackend]] = {"openai": OpenAIBackend, "ollama": OllamaBackend}


def make_backend(settings: BackendSettings, client: Clients) -> HTTPBackend:
    return _KINDS[settings.type](settings, client)
