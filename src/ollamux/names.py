"""Model names as Ollama spells them: `[host/][namespace/]model[:tag]`, default tag `latest`."""

from __future__ import annotations

__all__ = ["LATEST", "display_name", "normalize_name", "strip_latest"]

LATEST = ":latest"


def normalize_name(name: str) -> str:
    """Lower-case and give a tag: `Llama3.2` -> `llama3.2:latest`; a `host:port/` prefix is no tag."""
    n = name.strip().lower()
    if ":" not in n.rsplit("/", 1)[-1]:
        n += LATEST
    return n


def display_name(name: str) -> str:
    """The name as /api/tags shows it: the configured spelling, always with its tag (`name==model`)."""
    n = name.strip()
    return n if ":" in n.rsplit("/", 1)[-1] else n + LATEST


def strip_latest(name: str) -> str:
    return name[: -len(LATEST)] if name.lower().endswith(LATEST) else name
