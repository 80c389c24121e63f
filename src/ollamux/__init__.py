"""ollamux: one server that speaks the Ollama and OpenAI APIs in front of any mix of model backends."""

from __future__ import annotations

from .app import create_app
from .config import ConfigError, Settings, load_settings
from .version import __version__

__all__ = ["ConfigError", "Settings", "__version__", "create_app", "load_settings"]
