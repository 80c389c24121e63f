"""The model catalogue: names, `:latest` normalisation, aliases, wildcards, a default, `resolve()`.

Pure: it holds what config says and what discovery reported (handed in by the app); it does no I/O.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import ModelSettings
from .errors import BadRequest, ModelNotFound
from .names import display_name, normalize_name, strip_latest

__all__ = ["ModelEntry", "Registry", "Route", "display_name", "normalize_name"]


@dataclass(frozen=True)
class ModelEntry:
    """One servable model, from config, discovery or a models folder."""

    name: str  # display form, with tag
    backend: str
    upstream: str
    source: str = "config"
    settings: ModelSettings | None = None
    aliases: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)  # backend-reported metadata (Ollama details...)

    @property
    def key(self) -> str:
        return normalize_name(self.name)


@dataclass(frozen=True)
class Route:
    """Where one request goes: the entry that matched, and the model name to send upstream."""

    requested: str  # exactly as the client sent it (responses echo this)
    entry: ModelEntry
    upstream: str

    @property
    def backend(self) -> str:
        return self.entry.backend


class Registry:
    """Resolves client model names; discovery sources can be replaced at any time from the event loop."""

    def __init__(self, models: Sequence[ModelSettings], default_model: str | None = None) -> None:
        self._default = default_model
        self._exact: dict[str, ModelEntry] = {}
        self._wildcards: list[tuple[str, ModelSettings]] = []
        self._sources: dict[str, dict[str, ModelEntry]] = {}
        self._lock = threading.Lock()
        for m in models:
            if m.is_wildcard:
                self._wildcards.append((m.name.lower(), m))
                continue
            entry = ModelEntry(
                name=display_name(m.name),
                backend=m.backend,
                upstream=m.upstream or m.name,
                source="config",
                settings=m,
                aliases=m.aliases,
            )
            self._exact[entry.key] = entry
            for alias in m.aliases:
                self._exact[normalize_name(alias)] = entry

    # ------------------------------------------------------------------------------ discovery sources
    def set_source(self, source: str, entries: Iterable[ModelEntry]) -> None:
        """Replace everything a discovery source (a backend's model list, a models folder) reported."""
        table = {e.key: e for e in entries}
        with self._lock:
            self._sources[source] = table

    def source(self, source: str) -> list[ModelEntry]:
        return list(self._sources.get(source, {}).values())

    # ------------------------------------------------------------------------------------- lookups
    def resolve(self, requested: str | None) -> Route:
        """Find the route for a client's model name; raises ModelNotFound (404) or BadRequest (400)."""
        name = requested if isinstance(requested, str) else ""
        if not name.strip():
            if self._default:
                return self._resolve(self._default, requested_as=self._default)
            raise BadRequest("model is required")
        return self._resolve(name, requested_as=name)

    def _resolve(self, name: str, *, requested_as: str) -> Route:
        key = normalize_name(name)
        entry = self._exact.get(key)
        if entry is not None:
            return Route(requested_as, entry, entry.upstream)
        for table in self._sources.values():
            entry = table.get(key)
            if entry is not None:
                return Route(requested_as, entry, entry.upstream)
        bare = strip_latest(key)
        for pattern, m in self._wildcards:
            if fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(bare, pattern):
                # Open WebUI appends ':latest' to untagged names; the upstream never heard of that tag.
                upstream = m.upstream or strip_latest(name.strip())
                entry = ModelEntry(
                    name=display_name(name.strip()),
                    backend=m.backend,
                    upstream=upstream,
                    source="wildcard",
                    settings=m,
                )
                return Route(requested_as, entry, upstream)
        raise ModelNotFound(name)

    def find(self, name: str) -> ModelEntry | None:
        try:
            return self._resolve(name, requested_as=name).entry
        except ModelNotFound:
            return None

    def entries(self) -> list[ModelEntry]:
        """Every listable model once: config first, then each discovery source (config wins on clashes)."""
        seen: dict[str, ModelEntry] = {}
        for e in self._exact.values():
            seen.setdefault(e.key, e)
        for table in list(self._sources.values()):
            for e in table.values():
                seen.setdefault(e.key, e)
        return list(seen.values())
