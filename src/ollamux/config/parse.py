"""Building Settings from YAML: `load_settings` reads the file, `parse_settings` validates the tree.

Every validation error names the key path (`backends.local.url`) and says what is wrong, so `ollamux check`
can print it as is.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ..names import normalize_name
from .node import Node
from .parse_guard import parse_auth, parse_limits
from .parse_log_url import parse_log_url
from .parse_parallel import parse_parallel
from .parse_params import PARAMS_KEYS, parse_params
from .parse_proxies import PROXY_KEYS, parse_proxies
from .parse_shared_state import parse_shared_state
from .parse_tls import TLS_KEYS, parse_tls
from .parse_tracing import parse_tracing
from .settings import (
    BackendSettings,
    ConfigError,
    MetricsSettings,
    ModelSettings,
    NativeApi,
    RequestLogSettings,
    Resilience,
    RestartMode,
    RuntimeGroup,
    RuntimeSettings,
    RuntimeSpec,
    ServerSettings,
    Settings,
    Timeouts,
)

__all__ = ["load_settings", "parse_settings", "parse_url"]


def load_settings(path: str | os.PathLike[str], environ: Mapping[str, str]) -> Settings:
    """Read and validate a YAML config file; raise ConfigError naming the key on any problem."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:  # saved as Latin-1 or UTF-16, say: which byte, not a traceback
        raise ConfigError("", f"{p} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{p} is not valid YAML: {exc}") from None
    settings = parse_settings(raw if raw is not None else {}, environ, base_dir=p.parent)
    return replace(settings, source=str(p))


def parse_settings(raw: Any, environ: Mapping[str, str], *, base_dir: Path | None = None) -> Settings:
    root = Node("", raw, environ)
    root.only(
        {
            "server",
            "backends",
            "models",
            "runtime",
            "default_model",
            "request_log",
            "metrics",
            "auth",
            "limits",
            "shared_state",
            "tracing",
        }
    )
    server = _parse_server(root.child("server"))
    tls_cert, tls_key = parse_tls(root.child("server"), base_dir)
    server = replace(server, tls_cert=tls_cert, tls_key=tls_key)
    trusted_proxies, forwarded_header = parse_proxies(root.child("server"))
    server = replace(server, trusted_proxies=trusted_proxies, forwarded_header=forwarded_header)
    backends: dict[str, BackendSettings] = {}
    for name, node in root.child("backends").items():
        backends[name] = _parse_backend(name, node)
    runtime = _parse_runtime(root.child("runtime"), base_dir)
    models: list[ModelSettings] = []
    for name, node in root.child("models").items():
        models.append(_parse_model(name, node, backends, base_dir))
    _check_model_names(models)
    for m in models:
        for i, fb in enumerate(m.fallbacks):
            if not any(_same_name(fb, other.name) for other in models if other is not m):
                raise ConfigError(f"models.{m.name}.fallbacks[{i}]", f"'{fb}' is not a configured model")
    default_model = root.opt_str("default_model")
    request_log = _parse_request_log(root.child("request_log"), base_dir)
    metrics = _parse_metrics(root.child("metrics"))
    auth = parse_auth(root.child("auth"))
    limits = parse_limits(root.child("limits"), backends)
    return Settings(
        auth=auth,
        limits=limits,
        server=server,
        backends=backends,
        models=tuple(models),
        runtime=runtime,
        request_log=request_log,
        metrics=metrics,
        shared_state=parse_shared_state(root.child("shared_state")),
        tracing=parse_tracing(root.child("tracing")),
        default_model=default_model,
    )


def _same_name(a: str, b: str) -> bool:
    return normalize_name(a) == normalize_name(b)


def _check_model_names(models: list[ModelSettings]) -> None:
    seen: dict[str, str] = {}
    for m in models:
        for label, n in [("name", m.name), *[("aliases", a) for a in m.aliases]]:
            key = normalize_name(n)
            if key in seen:
                where = f"models.{m.name}" + ("" if label == "name" else ".aliases")
                raise ConfigError(where, f"'{n}' is already used by model '{seen[key]}'")
            seen[key] = m.name


def _parse_server(node: Node) -> ServerSettings:
    node.only(
        {
            "host",
            "port",
            "version",
            "max_body_bytes",
            "cors_origins",
            "shutdown_grace",
            "instance_id",
            *TLS_KEYS,
            *PROXY_KEYS,
        }
    )
    d = ServerSettings()
    version = node.opt_str("version") or d.version
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ConfigError(node.key("version"), f"'{version}' must be a numeric version such as 0.12.0")
    return ServerSettings(
        host=node.opt_str("host") or d.host,
        port=node.opt_int("port", d.port, lo=0, hi=65535),
        version=version,
        max_body_bytes=node.opt_int("max_body_bytes", d.max_body_bytes, lo=1024),
        cors_origins=node.str_list("cors_origins"),
        shutdown_grace=node.opt_float("shutdown_grace", d.shutdown_grace, lo=0) or 0.0,
        instance_id=node.opt_str("instance_id") or None,
    )


def parse_url(key: str, value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        # `127.0.0.1:8080/v1`, as OLLAMA_HOST is written, is the likeliest slip
        guess = f" (did you mean 'http://{value}'?)" if "://" not in value and value and "@" not in value else ""
        raise ConfigError(key, f"'{value}' is not an http:// or https:// URL{guess}")
    return value.rstrip("/")


def _check_one_authorization(node: Node, urls: list[str], headers: tuple[tuple[str, str], ...]) -> None:
    """A user:password in a URL is HTTP Basic auth, which takes the Authorization header that `api_key`
    (Bearer) or a configured header also sets: one request cannot carry both (aiohttp refuses it on every
    request, a 500 at run time), so the config says so once, at load."""
    if not any("@" in u.split("://", 1)[1].split("/", 1)[0] for u in urls):
        return
    if node.opt_str("api_key"):
        raise ConfigError(
            node.key("api_key"), "cannot be combined with a user:password in the URL (both set Authorization)"
        )
    if any(k.lower() == "authorization" for k, _ in headers):
        raise ConfigError(
            node.key("headers"), "Authorization cannot be combined with a user:password in the URL (one header)"
        )


# The floor of max_event_bytes and max_response_bytes: a unit slip (64 meant as MiB) is then an error at load
# time, not every answer from the backend failing at run time.
_MIN_BUFFER_BYTES = 1024


def _parse_backend(name: str, node: Node) -> BackendSettings:
    node.only(
        {
            "type",
            "url",
            "urls",
            "api_key",
            "timeout",
            "connect_timeout",
            "first_byte_timeout",
            "idle_timeout",
            "discover",
            "discover_interval",
            "headers",
            "max_connections",
            "dialect",
            "max_event_bytes",
            "max_response_bytes",
            "apis",
            *_RESILIENCE_KEYS,
        }
    )
    btype = node.opt_str("type") or "openai"
    if btype not in ("openai", "ollama"):
        raise ConfigError(node.key("type"), f"'{btype}' is not a backend type (use 'openai' or 'ollama')")
    urls: list[str] = []
    if node.has("url"):
        urls.append(parse_url(node.key("url"), node.req_str("url")))
    for i, u in enumerate(node.str_list("urls")):
        urls.append(parse_url(f"{node.key('urls')}[{i}]", u))
    if not urls:
        raise ConfigError(node.key("url"), "is required (the backend's base URL, e.g. http://127.0.0.1:8080/v1)")
    defaults = BackendSettings(name=name, type="openai", urls=tuple(urls))  # read only for the dataclass defaults
    d = Timeouts()
    timeouts = Timeouts(
        connect=node.opt_float("connect_timeout", d.connect, lo=0, nullable=True),
        first_byte=node.opt_float("first_byte_timeout", d.first_byte, lo=0, nullable=True),
        idle=node.opt_float("idle_timeout", d.idle, lo=0, nullable=True),
        total=node.opt_float("timeout", d.total, lo=0, nullable=True),
    )
    headers = tuple((str(k), str(v)) for k, v in node.str_map("headers").items())
    _check_one_authorization(node, urls, headers)
    dialect = node.opt_str("dialect") or "auto"
    if dialect == "auto":
        dialect = "openai" if any("api.openai.com" in u for u in urls) else "llama.cpp"
    if dialect not in ("openai", "llama.cpp", "vllm"):
        raise ConfigError(node.key("dialect"), f"'{dialect}' is not one of auto, openai, llama.cpp, vllm")
    return BackendSettings(
        name=name,
        type=btype,  # type: ignore[arg-type]
        urls=tuple(urls),
        api_key=node.opt_str("api_key") or None,
        timeouts=timeouts,
        discover=node.opt_bool("discover", False),
        discover_interval=node.opt_float("discover_interval", 60.0, lo=1) or 60.0,
        headers=headers,
        max_connections=node.opt_int("max_connections", 256, lo=1),
        dialect=dialect,  # type: ignore[arg-type]
        resilience=_parse_resilience(node, len(urls)),
        max_event_bytes=node.opt_int("max_event_bytes", defaults.max_event_bytes, lo=_MIN_BUFFER_BYTES),
        max_response_bytes=node.opt_int("max_response_bytes", defaults.max_response_bytes, lo=_MIN_BUFFER_BYTES),
        native_apis=parse_native_apis(node),
    )


_NATIVE_APIS: dict[str, NativeApi] = {"responses": "responses", "messages": "anthropic", "anthropic": "anthropic"}


def parse_native_apis(node: Node) -> frozenset[NativeApi]:
    """`apis: [responses, messages]`: the APIs the backend serves itself, relayed untouched."""
    out: set[NativeApi] = set()
    for i, name in enumerate(node.str_list("apis")):
        api = _NATIVE_APIS.get(name.lower())
        if api is None:
            raise ConfigError(f"{node.key('apis')}[{i}]", f"'{name}' is not one of responses, messages")
        out.add(api)
    return frozenset(out)


_RESILIENCE_KEYS = (
    "retries",
    "retry_budget",
    "backoff",
    "backoff_max",
    "breaker",
    "health_interval",
    "health_path",
    "health_timeout",
)


def _parse_resilience(node: Node, n_urls: int) -> Resilience:
    d = Resilience()
    breaker = node.child("breaker")
    breaker.only({"failures", "cooldown"})
    # replicas are only worth watching when there is another to send requests to meanwhile
    interval = node.opt_float("health_interval", 10.0 if n_urls > 1 else 0.0, lo=0) or 0.0
    path = node.opt_str("health_path")  # None: the backend's own (`HTTPBackend.health_path`)
    return Resilience(
        retries=node.opt_int("retries", d.retries, lo=0, hi=10),
        retry_budget=node.opt_float("retry_budget", d.retry_budget, lo=0) or 0.0,
        backoff=node.opt_float("backoff", d.backoff, lo=0) or 0.0,
        backoff_max=node.opt_float("backoff_max", d.backoff_max, lo=0) or 0.0,
        breaker_failures=breaker.opt_int("failures", d.breaker_failures, lo=0),
        breaker_cooldown=breaker.opt_float("cooldown", d.breaker_cooldown, lo=0) or 0.0,
        health_interval=interval,
        health_path=None if path is None else path if path.startswith("/") else "/" + path,
        health_timeout=node.opt_float("health_timeout", d.health_timeout, lo=0.01) or d.health_timeout,
    )


def _parse_runtime_spec(node: Node, base_dir: Path | None) -> RuntimeSpec:
    node.only(
        {"gguf", "cmd", "ctx", "ttl", "health", "startup_timeout", "env", "threads", "parallel", "restart"}
        | {"apis", "rerank", "options", "mmproj", "pin"}
    )
    gguf = node.opt_str("gguf")
    cmd: tuple[str, ...] | None = None
    if node.has("cmd"):
        cmd = node.command("cmd")
        if not cmd:
            raise ConfigError(node.key("cmd"), "must not be empty")
    if (gguf is None) == (cmd is None):
        raise ConfigError(node.path, "needs exactly one of 'gguf' (a GGUF file) or 'cmd' (a server command)")
    d = RuntimeSpec()
    gguf_path = _resolve_path(gguf, base_dir) if gguf else None
    mmproj = node.value("mmproj")
    if (mmproj is not None and not isinstance(mmproj, str | bool)) or mmproj is True:
        raise ConfigError(node.key("mmproj"), "must be the path of a vision projector GGUF, or false for none")
    for key in ("options", "mmproj"):
        if cmd is not None and node.has(key):
            raise ConfigError(node.key(key), "is for the built-in engine ('gguf'); a 'cmd' takes its own flags")
    return RuntimeSpec(
        options=_parse_engine_options(node) if gguf else (),
        mmproj=_resolve_path(mmproj, base_dir) if isinstance(mmproj, str) else None,
        no_mmproj=mmproj is False,
        pin=node.opt_bool("pin", False),
        gguf=gguf_path,
        cmd=cmd,
        ctx=node.opt_int("ctx", d.ctx, lo=256),
        ttl=node.opt_float("ttl", d.ttl, nullable=False) or 0.0,
        health=node.opt_str("health") or d.health,
        startup_timeout=node.opt_float("startup_timeout", d.startup_timeout, lo=1) or d.startup_timeout,
        env=tuple((str(k), str(v)) for k, v in node.str_map("env").items()),
        threads=node.opt_int("threads", None, lo=1) if node.has("threads") else None,
        parallel=node.opt_int("parallel", None, lo=1) if node.has("parallel") else None,
        restart=_parse_restart(node, d.restart),
        native_apis=parse_native_apis(node) if node.has("apis") else None,
        rerank=node.opt_bool("rerank", False),
    )


def _parse_engine_options(node: Node) -> tuple[tuple[str, bool | int | float | str], ...]:
    """`options`: llama.cpp server options, checked against the installed xllamacpp (engine_options.py)."""
    if not node.has("options"):
        return ()
    raw = node.value("options")
    if not isinstance(raw, Mapping):
        raise ConfigError(
            node.key("options"), f"must be a mapping of llama.cpp server options, not {type(raw).__name__}"
        )
    from ..runtime import engine_options  # imported late: the runtime package imports the config

    try:
        checked = engine_options.check_options(raw, _common_params())
    except engine_options.OptionError as exc:
        raise ConfigError(f"{node.key('options')}.{exc.key}", exc.message) from None
    return tuple(sorted(checked.items()))


@functools.cache
def _common_params() -> Any:
    """One `CommonParams` of the installed xllamacpp, for every check (None without xllamacpp)."""
    from ..runtime import engine_options

    return engine_options.load_params()


def _parse_restart(node: Node, default: RestartMode) -> RestartMode:
    if not node.has("restart"):
        return default
    v = node.value("restart")
    if v == "on-failure":
        return "on-failure"
    if v == "never":
        return "never"
    # YAML reads a bare `no` or `off` as false: say so instead of "not False"
    hint = " (quote it: YAML reads a bare no/off as false)" if isinstance(v, bool) else ""
    raise ConfigError(node.key("restart"), f"must be on-failure or never, not {v!r}{hint}")


def _resolve_path(value: str, base_dir: Path | None) -> Path:
    p = Path(value).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p


def _parse_model(
    name: str, node: Node, backends: Mapping[str, BackendSettings], base_dir: Path | None
) -> ModelSettings:
    node.only(
        {
            "backend",
            "upstream",
            "aliases",
            "fallbacks",
            "runtime",
            "context_length",
            "capabilities",
            "family",
            "parameter_size",
            "quantization_level",
            "template",
            "system",
            *PARAMS_KEYS,
        }
    )
    if not name.strip():
        raise ConfigError(node.path, "a model needs a non-empty name")
    runtime = _parse_runtime_spec(node.child("runtime"), base_dir) if node.has("runtime") else None
    backend = node.opt_str("backend")
    if runtime is not None:
        if backend:
            raise ConfigError(node.key("backend"), "a model with 'runtime' is run by ollamux; drop 'backend'")
        backend = f"runtime:{name}"
    elif not backend:
        raise ConfigError(node.key("backend"), "is required (the name of a backend, or a 'runtime' block)")
    elif backend not in backends:
        known = ", ".join(sorted(backends)) or "none are configured"
        raise ConfigError(node.key("backend"), f"'{backend}' is not a configured backend ({known})")
    caps = node.str_list("capabilities") if node.has("capabilities") else None
    return ModelSettings(
        name=name,
        backend=backend,
        upstream=node.opt_str("upstream"),
        aliases=node.str_list("aliases"),
        fallbacks=node.str_list("fallbacks"),
        runtime=runtime,
        context_length=node.opt_int("context_length", None, lo=1) if node.has("context_length") else None,
        capabilities=caps,
        family=node.opt_str("family"),
        parameter_size=node.opt_str("parameter_size"),
        quantization_level=node.opt_str("quantization_level"),
        template=node.opt_str("template"),
        params=parse_params(node, legacy_system=node.opt_str("system")),
    )


# The floor of runtime.memory_budget: a bare number is bytes, so "12" meant as GiB is an error at load
_MIN_MEMORY_BUDGET = 64 * 1024 * 1024


def _parse_runtime(node: Node, base_dir: Path | None) -> RuntimeSettings:
    node.only(
        {"max_running", "models_dir", "log_dir", "ctx", "ttl", "threads", "hf_endpoint", "options", "preload", "pin"}
        | {"groups", "memory_budget", "parallel"}
    )
    d = RuntimeSettings()
    models_dir = node.opt_str("models_dir")
    log_dir = node.opt_str("log_dir")
    hf_endpoint = node.opt_str("hf_endpoint") or node.environ.get("HF_ENDPOINT") or d.hf_endpoint
    return RuntimeSettings(
        hf_endpoint=parse_url(node.key("hf_endpoint"), hf_endpoint),
        max_running=node.opt_int("max_running", d.max_running, lo=1),
        memory_budget=node.opt_size("memory_budget", lo=_MIN_MEMORY_BUDGET) if node.has("memory_budget") else None,
        models_dir=_resolve_path(models_dir, base_dir) if models_dir else None,
        log_dir=_resolve_path(log_dir, base_dir) if log_dir else d.log_dir,
        ctx=node.opt_int("ctx", d.ctx, lo=256),
        ttl=node.opt_float("ttl", d.ttl) or 0.0,
        threads=node.opt_int("threads", None, lo=1) if node.has("threads") else None,
        parallel=parse_parallel(node),
        options=_parse_engine_options(node),
        preload=node.str_list("preload"),
        pin=node.str_list("pin"),
        groups=_parse_groups(node.child("groups")) if node.has("groups") else (),
    )


def _parse_groups(node: Node) -> tuple[RuntimeGroup, ...]:
    out = []
    for name, g in node.items():
        g.only({"members", "exclusive"})
        members = g.str_list("members")
        if not members:
            raise ConfigError(g.key("members"), "must name at least one model")
        out.append(RuntimeGroup(name=name, members=members, exclusive=g.opt_bool("exclusive", False)))
    return tuple(out)


def _parse_request_log(node: Node, base_dir: Path | None) -> RequestLogSettings:
    node.only(
        {"enabled", "path", "url", "capture_bodies", "body_cap_bytes", "retention_days", "retention_rows", "queue_size"}
    )
    d = RequestLogSettings()
    path = node.opt_str("path")
    url = parse_log_url(node)  # PostgreSQL instead of the file
    return RequestLogSettings(
        url=url[0] if url else None,
        shown_url=url[1] if url else "",
        enabled=node.opt_bool("enabled", d.enabled),
        path=_resolve_path(path, base_dir) if path else d.path,
        capture_bodies=node.opt_bool("capture_bodies", d.capture_bodies),
        body_cap_bytes=node.opt_int("body_cap_bytes", d.body_cap_bytes, lo=0),
        retention_days=node.opt_float("retention_days", d.retention_days, lo=0, nullable=True),
        retention_rows=node.opt_int("retention_rows", d.retention_rows, lo=1)
        if node.has("retention_rows")
        else d.retention_rows,
        queue_size=node.opt_int("queue_size", d.queue_size, lo=1),
    )


def _parse_metrics(node: Node) -> MetricsSettings:
    node.only({"enabled", "backend_probe_interval"})
    d = MetricsSettings()
    return MetricsSettings(
        enabled=node.opt_bool("enabled", d.enabled),
        backend_probe_interval=node.opt_float("backend_probe_interval", d.backend_probe_interval, lo=0) or 0.0,
    )
