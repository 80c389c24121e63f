"""The settings value objects: frozen dataclasses with their defaults, and ConfigError.

Nothing here reads a file or the environment; `parse.py` builds these from YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Literal

DEFAULT_PORT = 11434
# Copilot rejects versions below 0.6.4 and Open WebUI int()s each part: numeric, recent enough.
DEFAULT_VERSION = "0.12.0"

BackendType = Literal["openai", "ollama"]
# APIs beyond chat completions that a backend may serve natively (sent through untouched, not translated
# through the chat-completions pivot): `apis: [responses, messages]` in the config
NativeApi = Literal["responses", "anthropic"]
RestartMode = Literal["on-failure", "never"]
# the header a trusted proxy writes the client's address into (`server.forwarded_header`)
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]


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
    health_path: str | None = None  # GET base URL + this; any answer below 500 means healthy; None: per kind
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
    # Bounds on what the relay holds in memory at once for this backend, so one runaway upstream cannot
    # exhaust the process: the largest single SSE event or NDJSON line of a stream, and the largest
    # non-streamed answer read whole to translate it (pass-through streams are never held whole).
    max_event_bytes: int = 128 * 1024 * 1024  # generous: a 100 MB base64 image or embedding block passes
    max_response_bytes: int = 256 * 1024 * 1024
    native_apis: frozenset[NativeApi] = frozenset()

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
    # requests served at once (llama.cpp's slots); None: runtime.parallel for a chat model (4 unless set),
    # 1 for an embedding or rerank model (runtime/slots.py decides)
    parallel: int | None = None
    # on-failure: a process that crashes while ready is restarted in the background (with backoff);
    # never: it stays failed until a request starts it
    restart: RestartMode = "on-failure"
    # the APIs its server serves itself beyond chat completions; None: the engine's own that are good
    # enough. llama.cpp's server serves the Messages API; its Responses API stream leaves `output_index`
    # out of events the openai SDK's accumulator needs, and it keeps nothing for previous_response_id, so
    # Responses go through the pivot. An arbitrary `cmd` is not assumed to serve either.
    native_apis: frozenset[NativeApi] | None = None
    rerank: bool = False  # start llama.cpp's server in reranking mode (a reranker model, /v1/rerank)
    # llama.cpp server options (xllamacpp CommonParams attributes, dotted when nested), checked at load and
    # normalized by runtime/engine_options.py: (name, JSON scalar) pairs, sorted, so the spec stays hashable
    options: tuple[tuple[str, bool | int | float | str], ...] = ()
    # the vision projector: None finds one beside the model (runtime/vision.py); `mmproj: false` loads none
    mmproj: Path | None = None
    no_mmproj: bool = False
    pin: bool = False  # never evicted to make room, never stopped when idle (ttl is ignored)

    @property
    def apis(self) -> frozenset[NativeApi]:
        if self.native_apis is not None:
            return self.native_apis
        return frozenset({"anthropic"}) if self.gguf is not None else frozenset()


@dataclass(frozen=True)
class ModelDefaults:
    """What a request to a model gets when it does not say otherwise, as a Modelfile's PARAMETER, SYSTEM
    and MESSAGE lines give an Ollama model: the request's own value always wins."""

    options: Mapping[str, Any] = field(default_factory=dict)  # Ollama option names and types (num_predict...)
    system: str | None = None  # a leading system message, added when the request has none
    think: bool | str | None = None
    keep_alive: float | None = None  # seconds; how long a model ollamux runs stays loaded after a request
    messages: tuple[Mapping[str, str], ...] = ()  # a conversation put before the request's own (MESSAGE)


@dataclass(frozen=True)
class ModelParams:
    """A model's request defaults and filters (`defaults`, `strip`, `force` in the config; `create`'s
    parameters, system, messages), applied on every front (`translate.model_params`)."""

    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    # removed from every request (llama-swap's filters.stripParams): Ollama option names, think, format, tools
    strip: frozenset[str] = frozenset()
    # set on every request whatever it says (llama-swap's setParams): Ollama option names and think
    force: Mapping[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        d = self.defaults
        given = (d.options, d.system, d.messages, self.strip, self.force)
        return not any(given) and d.think is None and d.keep_alive is None


NO_PARAMS = ModelParams()


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
    template: str | None = None  # shown by /api/show; the backend's own chat template formats prompts
    params: ModelParams = NO_PARAMS

    @property
    def system(self) -> str | None:
        return self.params.defaults.system

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
    instance_id: str | None = None  # written into every request-log row; None: <hostname>:<port>
    # HTTPS: both or neither (config/parse_tls.py); loaded into the server's SSLContext by ollamux/tls.py
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # reverse proxies whose X-Forwarded-For (or Forwarded) names the client (config/parse_proxies.py,
    # guard/client_addr.py); empty: every client is its peer address and those headers are ignored
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    forwarded_header: ForwardedHeader = "x-forwarded-for"


@dataclass(frozen=True)
class RuntimeGroup:
    """`runtime.groups.NAME`: models that load together; `exclusive`: and run with no model outside it
    (runtime/policy.py has the rules)."""

    name: str
    members: tuple[str, ...]
    exclusive: bool = False


@dataclass(frozen=True)
class RuntimeSettings:
    max_running: int = 1
    # bytes the running models may hold together (their estimates: runtime/memory.py); None: max_running only
    memory_budget: int | None = None
    models_dir: Path | None = None
    log_dir: Path = field(default_factory=lambda: Path.home() / ".ollamux" / "logs")
    # how the models of models_dir run (a config model's own runtime block says it for that model)
    ctx: int = 4096
    ttl: float = 300.0
    threads: int | None = None
    # slots of every chat model without its own runtime.parallel (config, else OLLAMA_NUM_PARALLEL); None: 4
    parallel: int | None = None
    # llama.cpp server options of the models_dir models (a config model's own runtime.options replace them)
    options: tuple[tuple[str, bool | int | float | str], ...] = ()
    preload: tuple[str, ...] = ()  # models started at start-up, in the background, before any request
    pin: tuple[str, ...] = ()  # models_dir models pinned as a config model's `runtime.pin: true` pins it
    groups: tuple[RuntimeGroup, ...] = ()
    # the hub `pull hf.co/...` asks (a mirror, a private hub): the config's, else HF_ENDPOINT, else this
    hf_endpoint: str = "https://huggingface.co"


@dataclass(frozen=True)
class RequestLogSettings:
    enabled: bool = True
    path: Path = field(default_factory=lambda: Path.home() / ".ollamux" / "requests.sqlite")
    capture_bodies: bool = False
    body_cap_bytes: int = 64 * 1024
    retention_days: float | None = 30.0
    retention_rows: int | None = 1_000_000
    queue_size: int = 10_000
    # PostgreSQL instead of the file at `path` (config/parse_log_url.py); it may hold a password: never
    # logged nor shown, `shown_url` is the same URL with the password masked
    url: str | None = field(default=None, repr=False)
    shown_url: str = ""


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
    admin: bool = False  # may use the dashboard's /admin API (with keys on, no other key may)


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
class SharedStateSettings:
    """Rate limits shared by many instances, in Redis (`shared_state`; absent: limits stay in-process)."""

    redis_url: str = field(repr=False)  # may hold a password: never logged nor shown, see `shown_url`
    shown_url: str = ""  # the same URL with its password masked, for the log, readiness and errors
    fail_closed: bool = False  # Redis unreachable: refuse limited requests (503) instead of local limits
    key_prefix: str = "ollamux:"
    timeout: float = 0.25  # the longest a request waits on Redis, in seconds


@dataclass(frozen=True)
class TracingSettings:
    """OpenTelemetry traces sent over OTLP/HTTP (`tracing`; absent: no tracing, opentelemetry never imported)."""

    otlp_endpoint: str  # the collector's traces URL, e.g. http://127.0.0.1:4318/v1/traces
    service_name: str = "ollamux"
    sample_ratio: float = 1.0  # of the traces that start here; an incoming traceparent's decision is kept
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold a collector's token


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
    shared_state: SharedStateSettings | None = None  # None: every limit stays in this process
    tracing: TracingSettings | None = None  # None: no spans, no opentelemetry import
    default_model: str | None = None
    source: str | None = None  # the config file it came from, for messages

    def with_server(self, **changes: Any) -> Settings:
        return replace(self, server=replace(self.server, **changes))


def default_models_dir(environ: Mapping[str, str]) -> Path:
    """Where `ollamux serve` looks for GGUF files when nothing else is configured (setup puts SmolLM2 here)."""
    override = environ.get("OLLAMUX_MODELS")
    return Path(override).expanduser() if override else Path.home() / ".ollamux" / "models"
