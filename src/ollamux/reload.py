"""Reloading the config while serving (`kill -HUP`): new requests get the new config, running ones finish
on the objects they started with.

`reload(state, new)` swaps, in one step on the event loop (no await in between), the registry's config
models, aliases and default, the backends, the guard's keys, limits and trusted proxies, and
`state.settings`. A request that already resolved its model holds its `Route`, and a stream holds its
upstream response and backend, so nothing it uses changes under it; backends that were replaced or removed
are closed once no request is left on them (they share the app's one HTTP client, which stays). Managed
models: unchanged ones keep running, changed ones restart with their new spec once idle, removed ones stop
once idle (`ModelManager.reconfigure`).

What was bound or opened at start-up cannot change in place (the listening socket, the TLS files' paths (a
renewed certificate at the same paths is taken by tls.py on its own), the request log, the metrics registry,
the tracer, the shared-state pool, the models folder and the process limits): a change there is logged as
needing a restart, and the running value is kept.

`reload_on_sighup(load)` is the cleanup context `ollamux serve` adds: SIGHUP re-reads the file through
`load` (the same flags and environment as at start-up); a file that does not load is one error line
naming the key, and the server keeps serving its current config. Windows has no SIGHUP: nothing there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from . import discovery
from .api import ops
from .backends import Backend, HTTPBackend, make_backend
from .config import ConfigError, Settings
from .state import STATE, AppState

__all__ = ["Reloaded", "reload", "reload_on_sighup", "restart_only"]

log = logging.getLogger("ollamux.reload")

# Read once, when the server starts: (key shown to the operator, how to read it from Settings)
_RESTART_ONLY: tuple[tuple[str, Callable[[Settings], Any]], ...] = (
    ("server.host", lambda s: s.server.host),
    ("server.port", lambda s: s.server.port),
    ("server.tls_cert", lambda s: s.server.tls_cert),
    ("server.tls_key", lambda s: s.server.tls_key),
    ("server.max_body_bytes", lambda s: s.server.max_body_bytes),
    ("server.shutdown_grace", lambda s: s.server.shutdown_grace),
    ("server.version", lambda s: s.server.version),
    ("server.instance_id", lambda s: s.server.instance_id),  # every log row carries the one read at start
    ("limits.header_timeout", lambda s: s.limits.header_timeout),
    ("request_log", lambda s: s.request_log),
    ("metrics", lambda s: s.metrics),
    ("tracing", lambda s: s.tracing),
    ("shared_state", lambda s: s.shared_state),
    ("runtime", lambda s: s.runtime),  # models_dir, max_running, memory budget, groups: the manager's own
)


def restart_only(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """`new` with every start-up-only value put back to `old`'s, and the keys whose change was undone."""
    changed = [key for key, get in _RESTART_ONLY if get(old) != get(new)]
    o = old.server
    kept = replace(
        new,
        server=replace(
            new.server,
            host=o.host,
            port=o.port,
            tls_cert=o.tls_cert,
            tls_key=o.tls_key,
            max_body_bytes=o.max_body_bytes,
            shutdown_grace=o.shutdown_grace,
            version=o.version,
            instance_id=o.instance_id,
        ),
        limits=replace(new.limits, header_timeout=old.limits.header_timeout),
        request_log=old.request_log,
        metrics=old.metrics,
        tracing=old.tracing,
        shared_state=old.shared_state,
        runtime=old.runtime,
    )
    return kept, changed


@dataclass
class Reloaded:
    """What a reload did, for the operator log (and tests)."""

    restart: list[str] = field(default_factory=list)  # keys whose change needs a restart (kept as they were)
    changes: list[str] = field(default_factory=list)
    retired: list[Backend] = field(default_factory=list)  # replaced or removed: close once unused


async def reload(state: AppState, new: Settings) -> Reloaded:
    """Make `new` the config of the running app for every request from now on (see the module docstring)."""
    old = state.settings
    settings, restart = restart_only(old, new)
    out = Reloaded(restart=restart)
    managed = {n: b for n, b in state.backends.items() if not isinstance(b, HTTPBackend)}  # the runtime's
    backends: dict[str, Backend] = dict(managed)
    for name, bs in settings.backends.items():
        current = state.backends.get(name)
        if isinstance(current, HTTPBackend) and current.settings == bs:
            backends[name] = current  # unchanged: its replicas keep their health and breaker state
            continue
        backends[name] = make_backend(bs, state.client)
        out.changes.append(f"backend '{name}' {'changed' if current is not None else 'added'}")
        if current is not None:
            out.retired.append(current)
    for name, b in state.backends.items():
        if name not in backends:
            out.retired.append(b)
            out.changes.append(f"backend '{name}' removed")
    backend_changes = bool(out.changes)
    out.changes += _named_changes("model", _served(old), _served(settings))
    out.changes += _named_changes("key", {k.name for k in old.auth.keys}, {k.name for k in settings.auth.keys})
    # ------------------------------------------------------------------ the swap: one step, no await
    state.registry.reconfigure(settings.models, settings.default_model)
    state.backends.clear()  # in place: the lifespan closes what this dict holds at shutdown
    state.backends.update(backends)
    state.settings = settings
    if state.guard is not None:
        state.guard.reconfigure(settings)
    for b in out.retired:
        state.discovered_at.pop(b.name, None)
        now = settings.backends.get(b.name)
        if now is None or not now.discover:
            state.registry.set_source(f"backend:{b.name}", [])  # its discovered models go with it
    # ------------------------------------------------------------------ what follows the swap
    if backend_changes:  # a backend came, went or changed: the prober watches the new set
        previous, state.health = state.health, ops.health_monitor(state)
        state.health.start()
        if previous is not None:
            await previous.stop()
    if state.runtime is not None:
        out.changes += await state.runtime.reconfigure(settings)
    elif any(m.runtime is not None for m in settings.models):
        from .runtime import start_runtime  # the first managed model: the manager is built now

        state.runtime = await start_runtime(state)
        out.changes.append("managed models added")
    await discovery.refresh_all(state)  # the backends that list their models, new ones included
    return out


def _served(settings: Settings) -> set[str]:
    """The configured models a backend serves (managed ones report their own changes)."""
    return {m.name for m in settings.models if m.runtime is None}


def _named_changes(what: str, old: set[str], new: set[str]) -> list[str]:
    """Names only: a key's name, never the key."""
    return [f"{what} '{n}' added" for n in sorted(new - old)] + [f"{what} '{n}' removed" for n in sorted(old - new)]


async def _close_when_unused(backend: Backend) -> None:
    """Close a retired backend once the requests still on it have ended (their streams run to the end)."""
    if isinstance(backend, HTTPBackend):
        # the replicas' counters are plain ints that nothing signals on: a slow poll, only while retiring
        while any(r.in_flight for r in backend.replicas):  # noqa: ASYNC110
            await asyncio.sleep(0.5)
    await backend.close()


class _Reloader:
    def __init__(self, state: AppState, load: Callable[[], Settings]) -> None:
        self.state = state
        self.load = load
        self.lock = asyncio.Lock()  # two SIGHUPs in a row: the second reload waits for the first
        self.tasks: set[asyncio.Task[None]] = set()
        # the lifespan lists discovered models periodically only if the first config had such a backend
        self.refreshing = any(bs.discover for bs in state.settings.backends.values())

    def trigger(self) -> None:
        self._spawn(self.run())

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _load(self, source: str) -> Settings:
        # an empty file on a reload is an editor caught between truncating and writing far more often than a
        # wish to serve nothing: refused (a start-up with an empty file still serves the defaults)
        path = Path(source)
        try:
            empty = path.is_file() and not path.read_bytes().strip()
        except OSError:
            empty = False  # the load says why it cannot read it
        if empty:
            raise ConfigError("", f"{source} is empty (saved half way?); write it whole and send SIGHUP again")
        return self.load()

    async def run(self) -> None:
        async with self.lock:
            source = self.state.settings.source or "the config"
            try:
                new = await asyncio.to_thread(self._load, source)  # a file read and a parse: off the loop
            except ConfigError as exc:
                log.error("config reload failed, still serving the previous config: %s", exc)
                return
            except Exception:  # a bug in loading: said, never an unretrieved task exception; nothing swapped
                log.exception("config reload failed, still serving the previous config")
                return
            try:
                done = await reload(self.state, new)
            except Exception:  # a bug here must not take the server down; the old config may be half swapped
                log.exception("config reload from %s failed", source)
                return
            for key in done.restart:
                log.warning("config reload: %s changed, which needs a restart; the running value is kept", key)
            for b in done.retired:
                self._spawn(_close_when_unused(b))
            if not self.refreshing and any(bs.discover for bs in self.state.settings.backends.values()):
                self.refreshing = True
                self._spawn(discovery.run_refresher(self.state))
            s = self.state.settings
            summary = f"{len(s.models)} models, {len(s.backends)} backends, {len(s.auth.keys)} keys"
            what = "; ".join(done.changes)
            log.info("config reloaded from %s: %s%s", source, summary, f" ({what})" if what else "")

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        for t in list(self.tasks):
            with contextlib.suppress(BaseException):
                await t


def reload_on_sighup(load: Callable[[], Settings]) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: while the app serves, SIGHUP reloads the config that `load` reads."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        sighup = getattr(signal, "SIGHUP", None)
        if sighup is None:  # Windows
            yield
            return
        loop = asyncio.get_running_loop()
        reloader = _Reloader(app[STATE], load)
        loop.add_signal_handler(sighup, reloader.trigger)
        try:
            yield
        finally:
            loop.remove_signal_handler(sighup)
            await reloader.close()

    return ctx
