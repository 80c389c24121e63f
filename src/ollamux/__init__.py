"""ollamux: one server that speaks the Ollama, OpenAI and Anthropic APIs in front of any mix of model backends.

The names below are imported on first use (PEP 562): a model process (`python -m ollamux.runtime.engine`)
imports this package too, and must not pay for the whole server (aiohttp's web stack, every API) it never
runs; nor may the engine module be imported by the package before `-m` runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .app import create_app
    from .config import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "__version__", "create_app", "load_settings"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("ConfigError", "Settings", "load_settings"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'ollamux' has no attribute {name!r}")
