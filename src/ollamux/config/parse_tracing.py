"""`tracing`: OpenTelemetry traces over OTLP/HTTP; the section absent means no tracing at all."""

from __future__ import annotations

from .node import Node
from .settings import ConfigError, TracingSettings

__all__ = ["parse_tracing"]


def parse_tracing(node: Node) -> TracingSettings | None:
    if not node.data:
        return None
    node.only({"otlp_endpoint", "service_name", "sample_ratio", "headers"})
    endpoint = node.opt_str("otlp_endpoint")
    if not endpoint:
        raise ConfigError(
            node.key("otlp_endpoint"), "is required (the collector's URL, e.g. http://127.0.0.1:4318/v1/traces)"
        )
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(node.key("otlp_endpoint"), f"'{endpoint}' is not an http:// or https:// URL")
    d = TracingSettings(otlp_endpoint=endpoint)
    ratio = node.opt_float("sample_ratio", d.sample_ratio, lo=0)
    if ratio is not None and ratio > 1:
        raise ConfigError(node.key("sample_ratio"), f"must be between 0 and 1, not {ratio:g}")
    return TracingSettings(
        otlp_endpoint=endpoint,
        service_name=node.opt_str("service_name") or d.service_name,
        sample_ratio=d.sample_ratio if ratio is None else ratio,
        headers=tuple(node.str_map("headers").items()),
    )
