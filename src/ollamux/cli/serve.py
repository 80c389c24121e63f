"""`ollamux serve` and `ollamux check`: build settings from flags, file and environment; run the app."""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from ..app import create_app
from ..config import (
    DEFAULT_PORT,
    BackendSettings,
    ConfigError,
    Settings,
    default_models_dir,
    load_settings,
    parse_settings,
)
from ..config.parse import parse_url
from ..names import normalize_name
from ..oplog import configure
from ..reload import reload_on_sighup
from ..runtime.checks import check_runtime
from ..server import ListenError, run
from ..state import STATE
from ..tls import server_context
from ..tracing import check_tracing
from .client import ollama_host
from .serve_banner import dashboard_line, served_lines

__all__ = ["bind_address", "register", "settings_from_args"]


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the server")
    p.add_argument("-c", "--config", help="YAML config file (default: $OLLAMUX_CONFIG)")
    p.add_argument("--host", help="address to bind (default: config file, else $OLLAMA_HOST, else 127.0.0.1)")
    p.add_argument("--port", type=_port, help="port to bind (default: config file, else $OLLAMA_HOST, else 11434)")
    p.add_argument(
        "--backend", metavar="URL", help="an OpenAI-compatible backend whose models are all served (no config needed)"
    )
    p.add_argument("--log-format", choices=("json", "text"), default="json", help="operator log format on stderr")
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="operator log level",
    )
    p.set_defaults(func=cmd_serve)

    c = sub.add_parser("check", help="validate a config file and print the models it serves")
    c.add_argument("-c", "--config", help="YAML config file (default: $OLLAMUX_CONFIG)")
    c.set_defaults(func=cmd_check)


def _port(text: str) -> int:
    """A port flag, refused by argparse when out of range (the socket's own error would blame something else)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port from 0 to 65535")
    return port


def bind_address(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """The host and port `OLLAMA_HOST` names, as `ollama serve` reads it; None when it is unset or empty.

    Parsed by the same code as the client commands' (`ollama_host`), so `OLLAMA_HOST=0.0.0.0:8080` makes
    `ollamux serve` listen where `ollamux run` and `ollama run` connect: `host`, `host:port`, `:port`,
    `[::1]:port`, and a scheme whose only effect is the default port (http://host is port 80, as in Ollama).
    """
    raw = environ.get("OLLAMA_HOST", "").strip().strip("\"'")
    if not raw:
        return None
    url = urllib.parse.urlsplit(ollama_host(environ))
    try:
        port = url.port
    except ValueError:  # not a number, or beyond 65535: better refused than bound somewhere unexpected
        raise ConfigError("OLLAMA_HOST", f"'{raw}' does not end in a port from 0 to 65535") from None
    return url.hostname or "127.0.0.1", DEFAULT_PORT if port is None else port


def _server_keys_in_file(path: str) -> frozenset[str]:
    """Which of `server.host` and `server.port` the config file sets itself.

    Settings cannot tell a value the file gave from a default, and `OLLAMA_HOST` must yield to the file but
    not to a default. The file was just parsed by load_settings, so reading it again cannot fail for a
    reason it would not have; an unreadable one sets nothing.
    """
    try:
        raw = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return frozenset()
    server = raw.get("server") if isinstance(raw, dict) else None
    if not isinstance(server, dict):
        return frozenset()
    # as the parser reads them: an empty or null value means the default
    return frozenset(k for k in ("host", "port") if server.get(k) not in (None, ""))


def settings_from_args(
    config: str | None, host: str | None, port: int | None, backend: str | None, environ: Mapping[str, str]
) -> Settings:
    """Settings for `serve`; the address from the flags, else the config file, else OLLAMA_HOST, else default."""
    path = config or environ.get("OLLAMUX_CONFIG")
    # no file is an empty one: defaults that come from the environment (HF_ENDPOINT, OLLAMA_NUM_PARALLEL) hold too
    settings = load_settings(path, environ) if path else parse_settings({}, environ)
    if backend:
        url = parse_url("--backend", backend)
        name = "default"
        while name in settings.backends:
            name += "_"
        bs = BackendSettings(name=name, type="openai", urls=(url,), discover=True)
        settings = replace(settings, backends={**settings.backends, name: bs})
    if not path and not backend and settings.runtime.models_dir is None:
        # nothing configured: serve the GGUF files of the default models folder, as Ollama would
        settings = replace(settings, runtime=replace(settings.runtime, models_dir=default_models_dir(environ)))
    changes: dict[str, Any] = {}
    env_address = bind_address(environ)
    if env_address is not None:
        in_file = _server_keys_in_file(path) if path else frozenset()
        # key by key: a file that sets only the port still takes the host from OLLAMA_HOST
        if "host" not in in_file:
            changes["host"] = env_address[0]
        if "port" not in in_file:
            changes["port"] = env_address[1]
    if host:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    return settings.with_server(**changes) if changes else settings


def _load(args: argparse.Namespace) -> Settings | None:
    """Settings from flags, file and environment, checked as `serve` would; None after printing why not."""
    try:
        settings = settings_from_args(
            args.config,
            getattr(args, "host", None),
            getattr(args, "port", None),
            getattr(args, "backend", None),
            os.environ,
        )
        check_runtime(settings)  # e.g. a gguf model without the llama extra installed
        server_context(settings.server)  # TLS files that cannot be loaded: said now, by `check` too
        check_tracing(settings.tracing)
        return settings
    except ConfigError as exc:
        print(f"ollamux: config error: {exc}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    if not (args.config or os.environ.get("OLLAMUX_CONFIG")):
        print("ollamux: check needs --config FILE (or OLLAMUX_CONFIG)", file=sys.stderr)
        return 2
    settings = _load(args)
    if settings is None:
        return 1
    print(f"config {settings.source}: OK")
    tls = " (HTTPS)" if settings.server.tls_cert is not None else ""
    print(f"listen: {settings.server.host}:{settings.server.port}{tls}")
    for name, b in settings.backends.items():
        extra = " (models discovered)" if b.discover else ""
        print(f"backend {name}: {b.type} {', '.join(b.urls)}{extra}")
    for m in settings.models:
        if m.runtime is not None:
            rt = m.runtime
            where = f"runtime gguf {rt.gguf}" if rt.gguf else f"runtime cmd {' '.join(rt.cmd or ())}"
        else:
            where = f"backend {m.backend} as '{m.upstream or m.name}'"
        aliases = f" aliases: {', '.join(m.aliases)}" if m.aliases else ""
        shown = m.name if m.is_wildcard else normalize_name(m.name)
        print(f"model {shown} -> {where}{aliases}")
    if settings.default_model:
        print(f"default model: {settings.default_model}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _load(args)
    if settings is None:
        return 1
    setup_logging(args.log_format, args.log_level)
    app = create_app(settings)
    app.cleanup_ctx.append(_announce)  # after the app's lifespan: every model is registered by then
    if settings.source is not None:  # SIGHUP re-reads the file with the same flags and environment
        app.cleanup_ctx.append(reload_on_sighup(lambda: _reloaded(args)))
    try:
        run(app, settings)
    except ListenError as exc:  # a busy or forbidden port: what to do, not a traceback
        print(f"ollamux: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # TLS files changed between the check above and the listen
        print(f"ollamux: config error: {exc}", file=sys.stderr)
        return 1
    return 0


def _reloaded(args: argparse.Namespace) -> Settings:
    """The settings a SIGHUP reload serves: read as at start-up; raises ConfigError instead of printing it."""
    settings = settings_from_args(args.config, args.host, args.port, args.backend, os.environ)
    check_runtime(settings)
    return settings


async def _announce(app: web.Application) -> AsyncIterator[None]:
    """Say what this server serves, once, before it starts answering."""
    state = app[STATE]
    for line in served_lines(state.settings, state.registry.entries()):
        print(line, file=sys.stderr, flush=True)
    print(dashboard_line(state.settings), file=sys.stderr, flush=True)
    yield


def setup_logging(fmt: str, level: str) -> None:
    configure(fmt, level)
