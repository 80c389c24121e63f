"""Inbound API keys: who is calling, and which models that key may use.

Keys come from `Authorization: Bearer <key>` (what the `openai` client always sends and the `ollama`
client sends with OLLAMA_API_KEY) or `x-api-key`. Only sha256 digests are held, and every configured
digest is compared with `hmac.compare_digest` on every request, so neither the time taken nor an
early exit says which key (or how much of one) matched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import ApiKeySettings
from ..errors import Forbidden, Unauthorized
from ..names import normalize_name, strip_latest
from ..registry import Route

__all__ = ["KeyRing", "ModelPolicy", "presented_key"]

# RFC 6750: a 401 names the scheme the client should use
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ollamux"'}


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent, or None. A non-Bearer Authorization (Basic, ...) falls back to x-api-key."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class ModelPolicy:
    """The models one key may use: exact names (compared as Ollama does, `:latest` implied) or wildcards."""

    __slots__ = ("allow_all", "exact", "patterns")

    def __init__(self, models: Sequence[str]) -> None:
        self.allow_all = any(m.strip() == "*" for m in models)
        self.exact = frozenset(normalize_name(m) for m in models if "*" not in m and "?" not in m)
        self.patterns = tuple(m.strip().lower() for m in models if "*" in m or "?" in m)

    def allows(self, route: Route) -> bool:
        if self.allow_all:
            return True
        # the name asked for, the model it resolved to and that model's aliases all name the same model
        names = {normalize_name(route.requested), route.entry.key}
        names.update(normalize_name(a) for a in route.entry.aliases)
        if names & self.exact:
            return True
        for name in names:
            bare = strip_latest(name)
            for pattern in self.patterns:
                if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(bare, pattern):
                    return True
        return False


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    digest: bytes
    policy: ModelPolicy
    admin: bool = False


class KeyRing:
    """The configured keys; empty means the server is open."""

    def __init__(self, keys: Sequence[ApiKeySettings]) -> None:
        self._keys = tuple(_Key(k.name, k.sha256, ModelPolicy(k.models), k.admin) for k in keys)
        self._by_name = {k.name: k for k in self._keys}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def identify(self, headers: Mapping[str, str]) -> str:
        """The name of the key the client presented; Unauthorized (401) if none or an unknown one."""
        token = presented_key(headers)
        if token is None:
            raise Unauthorized(
                "missing API key: send it as 'Authorization: Bearer <key>' or in an 'x-api-key' header",
                code="missing_api_key",
                headers=_CHALLENGE,
            )
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for k in self._keys:  # no early exit: every key is compared on every request
            if hmac.compare_digest(digest, k.digest):
                found = k.name
        if found is None:
            # never echo the key, not even a prefix: error messages end up in logs
            raise Unauthorized("invalid API key", code="invalid_api_key", headers=_CHALLENGE)
        return found

    def is_admin(self, key_name: str | None) -> bool:
        key = self._by_name.get(key_name) if key_name is not None else None
        return key is not None and key.admin

    def identify_admin(self, headers: Mapping[str, str]) -> str:
        """The name of the admin key presented: 401 without a valid key, 403 for a key without `admin: true`."""
        try:
            name = self.identify(headers)
        except Unauthorized as exc:
            raise Unauthorized(
                f"{exc.message}; the admin API needs a key with 'admin: true' (auth.keys.NAME.admin in the config)",
                code=exc.code,
                headers=_CHALLENGE,
            ) from None
        if not self.is_admin(name):
            raise Forbidden(
                f"API key '{name}' is not an admin key: the admin API needs a key with 'admin: true' "
                "(auth.keys.NAME.admin in the config)",
                code="admin_key_required",
            )
        return name

    def identify_optional(self, headers: Mapping[str, str]) -> str | None:
        """The name of the key presented, or None for none or an unknown one (never a refusal)."""
        try:
            return self.identify(headers)
        except Unauthorized:
            return None

    def authorize(self, key_name: str | None, route: Route) -> None:
        """Forbidden (403) when the key may not use the model the request resolved to."""
        key = self._by_name.get(key_name) if key_name is not None else None
        if key is None:  # a public path that resolves a model cannot happen; refuse rather than allow
            raise Forbidden("this request needs an API key")
        if not key.policy.allows(route):
            raise Forbidden(f"API key '{key.name}' may not use model '{route.requested}'", code="model_not_allowed")
