"""Settings: frozen value objects, built from a YAML file and the environment, never read from globals.

`load_settings(path, environ)` is the only entry point that reads a file. The package is split along its
seams: `settings` (the value objects), `node` (the YAML reader with `${VAR}` expansion and typed getters),
`parse` and `parse_guard` (the validation that turns a YAML tree into Settings).
"""

from __future__ import annotations

from .parse import load_settings, parse_settings
from .settings import (
    DEFAULT_PORT,
    DEFAULT_VERSION,
    NO_PARAMS,
    ApiKeySettings,
    AuthSettings,
    BackendSettings,
    ConcurrencyLimit,
    ConfigError,
    LimitSettings,
    MetricsSettings,
    ModelDefaults,
    ModelParams,
    ModelSettings,
    RequestLogSettings,
    Resilience,
    RuntimeGroup,
    RuntimeSettings,
    RuntimeSpec,
    ServerSettings,
    Settings,
    Timeouts,
    default_models_dir,
)

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_VERSION",
    "NO_PARAMS",
    "ApiKeySettings",
    "AuthSettings",
    "BackendSettings",
    "ConcurrencyLimit",
    "ConfigError",
    "LimitSettings",
    "MetricsSettings",
    "ModelDefaults",
    "ModelParams",
    "ModelSettings",
    "RequestLogSettings",
    "Resilience",
    "RuntimeGroup",
    "RuntimeSettings",
    "RuntimeSpec",
    "ServerSettings",
    "Settings",
    "Timeouts",
    "default_models_dir",
    "load_settings",
    "parse_settings",
]
