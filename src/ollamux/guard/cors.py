"""CORS as Ollama sets it up (gin-contrib/cors with Ollama's origins and headers), plus configured origins.

An Origin that is allowed gets `Access-Control-Allow-Origin: <origin>` on every answer, streamed ones
included (the headers are added in `on_response_prepare`, just before the status line goes out). An
Origin that is not allowed gets 403, as gin-contrib/cors does. A request whose Origin is the server
itself is not a CORS request. Preflights (OPTIONS with an Origin) are answered here, before any key
is asked for: browsers never send credentials on a preflight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["ALLOW_HEADERS", "ALLOW_METHODS", "DEFAULT_ORIGINS", "Cors"]

# envconfig.AllowedOrigins(): OLLAMA_ORIGINS plus these
DEFAULT_ORIGINS: tuple[str, ...] = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)

# server/routes.go: corsConfig.AllowHeaders, plus the two headers ollamux itself reads
ALLOW_HEADERS: tuple[str, ...] = (
    "Authorization",
    "Content-Type",
    "User-Agent",
    "Accept",
    "X-Requested-With",
    "OpenAI-Beta",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-custom-poll-interval",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-poll-helper",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
    "x-api-key",
    "x-request-id",
)
# gin-contrib/cors DefaultConfig()
ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
MAX_AGE = "43200"  # 12 hours, gin-contrib's default
EXPOSE_HEADERS = "x-request-id,Retry-After"  # so browser code can read them on errors


class Cors:
    def __init__(self, extra_origins: Iterable[str]) -> None:
        self.allow_all = False
        exact: set[str] = set()
        wild: list[tuple[str, str]] = []
        for o in (*DEFAULT_ORIGINS, *extra_origins):
            o = o.strip().lower().rstrip("/")
            if o == "*":
                self.allow_all = True
            elif "*" in o:
                i = o.index("*")
                wild.append((o[:i], o[i + 1 :]))  # gin-contrib: a prefix and a suffix around one '*'
            elif o:
                exact.add(o)
        self.exact = frozenset(exact)
        self.wild = tuple(wild)
        self._known_lower = frozenset(h.lower() for h in ALLOW_HEADERS)
        self._cache: dict[str, bool] = {}

    def origin_allowed(self, origin: str) -> bool:
        hit = self._cache.get(origin)
        if hit is not None:
            return hit
        o = origin.strip().lower()
        ok = (
            self.allow_all
            or o in self.exact
            or any(len(o) >= len(p) + len(s) and o.startswith(p) and o.endswith(s) for p, s in self.wild)
        )
        if len(self._cache) < 1024:  # origins seen are few; a flood of made-up ones is not cached
            self._cache[origin] = ok
        return ok

    @staticmethod
    def same_origin(origin: str, host: str | None) -> bool:
        """fetch() sends Origin even to its own server: that is no CORS request (gin-contrib's rule)."""
        return bool(host) and origin in (f"http://{host}", f"https://{host}")

    def preflight_headers(self, origin: str, request_headers: Mapping[str, str]) -> dict[str, str]:
        allow = list(ALLOW_HEADERS)
        # the openai SDKs add x-stainless-* headers over time; Ollama lists them one by one, we take any
        for h in request_headers.get("Access-Control-Request-Headers", "").split(","):
            h = h.strip()
            if h.lower().startswith("x-stainless-") and h.lower() not in self._known_lower:
                allow.append(h)
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ",".join(allow),
            "Access-Control-Max-Age": MAX_AGE,
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }

    @staticmethod
    def response_headers(origin: str) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": EXPOSE_HEADERS,
            "Vary": "Origin",
        }
