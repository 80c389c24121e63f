"""Parsing the guard's settings: inbound API keys (`auth`) and rate, size and concurrency limits (`limits`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from ..names import normalize_name
from .node import Node
from .settings import (
    DEFAULT_PUBLIC_PATHS,
    ApiKeySettings,
    AuthSettings,
    BackendSettings,
    ConcurrencyLimit,
    ConfigError,
    LimitSettings,
)

__all__ = ["parse_auth", "parse_limits"]


def _parse_rates(node: Node) -> dict[str, Any]:
    rpm = node.opt_float("requests_per_minute", None, lo=0.001, nullable=True)
    tpm = node.opt_float("tokens_per_minute", None, lo=0.001, nullable=True)
    return {
        "requests_per_minute": rpm,
        "tokens_per_minute": tpm,
        "burst": node.opt_int("burst", None, lo=1),
        "token_burst": node.opt_int("token_burst", None, lo=1),
    }


def parse_auth(node: Node) -> AuthSettings:
    node.only({"keys", "public_paths"})
    keys: list[ApiKeySettings] = []
    seen: dict[bytes, str] = {}
    for name, kn in node.child("keys").items():
        kn.only(
            {"key", "key_sha256", "models", "admin", "requests_per_minute", "tokens_per_minute", "burst", "token_burst"}
        )
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
        admin = kn.opt_bool("admin", False)
        keys.append(ApiKeySettings(name=name, sha256=digest, models=models, admin=admin, **_parse_rates(kn)))
    public = node.str_list("public_paths") if node.has("public_paths") else DEFAULT_PUBLIC_PATHS
    return AuthSettings(keys=tuple(keys), public_paths=public)


def _parse_concurrency(node: Node) -> ConcurrencyLimit:
    node.only({"max", "queue", "timeout"})
    if not node.has("max"):
        raise ConfigError(node.key("max"), "is required (requests running at once)")
    return ConcurrencyLimit(
        max=node.opt_int("max", 1, lo=1),
        queue=node.opt_int("queue", 0, lo=0),
        timeout=node.opt_float("timeout", 30.0, lo=0) or 0.0,
    )


def parse_limits(node: Node, backends: Mapping[str, BackendSettings]) -> LimitSettings:
    node.only(
        {
            "requests_per_minute",
            "tokens_per_minute",
            "burst",
            "token_burst",
            "max_json_depth",
            "header_timeout",
            "body_timeout",
            "host_guard",
            "allowed_hosts",
            "concurrency",
        }
    )
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
