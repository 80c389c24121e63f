"""Settings: frozen value objects, built from a YAML file and the environment, never read from globals.

`load_settings(path, environ)` is the only entry point that reads a file. Every validation error names
the key path (`backends.local.url`) and says what is wrong, so `ollamux check` can print it as is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from .names import normalize_name

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_VERSION",
    "ApiKeySettings",
    "AuthSettings",
    "BackendSettings",
    "ConcurrencyLimit",
    "ConfigError",
    "LimitSettings",
    "MetricsSettings",
    "ModelSettings",
    "RequestLogSettings",
    "Resilience",
    "RuntimeSettings",
    "RuntimeSpec",
    "ServerSettings",
    "Settings",
    "Timeouts",
    "default_models_dir",
    "load_settings",
    "parse_settings",
]

DEFAULT_PORT = 11434
# Copilot rejects versions below 0.6.4 and Open WebUI int()s each part: numeric, recent enough.
DEFAULT_VERSION = "0.12.0"

BackendType = Literal["openai", "ollama"]


class ConfigError(ValueError):
    """A config that cannot be served; `key` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Timeouts:
    """Per-backend timeouts in seconds; None means no limit."""

    connect: float | None = 10.0
    first_byte: float | None = None  # until the status line and headers arrive
    idle: float | None = None  # the longest gap between two chunks of a stream
    total: float | None = 600.0


@dataclass(frozen=True)
class Resilience:
    """Retries, circuit breaker and active health checks of one backend (README: Routing and resilience)."""

    retries: int = 2  # extra attempts for a failure before any byte of the answer was sent
    retry_budget: float = 10.0  # seconds all attempts of one request may take on this backend, waits included
    backoff: float = 0.1  # the first wait between attempts; doubles each retry, with jitter
    backoff_max: float = 2.0
    breaker_failures: int = 5  # consecutive failures that open a replica's circuit; 0: no breaker
    breaker_cooldown: float = 10.0  # seconds a tripped replica stays out before one probe request is let through
    health_interval: float = 0.0  # seconds between active health checks of every replica; 0: off
    health_path: str = "/models"  # GET base URL + this; any answer below 500 means healthy
    health_timeout: float = 2.0


@dataclass(frozen=True)
class BackendSettings:
    name: str
    type: BackendType
    urls: tuple[str, ...]
    api_key: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    discover: bool = False
    discover_interval: float = 60.0
    headers: tuple[tuple[str, str], ...] = ()
    max_connections: int = 256
    # which OpenAI dialect the backend speaks: "openai" refuses llama.cpp's extra sampling parameters
    dialect: Literal["openai", "llama.cpp", "vllm"] = "llama.cpp"
    resilience: Resilience = field(default_factory=Resilience)

    @property
    def url(self) -> str:
        return self.urls[0]


@dataclass(frozen=True)
class RuntimeSpec:
    """How ollamux runs a model itself: the built-in llama.cpp engine (`gguf`) or a server command."""

    gguf: Path | None = None
    cmd: tuple[str, ...] | None = None
    ctx: int = 4096
    ttl: float = 300.0
    health: str = "/health"
    startup_timeout: float = 120.0
    env: tuple[tuple[str, str], ...] = ()
    threads: int | None = None
    parallel: int = 1


@dataclass(frozen=True)
class ModelSettings:
    name: str  # as configured; may hold a '*' wildcard
    backend: str  # for a managed model, the synthetic backend named after the model
    upstream: str | None = None  # None: the name the client asked for (wildcards) or the model's own
    aliases: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    runtime: RuntimeSpec | None = None
    context_length: int | None = None
    capabilities: tuple[str, ...] | None = None
    family: str | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None
    template: str | None = None
    system: str | None = None

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.name


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    version: str = DEFAULT_VERSION
    max_body_bytes: int = 64 * 1024 * 1024  # images travel base64 inside JSON bodies
    cors_origins: tuple[str, ...] = ()
    shutdown_grace: float = 10.0


@dataclass(frozen=True)
class RuntimeSettings:
    max_running: int = 1
    models_dir: Path | None = None
    log_dir: Path = field(default_factory=lambda: Path.home() / ".ollamux" / "logs")
    # how the models of models_dir run (a config model's own runtime block says it for that model)
    ctx: int = 4096
    ttl: float = 300.0
    threads: int | None = None


@dataclass(frozen=True)
class RequestLogSettings:
    enabled: bool = True
    path: Path = field(default_factory=lambda: Path.home() / ".ollamux" / "requests.sqlite")
    capture_bodies: bool = False
    body_cap_bytes: int = 64 * 1024
    retention_days: float | None = 30.0
    retention_rows: int | None = 1_000_000
    queue_size: int = 10_000


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = True  # GET /metrics and the per-request counters
    backend_probe_interval: float = 30.0  # seconds between reachability probes (ollamux_backend_up); 0: off


@dataclass(frozen=True)
class ApiKeySettings:
    """One named inbound key. Only its sha256 digest is kept, so no dump of the settings holds the key."""

    name: str
    sha256: bytes = field(repr=False)
    models: tuple[str, ...] = ("*",)  # names or wildcards this key may use
    requests_per_minute: float | None = None  # None: the `limits` default
    tokens_per_minute: float | None = None
    burst: int | None = None  # requests allowed at once before the per-minute rate applies
    token_burst: int | None = None


# What a load balancer or a liveness probe may call without a key.
DEFAULT_PUBLIC_PATHS = ("/", "/api/version", "/health", "/health/ready", "/healthz", "/livez", "/readyz")


@dataclass(frozen=True)
class AuthSettings:
    keys: tuple[ApiKeySettings, ...] = ()  # none: open, as Ollama is
    public_paths: tuple[str, ...] = DEFAULT_PUBLIC_PATHS


@dataclass(frozen=True)
class ConcurrencyLimit:
    max: int  # requests running at once
    queue: int = 0  # requests that may wait for a slot; more get 503 at once
    timeout: float = 30.0  # the longest wait for a slot, then 503


@dataclass(frozen=True)
class LimitSettings:
    # per key without its own values, or per client address when no keys are configured
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst: int | None = None
    token_burst: int | None = None
    max_json_depth: int = 100  # orjson writes at most 254 levels; deeper bodies could never be forwarded
    header_timeout: float | None = 60.0  # aiohttp's keep-alive timer also bounds the wait for headers
    body_timeout: float | None = 120.0
    host_guard: bool | None = None  # None: on when bound to loopback, as Ollama does
    allowed_hosts: tuple[str, ...] = ()
    backend_concurrency: Mapping[str, ConcurrencyLimit] = field(default_factory=dict)
    model_concurrency: Mapping[str, ConcurrencyLimit] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    backends: Mapping[str, BackendSettings] = field(default_factory=dict)
    models: tuple[ModelSettings, ...] = ()
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    request_log: RequestLogSettings = field(default_factory=RequestLogSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    default_model: str | None = None
    source: str | None = None  # the config file it came from, for messages

    def with_server(self, **changes: Any) -> Settings:
        return replace(self, server=replace(self.server, **changes))


def default_models_dir(environ: Mapping[str, str]) -> Path:
    """Where `ollamux serve` looks for GGUF files when nothing else is configured (setup puts SmolLM2 here)."""
    override = environ.get("OLLAMUX_MODELS")
    return Path(override).expanduser() if override else Path.home() / ".ollamux" / "models"


# ---------------------------------------------------------------------------------------------- parsing

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# ${PORT} and ${CTX} in a runtime command are filled by ollamux when it starts the process.
_RUNTIME_VARS = frozenset({"PORT", "CTX", "MODEL", "HOST"})


def load_settings(path: str | os.PathLike[str], environ: Mapping[str, str]) -> Settings:
    """Read and validate a YAML config file; raise ConfigError naming the key on any problem."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {p}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{p} is not valid YAML: {exc}") from None
    settings = parse_settings(raw if raw is not None else {}, environ, base_dir=p.parent)
    return replace(settings, source=str(p))


def parse_settings(raw: Any, environ: Mapping[str, str], *, base_dir: Path | None = None) -> Settings:
    root = _Node("", raw, environ)
    root.only({"server", "backends", "models", "runtime", "default_model", "request_log",
               "metrics", "auth", "limits"})
    server = _parse_server(root.child("server"))
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
    auth = _parse_auth(root.child("auth"))
    limits = _parse_limits(root.child("limits"), backends)
    return Settings(
        auth=auth,
        limits=limits,
        server=server,
        backends=backends,
        models=tuple(models),
        runtime=runtime,
        request_log=request_log,
        metrics=metrics,
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


def _parse_server(node: _Node) -> ServerSettings:
    node.only({"host", "port", "version", "max_body_bytes", "cors_origins", "shutdown_grace"})
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
    )


def _parse_url(key: str, value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ConfigError(key, f"'{value}' is not an http:// or https:// URL")
    return value.rstrip("/")


def _parse_backend(name: str, node: _Node) -> BackendSettings:
    node.only(
        {"type", "url", "urls", "api_key", "timeout", "connect_timeout", "first_byte_timeout",
         "idle_timeout", "discover", "discover_interval", "headers", "max_connections", "dialect",
         *_RESILIENCE_KEYS}
    )
    btype = node.opt_str("type") or "openai"
    if btype not in ("openai", "ollama"):
        raise ConfigError(node.key("type"), f"'{btype}' is not a backend type (use 'openai' or 'ollama')")
    urls: list[str] = []
    if node.has("url"):
        urls.append(_parse_url(node.key("url"), node.req_str("url")))
    for i, u in enumerate(node.str_list("urls")):
        urls.append(_parse_url(f"{node.key('urls')}[{i}]", u))
    if not urls:
        raise ConfigError(node.key("url"), "is required (the backend's base URL, e.g. http://127.0.0.1:8080/v1)")
    d = Timeouts()
    timeouts = Timeouts(
        connect=node.opt_float("connect_timeout", d.connect, lo=0, nullable=True),
        first_byte=node.opt_float("first_byte_timeout", d.first_byte, lo=0, nullable=True),
        idle=node.opt_float("idle_timeout", d.idle, lo=0, nullable=True),
        total=node.opt_float("timeout", d.total, lo=0, nullable=True),
    )
    headers = tuple((str(k), str(v)) for k, v in node.str_map("headers").items())
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
        resilience=_parse_resilience(node, btype, len(urls)),
    )


_RESILIENCE_KEYS = ("retries", "retry_budget", "backoff", "backoff_max", "breaker", "health_interval",
                    "health_path", "health_timeout")


def _parse_resilience(node: _Node, btype: str, n_urls: int) -> Resilience:
    d = Resilience()
    breaker = node.child("breaker")
    breaker.only({"failures", "cooldown"})
    # replicas are only worth watching when there is another to send requests to meanwhile
    interval = node.opt_float("health_interval", 10.0 if n_urls > 1 else 0.0, lo=0) or 0.0
    path = node.opt_str("health_path") or ("/api/version" if btype == "ollama" else d.health_path)
    return Resilience(
        retries=node.opt_int("retries", d.retries, lo=0, hi=10),
        retry_budget=node.opt_float("retry_budget", d.retry_budget, lo=0) or 0.0,
        backoff=node.opt_float("backoff", d.backoff, lo=0) or 0.0,
        backoff_max=node.opt_float("backoff_max", d.backoff_max, lo=0) or 0.0,
        breaker_failures=breaker.opt_int("failures", d.breaker_failures, lo=0),
        breaker_cooldown=breaker.opt_float("cooldown", d.breaker_cooldown, lo=0) or 0.0,
        health_interval=interval,
        health_path=path if path.startswith("/") else "/" + path,
        health_timeout=node.opt_float("health_timeout", d.health_timeout, lo=0.01) or d.health_timeout,
    )


def _parse_runtime_spec(node: _Node, base_dir: Path | None) -> RuntimeSpec:
    node.only({"gguf", "cmd", "ctx", "ttl", "health", "startup_timeout", "env", "threads", "parallel"})
    gguf = node.opt_str("gguf")
    cmd: tuple[str, ...] | None = None
    if node.has("cmd"):
        raw_cmd = node.value("cmd")
        if isinstance(raw_cmd, str):
            import shlex

            cmd = tuple(shlex.split(raw_cmd))
        else:
            cmd = node.str_list("cmd", runtime_vars=True)
        if not cmd:
            raise ConfigError(node.key("cmd"), "must not be empty")
    if (gguf is None) == (cmd is None):
        raise ConfigError(node.path, "needs exactly one of 'gguf' (a GGUF file) or 'cmd' (a server command)")
    d = RuntimeSpec()
    gguf_path = _resolve_path(gguf, base_dir) if gguf else None
    return RuntimeSpec(
        gguf=gguf_path,
        cmd=cmd,
        ctx=node.opt_int("ctx", d.ctx, lo=256),
        ttl=node.opt_float("ttl", d.ttl, nullable=False) or 0.0,
        health=node.opt_str("health") or d.health,
        startup_timeout=node.opt_float("startup_timeout", d.startup_timeout, lo=1) or d.startup_timeout,
        env=tuple((str(k), str(v)) for k, v in node.str_map("env").items()),
        threads=node.opt_int("threads", None, lo=1) if node.has("threads") else None,
        parallel=node.opt_int("parallel", 1, lo=1),
    )


def _resolve_path(value: str, base_dir: Path | None) -> Path:
    p = Path(value).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p


def _parse_model(
    name: str, node: _Node, backends: Mapping[str, BackendSettings], base_dir: Path | None
) -> ModelSettings:
    node.only(
        {"backend", "upstream", "aliases", "fallbacks", "runtime", "context_length", "capabilities",
         "family", "parameter_size", "quantization_level", "template", "system"}
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
        system=node.opt_str("system"),
    )


def _parse_runtime(node: _Node, base_dir: Path | None) -> RuntimeSettings:
    node.only({"max_running", "models_dir", "log_dir", "ctx", "ttl", "threads"})
    d = RuntimeSettings()
    models_dir = node.opt_str("models_dir")
    log_dir = node.opt_str("log_dir")
    return RuntimeSettings(
        max_running=node.opt_int("max_running", d.max_running, lo=1),
        models_dir=_resolve_path(models_dir, base_dir) if models_dir else None,
        log_dir=_resolve_path(log_dir, base_dir) if log_dir else d.log_dir,
        ctx=node.opt_int("ctx", d.ctx, lo=256),
        ttl=node.opt_float("ttl", d.ttl) or 0.0,
        threads=node.opt_int("threads", None, lo=1) if node.has("threads") else None,
    )


def _parse_request_log(node: _Node, base_dir: Path | None) -> RequestLogSettings:
    node.only({"enabled", "path", "capture_bodies", "body_cap_bytes", "retention_days", "retention_rows",
               "queue_size"})
    d = RequestLogSettings()
    path = node.opt_str("path")
    return RequestLogSettings(
        enabled=node.opt_bool("enabled", d.enabled),
        path=_resolve_path(path, base_dir) if path else d.path,
        capture_bodies=node.opt_bool("capture_bodies", d.capture_bodies),
        body_cap_bytes=node.opt_int("body_cap_bytes", d.body_cap_bytes, lo=0),
        retention_days=node.opt_float("retention_days", d.retention_days, lo=0, nullable=True),
        retention_rows=node.opt_int("retention_rows", d.retention_rows, lo=1) if node.has("retention_rows")
        else d.retention_rows,
        queue_size=node.opt_int("queue_size", d.queue_size, lo=1),
    )


def _parse_metrics(node: _Node) -> MetricsSettings:
    node.only({"enabled", "backend_probe_interval"})
    d = MetricsSettings()
    return MetricsSettings(
        enabled=node.opt_bool("enabled", d.enabled),
        backend_probe_interval=node.opt_float("backend_probe_interval", d.backend_probe_interval, lo=0) or 0.0,
    )


def _parse_rates(node: _Node) -> dict[str, Any]:
    rpm = node.opt_float("requests_per_minute", None, lo=0.001, nullable=True)
    tpm = node.opt_float("tokens_per_minute", None, lo=0.001, nullable=True)
    return {
        "requests_per_minute": rpm,
        "tokens_per_minute": tpm,
        "burst": node.opt_int("burst", None, lo=1),
        "token_burst": node.opt_int("token_burst", None, lo=1),
    }


def _parse_auth(node: _Node) -> AuthSettings:
    import hashlib

    node.only({"keys", "public_paths"})
    keys: list[ApiKeySettings] = []
    seen: dict[bytes, str] = {}
    for name, kn in node.child("keys").items():
        kn.only({"key", "key_sha256", "models", "requests_per_minute", "tokens_per_minute", "burst",
                 "token_burst"})
        if kn.has("key") == kn.has("key_sha256"):
            raise ConfigError(kn.path, "needs exactly one of 'key' (the key itself) or 'key_sha256' (its hex digest)")
        if kn.has("key"):
            plain = kn.req_str("key")
            if len(plain) < 8:
                raise ConfigError(kn.key("key"), "is too short to be a key (use at least 8 characters)")
            digest = hashlib.sha256(plain.encode("utf-8")).digest()
        else:
            hexd = kn.req_str("key_sha256").strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", hexd):
                raise ConfigError(kn.key("key_sha256"), "must be 64 hex digits (sha256 of the key)")
            digest = bytes.fromhex(hexd)
        if digest in seen:
            raise ConfigError(kn.path, f"has the same key as '{seen[digest]}'")
        seen[digest] = name
        models = kn.str_list("models") if kn.has("models") else ("*",)
        keys.append(ApiKeySettings(name=name, sha256=digest, models=models, **_parse_rates(kn)))
    public = node.str_list("public_paths") if node.has("public_paths") else DEFAULT_PUBLIC_PATHS
    return AuthSettings(keys=tuple(keys), public_paths=public)


def _parse_concurrency(node: _Node) -> ConcurrencyLimit:
    node.only({"max", "queue", "timeout"})
    if not node.has("max"):
        raise ConfigError(node.key("max"), "is required (requests running at once)")
    return ConcurrencyLimit(
        max=node.opt_int("max", 1, lo=1),
        queue=node.opt_int("queue", 0, lo=0),
        timeout=node.opt_float("timeout", 30.0, lo=0) or 0.0,
    )


def _parse_limits(node: _Node, backends: Mapping[str, BackendSettings]) -> LimitSettings:
    node.only({"requests_per_minute", "tokens_per_minute", "burst", "token_burst", "max_json_depth",
               "header_timeout", "body_timeout", "host_guard", "allowed_hosts", "concurrency"})
    d = LimitSettings()
    conc = node.child("concurrency")
    conc.only({"backends", "models"})
    backend_limits: dict[str, ConcurrencyLimit] = {}
    for name, cn in conc.child("backends").items():
        if name not in backends:
            known = ", ".join(sorted(backends)) or "none are configured"
            raise ConfigError(cn.path, f"'{name}' is not a configured backend ({known})")
        backend_limits[name] = _parse_concurrency(cn)
    model_limits = {normalize_name(name): _parse_concurrency(cn) for name, cn in conc.child("models").items()}
    host_guard: bool | None = None
    if node.has("host_guard") and str(node.value("host_guard")).lower() != "auto":
        host_guard = node.opt_bool("host_guard", True)
    return LimitSettings(
        **_parse_rates(node),
        max_json_depth=node.opt_int("max_json_depth", d.max_json_depth, lo=2, hi=250),
        header_timeout=node.opt_float("header_timeout", d.header_timeout, lo=1, nullable=True),
        body_timeout=node.opt_float("body_timeout", d.body_timeout, lo=0.1, nullable=True),
        host_guard=host_guard,
        allowed_hosts=tuple(h.lower() for h in node.str_list("allowed_hosts")),
        backend_concurrency=backend_limits,
        model_concurrency=model_limits,
    )


class _Node:
    """A mapping in the YAML tree that knows its dotted path, for error messages."""

    def __init__(self, path: str, value: Any, environ: Mapping[str, str]) -> None:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(path or "(top level)", f"must be a mapping, not {type(value).__name__}")
        self.path = path
        self.data: dict[str, Any] = {str(k): v for k, v in value.items()}
        self.environ = environ

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def value(self, name: str) -> Any:
        return self.data.get(name)

    def only(self, allowed: set[str]) -> None:
        for k in self.data:
            if k not in allowed:
                raise ConfigError(self.key(k), f"unknown key (known here: {', '.join(sorted(allowed))})")

    def child(self, name: str) -> _Node:
        return _Node(self.key(name), self.data.get(name), self.environ)

    def items(self) -> list[tuple[str, _Node]]:
        return [(k, _Node(self.key(k), v, self.environ)) for k, v in self.data.items()]

    def expand(self, key: str, text: str, *, runtime_vars: bool = False) -> str:
        def sub(m: re.Match[str]) -> str:
            var = m.group(1)
            if runtime_vars and var in _RUNTIME_VARS:
                return m.group(0)
            if var not in self.environ:
                raise ConfigError(key, f"environment variable {var} is not set (used as ${{{var}}})")
            return self.environ[var]

        return _VAR.sub(sub, text)

    def opt_str(self, name: str) -> str | None:
        v = self.data.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ConfigError(self.key(name), f"must be a string, not {type(v).__name__}")
        return self.expand(self.key(name), str(v))

    def req_str(self, name: str) -> str:
        v = self.opt_str(name)
        if v is None or not v:
            raise ConfigError(self.key(name), "is required")
        return v

    def opt_bool(self, name: str, default: bool) -> bool:
        v = self.data.get(name)
        if v is None:
            return default
        if isinstance(v, str):
            v = self.expand(self.key(name), v).strip().lower()
            if v in ("true", "yes", "on", "1"):
                return True
            if v in ("false", "no", "off", "0"):
                return False
        if not isinstance(v, bool):
            raise ConfigError(self.key(name), f"must be true or false, not {v!r}")
        return v

    def _number(self, name: str, kind: type, lo: float | None, hi: float | None) -> Any:
        v = self.data.get(name)
        if isinstance(v, str):
            v = self.expand(self.key(name), v)
            try:
                v = kind(v)
            except ValueError:
                raise ConfigError(self.key(name), f"must be a number, not {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not float(v).is_integer()):
            raise ConfigError(self.key(name), f"must be {'an integer' if kind is int else 'a number'}, not {v!r}")
        v = kind(v)
        if lo is not None and v < lo:
            raise ConfigError(self.key(name), f"must be at least {lo}, not {v}")
        if hi is not None and v > hi:
            raise ConfigError(self.key(name), f"must be at most {hi}, not {v}")
        return v

    def opt_int(self, name: str, default: Any, *, lo: int | None = None, hi: int | None = None) -> Any:
        if self.data.get(name) is None:
            return default
        return self._number(name, int, lo, hi)

    def opt_float(
        self, name: str, default: float | None, *, lo: float | None = None, nullable: bool = False
    ) -> float | None:
        if name not in self.data:
            return default
        if self.data[name] is None:
            if nullable:
                return None
            raise ConfigError(self.key(name), "must be a number")
        return float(self._number(name, float, lo, None))

    def str_list(self, name: str, *, runtime_vars: bool = False) -> tuple[str, ...]:
        v = self.data.get(name)
        if v is None:
            return ()
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            raise ConfigError(self.key(name), f"must be a list of strings, not {type(v).__name__}")
        out = []
        for i, item in enumerate(v):
            k = f"{self.key(name)}[{i}]"
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise ConfigError(k, f"must be a string, not {type(item).__name__}")
            out.append(self.expand(k, str(item), runtime_vars=runtime_vars))
        return tuple(out)

    def str_map(self, name: str) -> dict[str, str]:
        v = self.data.get(name)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ConfigError(self.key(name), f"must be a mapping, not {type(v).__name__}")
        return {str(k): self.expand(f"{self.key(name)}.{k}", str(val)) for k, val in v.items()}
