"""The model catalogue: names, `:latest` normalisation, aliases, wildcards, a default, `resolve()`.

Pure: it holds what config says and what discovery reported (handed in by the app); it does no I/O.
"""

from __future__ import annotations

import difflib
import fnmatch
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .config import ModelSettings
from .errors import BadRequest, ModelNotFound
from .names import display_name, normalize_name, strip_latest

__all__ = ["CREATED_SOURCE", "SUGGESTIONS", "ModelEntry", "Registry", "Route", "display_name", "normalize_name"]

SUGGESTIONS = 5  # names a 404 for an unknown model lists
CREATED_SOURCE = "created"  # the source of the models made with /api/copy and /api/create


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
    alias_of: str | None = None  # a configured alias listed as a model of its own: the name it stands for

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
        # the models made through the API (copy, create) answer before any discovered one of the same name
        self._sources: dict[str, dict[str, ModelEntry]] = {CREATED_SOURCE: {}}
        self._lock = threading.Lock()
        self.reconfigure(models, default_model)

    def reconfigure(self, models: Sequence[ModelSettings], default_model: str | None) -> None:
        """Replace what the config says (its models, aliases, wildcards, default), in one step; what discovery
        and the models folder reported stays. A config reload (`reload.py`) calls it for new requests:
        routes already resolved keep the entries they hold."""
        exact: dict[str, ModelEntry] = {}
        wildcards: list[tuple[str, ModelSettings]] = []
        for m in models:
            if m.is_wildcard:
                wildcards.append((m.name.lower(), m))
                continue
            entry = ModelEntry(
                name=display_name(m.name),
                backend=m.backend,
                upstream=m.upstream or m.name,
                source="config",
                settings=m,
                aliases=m.aliases,
            )
            exact[entry.key] = entry
            for alias in m.aliases:
                exact[normalize_name(alias)] = entry
        self._default, self._exact, self._wildcards = default_model, exact, wildcards

    # ------------------------------------------------------------------------------ discovery sources
    def set_source(self, source: str, entries: Iterable[ModelEntry]) -> None:
        """Replace everything a discovery source (a backend's model list, a models folder) reported."""
        listed = list(entries)
        table = {e.key: e for e in listed}
        for e in listed:  # its aliases resolve to it (a pulled model's other spellings), unlisted
            for alias in e.aliases:
                table.setdefault(normalize_name(alias), e)
        with self._lock:
            self._sources[source] = table

    def source(self, source: str) -> list[ModelEntry]:
        return list({e.key: e for e in self._sources.get(source, {}).values()}.values())

    # ------------------------------------------------------------------------------------- lookups
    def resolve(self, requested: str | None) -> Route:
        """Find the route for a client's model name; raises ModelNotFound (404) or BadRequest (400)."""
        name = requested if isinstance(requested, str) else ""
        if not name.strip():
            if self._default:
                name = self._default
            else:
                raise BadRequest("model is required")
        route = self._resolve(name, requested_as=name)
        if route is None:
            raise ModelNotFound(name, self.suggest(name))
        return route

    def suggest(self, name: str, limit: int = SUGGESTIONS) -> list[str]:
        """Up to `limit` listed names closest to `name` (difflib's ratio, closest first) for a 404's message."""
        names = {normalize_name(e.name): e.name for e in self.entries(aliases=True)}
        close = difflib.get_close_matches(normalize_name(name), list(names), n=limit, cutoff=0.0)
        return [names[k] for k in close]

    def _resolve(self, name: str, *, requested_as: str) -> Route | None:
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
        return None

    def find(self, name: str) -> ModelEntry | None:
        route = self._resolve(name, requested_as=name)
        return route.entry if route is not None else None

    def entries(self, *, aliases: bool = False) -> list[ModelEntry]:
        """Every listable model once: config first, then each discovery source (config wins on clashes).

        With `aliases`, each configured alias is listed too, after its model and with its details (the
        same backend and upstream), as a name of its own: clients that check a model against the list
        (LangChain's validate_model_on_init, Open WebUI's picker) reject a name they cannot find there."""
        seen: dict[str, ModelEntry] = {}
        for key, e in self._exact.items():
            if key == e.key:
                seen.setdefault(key, e)
            elif aliases:
                seen.setdefault(key, replace(e, name=display_name(_spelling(e, key)), alias_of=e.name))
        for table in list(self._sources.values()):
            for e in table.values():
                seen.setdefault(e.key, e)
        return list(seen.values())


def _spelling(entry: ModelEntry, key: str) -> str:
    """The alias as configured (its case), found by its key."""
    return next((a for a in entry.aliases if normalize_name(a) == key), key)
