"""ollamux: one server that speaks the Ollama and OpenAI APIs in front of any mix of model backends."""

from __future__ import annotations

from .app import create_app
from .config import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "__version__", "create_app", "load_settings"]

__version__ = "0.1.0"
