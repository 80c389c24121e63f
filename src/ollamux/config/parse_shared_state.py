"""Parsing `shared_state`: the Redis that holds limits shared by many instances.

    shared_state:
      redis_url: redis://:${REDIS_PASSWORD}@redis:6379/0   # or rediss:// (TLS)
      fail_closed: false      # Redis unreachable: local limits (false) or 503 for limited requests (true)
      key_prefix: "ollamux:"
      timeout: 0.25           # seconds a request may wait on Redis

The URL may hold a password: no message made here repeats the URL as written, only `shown_url` (masked).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from ..masks import mask_url
from .node import Node
from .settings import ConfigError, SharedStateSettings

__all__ = ["parse_shared_state"]

_SCHEMES = ("redis", "rediss")
# what redis-py reads from a URL's query that an operator may need (a private CA for rediss://)
_QUERY_KEYS = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_check_hostname"})


def parse_shared_state(node: Node) -> SharedStateSettings | None:
    """None when the section is absent: every limit stays in this process, as before."""
    if not node.data:
        return None
    node.only({"redis_url", "fail_closed", "key_prefix", "timeout"})
    url = node.req_str("redis_url")
    key = node.key("redis_url")
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(key, f"'{shown}' is not a valid URL (its port must be a number up to 65535)") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(key, f"'{shown}' must start with redis:// or rediss:// (TLS)")
    if not parts.hostname:
        raise ConfigError(key, f"'{shown}' names no host (redis://host:6379/0)")
    if port == 0:
        raise ConfigError(key, f"'{shown}' has port 0")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigError(key, f"'{shown}' must end in a database number (/0), not '/{db}'")
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _QUERY_KEYS:
            raise ConfigError(
                key, f"query parameter '{name}' is not supported (known: {', '.join(sorted(_QUERY_KEYS))})"
            )
    prefix = node.opt_str("key_prefix")
    return SharedStateSettings(
        redis_url=url,
        shown_url=shown,
        fail_closed=node.opt_bool("fail_closed", False),
        key_prefix="ollamux:" if prefix is None else prefix,
        timeout=node.opt_float("timeout", 0.25, lo=0.001) or 0.25,
    )
