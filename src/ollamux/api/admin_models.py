"""Models over the admin API: every served name with its source and, for managed ones, its process state;
load and unload buttons; a managed model's log file, tailed and followed.

The listing is the registry's (`entries(aliases=True)`, what /api/tags and /v1/models list to an open
server) with the catalogue's metadata (`catalog.meta_for`, the same merge /api/tags uses); the state of
managed models comes from the manager's own views (`statuses()`, `running()`, `loading()`).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import discovery
from ..catalog import meta_for
from ..errors import BadRequest, ModelNotFound, OllamuxError
from ..jsonutil import loads_object
from ..registry import CREATED_SOURCE, ModelEntry
from ..runtime.manager import ManagedModel, ModelManager
from ..runtime.model import LoadingModel, ModelStatus, RunningModel
from ..state import AppState
from ..translate.to_openai import parse_keep_alive
from .admin_common import ADMIN, json_ok, query_int, start_stream

__all__ = ["list_models", "load", "model_log", "unload"]

LOG_POLL = 0.3  # seconds between looks at a followed log file's size
_READ_CHUNK = 64 * 1024
_TAIL_MAX_BYTES = 4 * 1024 * 1024  # however many lines are asked for, the tail reads at most this much


def _source(entry: ModelEntry, managed: bool) -> str:
    if entry.alias_of is not None:
        return "alias"
    if entry.source == CREATED_SOURCE:
        return "created"
    if managed:
        return "managed"
    if entry.source == "discovered" or entry.source.startswith("backend:"):
        return "discovered"
    return "configured"


def _state_word(status: str) -> str:
    return "loading" if status == "starting" else status  # the page's word for a model on its way up


@dataclass(frozen=True)
class _Views:
    """The manager's views, taken once per listing."""

    statuses: dict[str, ModelStatus]  # by model name
    running: dict[str, RunningModel]  # by backend
    loading: dict[str, LoadingModel]  # by backend

    @classmethod
    def of(cls, rt: ModelManager) -> _Views:
        return cls(
            {s.model: s for s in rt.statuses()},
            {r.entry.backend: r for r in rt.running()},
            {lm.entry.backend: lm for lm in rt.loading()},
        )


def _managed(rt: ModelManager, views: _Views, m: ManagedModel, load_errors: dict[str, str]) -> dict[str, Any]:
    st = views.statuses.get(m.name)
    run, up = views.running.get(m.backend), views.loading.get(m.backend)
    word = _state_word(st.state) if st is not None else "stopped"
    return {
        "state": word,
        "memory_bytes": run.size if run is not None else up.size if up is not None else None,
        "ctx": st.ctx if st is not None else None,
        "expires_at": run.expires_at if run is not None else None,
        "pinned": m.spec.pin,
        "loading_stage": up.stage if up is not None else None,
        # why its last start from the dashboard failed, while it stays failed
        "error": load_errors.get(m.backend) if word == "failed" else None,
        "log": _log_path(rt, m).is_file(),
        "pid": st.pid if st is not None else None,
    }


def _log_path(rt: ModelManager, m: ManagedModel) -> Path:
    return rt.settings.log_dir / m.log_name


def model_items(state: AppState, load_errors: dict[str, str]) -> list[dict[str, Any]]:
    rt = state.runtime
    views = _Views.of(rt) if rt is not None else None
    out = []
    for entry in state.registry.entries(aliases=True):
        m = rt.models.get(entry.backend) if rt is not None else None
        managed = m is not None and not m.removed
        meta = meta_for(entry, state.probed.get((entry.backend, entry.upstream)), state.started_at)
        item: dict[str, Any] = {
            "name": entry.name,
            "backend": entry.backend,
            "source": _source(entry, managed),
            "aliases": list(entry.aliases),
            "alias_of": entry.alias_of,
            "capabilities": list(meta.capabilities),
            "context_length": meta.context_length if meta.context_known else None,
            "managed": None,
        }
        if rt is not None and views is not None and m is not None and managed:
            item["managed"] = _managed(rt, views, m, load_errors)
        out.append(item)
    out.sort(key=lambda i: i["name"].lower())
    return out


async def list_models(request: web.Request, state: AppState) -> web.StreamResponse:
    await discovery.refresh_if_stale(state)
    return json_ok({"models": model_items(state, request.app[ADMIN].load_errors)})


def _managed_model(state: AppState, name: str) -> tuple[ModelManager, ManagedModel, ModelEntry]:
    entry = state.registry.find(name)
    if entry is None:
        raise ModelNotFound(name, state.registry.suggest(name))
    rt = state.runtime
    m = rt.models.get(entry.backend) if rt is not None else None
    if rt is None or m is None or m.removed:
        raise BadRequest(
            f"model '{entry.name}' is served by backend '{entry.backend}', not run by ollamux itself: only "
            "managed models (runtime: in the config, or the models folder) can be loaded, unloaded or have a log",
            code="not_managed",
        )
    return rt, m, entry


def _status_of(rt: ModelManager, m: ManagedModel) -> str:
    st = next((s for s in rt.statuses() if s.model == m.name), None)
    return _state_word(st.state) if st is not None else "stopped"


async def load(request: web.Request, state: AppState) -> web.StreamResponse:
    """Start a managed model and wait until it is ready; its start's error (500/503) otherwise."""
    rt, m, entry = _managed_model(state, request.match_info["name"])
    raw = await request.read()
    body = loads_object(raw) if raw.strip() else {}
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    errors = request.app[ADMIN].load_errors
    try:
        await rt.load(m.backend, keep_alive=keep_alive)
    except OllamuxError as exc:
        errors[m.backend] = exc.message
        raise
    errors.pop(m.backend, None)
    return json_ok({"name": entry.name, "state": _status_of(rt, m)})


async def unload(request: web.Request, state: AppState) -> web.StreamResponse:
    """Stop a managed model now (or, when requests are using it, as soon as they end)."""
    rt, m, entry = _managed_model(state, request.match_info["name"])
    await rt.unload(m.backend)
    return json_ok({"name": entry.name, "state": _status_of(rt, m)})


# ------------------------------------------------------------------------------------------- logs
def _tail(path: Path, lines: int) -> tuple[bytes, int, int]:
    """The last `lines` lines of the file, its size when read and its inode (to notice a new file)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        size = st.st_size
        pos, data = size, b""
        # from the end back, a block at a time, until enough line breaks (one more than lines: the last
        # line usually ends in one) or the start of the file
        while pos > 0 and data.count(b"\n") <= lines and size - pos < _TAIL_MAX_BYTES:
            step = min(_READ_CHUNK, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    kept = data.splitlines(keepends=True)[-lines:] if lines else []
    return b"".join(kept), size, st.st_ino


def _read_from(path: Path, pos: int, ino: int) -> tuple[bytes, int, int]:
    """What was appended after `pos`; from the start when the file was replaced or truncated (rotation,
    a new start that rewrote it). Missing for now: nothing, same position."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return b"", pos, ino
    if st.st_ino != ino or st.st_size < pos:
        pos, ino = 0, st.st_ino
    if st.st_size == pos:
        return b"", pos, ino
    with open(path, "rb") as f:
        f.seek(pos)
        data = f.read(min(st.st_size - pos, 1024 * 1024))
    return data, pos + len(data), ino


async def model_log(request: web.Request, state: AppState) -> web.StreamResponse:
    """`text/plain`: the last `tail` lines of a managed model's log, then, with `follow=1`, every line
    appended, until the client goes. 404 while the model has no log yet (it never started)."""
    rt, m, entry = _managed_model(state, request.match_info["name"])
    q = request.query
    lines = query_int(q, "tail", 200, 0, 100_000)
    follow = q.get("follow", "").strip().lower() in ("1", "true", "yes")
    path = _log_path(rt, m)
    try:
        head, pos, ino = await asyncio.to_thread(_tail, path, lines)
    except FileNotFoundError:
        raise OllamuxError(
            f"model '{entry.name}' has no log yet: it has not been started (its log will be {path.name} in "
            "runtime.log_dir)",
            status=404,
            code="log_not_found",
        ) from None
    resp = await start_stream(request, "text/plain; charset=utf-8")
    if head:
        await resp.write(head)
    closing = request.app[ADMIN].closing
    while follow and not closing.is_set():
        try:
            await asyncio.wait_for(closing.wait(), LOG_POLL)
            break
        except TimeoutError:
            pass
        data, pos, ino = await asyncio.to_thread(_read_from, path, pos, ino)
        if data:
            await resp.write(data)
    await resp.write_eof()
    return resp
