"""The catalogue of the models ollamux runs itself: which there are, and what their GGUF files say.

It holds one `ManagedModel` per configured `runtime:` model and per model file of the models folder, and
keeps them, the registry's `models_dir` source and the `probed` metadata (context length, family, size,
digest...) up to date with the disk. Reading the disk (the folder, GGUF headers, the digest cache) is
done in a worker thread that gathers plain values; the loop applies them in one step, so the thread never
touches a model, the registry or `probed`. Running the models is the manager's part: the catalogue only
tells it when a model's file has left the folder (`retire`) and when the folder was applied (`changed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RuntimeSettings, RuntimeSpec, Settings
from ..registry import CREATED_SOURCE, ModelEntry, Registry
from . import models_dir
from .gguf_meta import DigestCache, GGUFInfo, HeaderCache, default_cache_dir
from .memory import kv_shape
from .model import ManagedModel
from .vision import find_mmproj

__all__ = ["SOURCE", "Catalogue"]

log = logging.getLogger("ollamux.runtime")

SOURCE = "models_dir"  # the registry source of the models folder's models


@dataclass(frozen=True)
class _Described:
    """What the scan thread read about one model file; `info` None: unreadable (already logged)."""

    info: GGUFInfo | None
    meta: dict[str, Any]
    digest_stamp: tuple[Path, int, int] | None  # (path, size, mtime_ns) when its digest is still unknown
    mmproj: Path | None = None  # its vision projector (vision.py); its capabilities then list "vision"


@dataclass(frozen=True)
class _FolderScan:
    stamp: int  # models_dir.stamp when it was listed (-1: missing)
    files: list[tuple[models_dir.ModelFile, _Described]]


@dataclass(frozen=True)
class _ScanResult:
    # configured models (first scan only): backend -> (their GGUF file, what it says)
    config: dict[str, tuple[Path | None, _Described | None]]
    folder: _FolderScan | None  # None: no models folder, or it did not change


class Catalogue:
    """The models one manager can run (`models`, by backend), brought up to date with the disk by `rescan`."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        probed: dict[tuple[str, str], Mapping[str, Any]],
        *,
        retire: Callable[[ManagedModel], None],
        changed: Callable[[], None],
        digest_cache: DigestCache | None = None,
    ) -> None:
        self.settings: RuntimeSettings = settings.runtime
        self.registry = registry
        self.probed = probed
        self.digests = digest_cache or DigestCache(default_cache_dir() / "digests.json")
        self.headers = HeaderCache()  # used by the scan thread only
        self._retire = retire  # told of a model whose file left the folder: the manager stops it once idle
        self._changed = changed  # told after each folder scan applied: the app registers the new backends
        self.models: dict[str, ManagedModel] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the scan and the hashing under way: close() cancels them
        self._dir_stamp: int | None = None
        self._closing = False
        self._rescan_task: asyncio.Task[None] | None = None
        self._stale = False  # the next scan must re-read the folder even if its mtime did not change
        self._config_pending = False  # configured GGUF files not described yet (the first scan does it)
        self._hashing: set[tuple[Path, int, int]] = set()  # file versions whose digest was already asked for
        # no disk access here: the first `rescan()` reads the GGUF headers, in a thread
        for m in settings.models:
            if m.runtime is None or m.is_wildcard:
                continue
            entry = registry.find(m.name)
            if entry is None:  # pragma: no cover - config models always resolve
                continue
            self.models[m.backend] = ManagedModel(backend=m.backend, entry=entry, spec=m.runtime, gguf=m.runtime.gguf)
            self._config_pending = True

    async def rescan(self, *, force: bool = False) -> None:
        """Bring the catalogue up to date with the disk, without blocking the loop.

        The first call describes the configured GGUF files; every call re-reads the models folder if its
        modification time changed (or `force`). The disk is read in a worker thread, and only files that
        are new or changed are parsed again. Calls that arrive while a scan runs wait for that scan
        instead of starting another; a forced one that arrives then gets one more scan after it.
        """
        if force:
            self._stale = True
        if self._closing or (self.settings.models_dir is None and not self._config_pending):
            return
        task = self._rescan_task
        if task is not None and not task.done():
            await asyncio.shield(task)
            if not self._stale:
                return
            task = self._rescan_task  # another caller woken with us may have started the next one
            if task is not None and not task.done():
                await asyncio.shield(task)
                return
        task = self._spawn(self._rescan_once(), "rescan models", "rescanning the models")
        self._rescan_task = task
        await asyncio.shield(task)  # a caller that goes away does not cancel the scan others wait for

    async def compute_config_digests(self) -> None:
        """Digests of configured GGUF files (slow once per file, then cached): off the request path."""
        for model in list(self.models.values()):
            if model.entry.source == SOURCE or model.gguf is None:
                continue
            try:
                digest = await asyncio.to_thread(self.digests.get, model.gguf)
            except OSError:
                continue
            key = (model.entry.backend, model.entry.upstream)
            self.probed[key] = {**self.probed.get(key, {}), "digest": digest}

    async def ensure_digest(self, backend: str) -> None:
        """Make the digest of a model's GGUF file known now (hashed once, then cached), as /api/tags shows it.

        The folder's models are otherwise hashed in the background after a scan; a pull of a model already
        served wants its real digest at once.
        """
        model = self.models.get(backend)
        if model is None or model.gguf is None:
            return
        key = (model.entry.backend, model.entry.upstream)
        if model.entry.meta.get("digest") or self.probed.get(key, {}).get("digest"):
            return
        try:
            digest = await asyncio.to_thread(self.digests.get, model.gguf)
        except OSError as exc:
            log.warning("cannot hash %s: %s", model.gguf, exc)
            return
        if model.entry.source == SOURCE:
            await self.rescan(force=True)  # the entry's meta takes the cached digest
        else:
            self.probed[key] = {**self.probed.get(key, {}), "digest": digest}

    async def close(self) -> None:
        """No scan is applied after this: the scan and the hashing under way are cancelled, and awaited."""
        self._closing = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str, what: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %s", what, t.exception())

        task.add_done_callback(done)
        return task

    async def _rescan_once(self) -> None:
        force, self._stale = self._stale, False
        config = [(b, m.name, m.spec) for b, m in self.models.items() if m.entry.source != SOURCE]
        if not self._config_pending:
            config = []
        folder = self.settings.models_dir
        try:
            result = await asyncio.to_thread(self._read_disk, folder, None if force else self._dir_stamp, config)
        except BaseException:
            self._stale = self._stale or force  # the next call retries what this one was asked to do
            raise
        if not self._closing:
            self._apply(result)

    def _read_disk(
        self, folder: Path | None, known_stamp: int | None, config: Sequence[tuple[str, str, RuntimeSpec]]
    ) -> _ScanResult:
        """In a worker thread: everything a scan needs from the disk, as plain values."""
        described: dict[str, tuple[Path | None, _Described | None]] = {}
        for backend, name, spec in config:
            gguf = spec.gguf or _gguf_in(spec.cmd or ())
            # a `cmd:` names its own projector in its flags; a configured one is taken as it is
            mmproj = spec.mmproj or (
                find_mmproj(gguf, shared=True) if gguf and spec.gguf and not spec.no_mmproj else None
            )
            described[backend] = (gguf, self._describe(name, gguf, mmproj=mmproj) if gguf else None)
        scan: _FolderScan | None = None
        if folder is not None:
            stamp = models_dir.stamp(folder)
            # listed after the stamp was taken: a change during the listing makes the next stamp differ
            if stamp != known_stamp:
                files = [
                    # the models folder's own files share it; a pulled repo's folder holds one model's files
                    (
                        f,
                        self._describe(
                            f.name, f.path, f.size, f.mtime, find_mmproj(f.path, shared=f.path.parent == folder)
                        ),
                    )
                    for f in models_dir.scan(folder)
                ]
                scan = _FolderScan(stamp=stamp, files=files)
        return _ScanResult(config=described, folder=scan)

    def _describe(
        self, name: str, path: Path, size: int | None = None, mtime: float | None = None, mmproj: Path | None = None
    ) -> _Described:
        try:
            st = path.stat()
            info: GGUFInfo | None = self.headers.read(path)
        except (OSError, ValueError) as exc:
            log.warning("model '%s': cannot read %s: %s", name, path, exc)
            return _Described(
                info=None, meta={"size": size, "modified_at": mtime} if size is not None else {}, digest_stamp=None
            )
        assert info is not None
        meta = info.meta()
        meta["modified_at"] = st.st_mtime if mtime is None else mtime
        if mmproj is not None and "completion" in meta["capabilities"]:
            meta["capabilities"] = [*meta["capabilities"], "vision"]  # the engine loads it with the model
        else:
            mmproj = None
        digest = self.digests.cached(path)
        if digest:
            meta["digest"] = digest
        stamp = None if digest else (path, st.st_size, st.st_mtime_ns)
        return _Described(info=info, meta=meta, digest_stamp=stamp, mmproj=mmproj)

    def _apply(self, result: _ScanResult) -> None:
        """On the loop, in one step: what the scan thread read becomes the catalogue."""
        for backend, (gguf, d) in result.config.items():
            model = self.models.get(backend)
            if model is None:
                continue
            model.gguf = gguf
            model.mmproj = d.mmproj if d is not None else None
            if d is not None and d.info is not None:
                model.max_ctx, model.size = d.info.context_length or None, d.info.size
                model.n_layers = _block_count(d.info)
                model.kv = kv_shape(d.info.kv, d.info.architecture)
                model.embedding_only = d.info.capabilities == ("embedding",)
                key = (model.entry.backend, model.entry.upstream)
                # on top of what is there: compute_config_digests may have added the digest already
                self.probed[key] = {**self.probed.get(key, {}), **d.meta}
        self._config_pending = False
        if result.folder is not None:
            self._dir_stamp = result.folder.stamp
            self._apply_folder(result.folder)

    def _apply_folder(self, scan: _FolderScan) -> None:
        entries: list[ModelEntry] = []
        seen: set[str] = set()
        to_hash: list[Path] = []
        for f, d in scan.files:
            if d.info is None:
                # not a GGUF (a text file named .gguf, a copy still being written): `_describe` said why;
                # listed, it would be a model whose every start fails. A change to it brings a new scan.
                continue
            backend = f"runtime:{f.name}"
            model = self.models.get(backend)
            if model is not None and model.entry.source != SOURCE:
                continue  # a configured model of that name wins, as it does in the registry
            seen.add(backend)
            s = self.settings
            spec = RuntimeSpec(
                gguf=f.path, ctx=s.ctx, ttl=s.ttl, threads=s.threads, options=s.options, pin=_pinned(f, s.pin)
            )
            entry = ModelEntry(
                name=f.name, backend=backend, upstream=f.name, source=SOURCE, aliases=f.aliases, meta=d.meta
            )
            entries.append(entry)
            max_ctx = (d.info.context_length or None) if d.info else None
            size = d.info.size if d.info else 0
            n_layers = _block_count(d.info) if d.info else None
            kv = kv_shape(d.info.kv, d.info.architecture) if d.info else None
            embedding_only = d.info.capabilities == ("embedding",) if d.info else False
            if model is None:
                self.models[backend] = ManagedModel(
                    backend=backend,
                    entry=entry,
                    spec=spec,
                    gguf=f.path,
                    max_ctx=max_ctx,
                    size=size,
                    mmproj=d.mmproj,
                    n_layers=n_layers,
                    kv=kv,
                    embedding_only=embedding_only,
                )
            else:
                model.entry, model.spec, model.gguf, model.mmproj = entry, spec, f.path, d.mmproj
                model.max_ctx, model.size, model.removed = max_ctx, size, False
                model.n_layers, model.kv, model.embedding_only = n_layers, kv, embedding_only
            # each version of a file is hashed once: a file that cannot be hashed does not loop forever
            if d.digest_stamp is not None and d.digest_stamp not in self._hashing:
                self._hashing.add(d.digest_stamp)
                to_hash.append(f.path)
        for backend, model in self.models.items():
            if model.entry.source == SOURCE and backend not in seen and not model.removed:
                model.removed = True
                self._retire(model)  # its file is gone: stop it once idle
        self.registry.set_source(SOURCE, entries)
        self._changed()
        if to_hash and not self._closing:
            self._spawn(self._compute_digests(to_hash), "hash models", "runtime task")

    def describe_config(self) -> None:
        """A configured model was added or changed (a config reload): the next `rescan` reads its file."""
        self._config_pending = True

    def set_created(self, models: Sequence[tuple[ModelEntry, RuntimeSpec]]) -> None:
        """The models made with /api/create from a GGUF blob (source "created"): each runs like a configured
        `runtime: {gguf: ...}` model, described by the next `rescan`; one no longer given is retired."""
        keep: set[str] = set()
        for entry, spec in models:
            keep.add(entry.backend)
            model = self.models.get(entry.backend)
            if model is None:
                self.models[entry.backend] = ManagedModel(backend=entry.backend, entry=entry, spec=spec, gguf=spec.gguf)
            else:
                model.entry, model.spec, model.gguf, model.removed = entry, spec, spec.gguf, False
            self._config_pending = True
        for backend, model in self.models.items():
            if model.entry.source == CREATED_SOURCE and backend not in keep and not model.removed:
                model.removed = True
                self._retire(model)  # deleted: stop it once idle
        self._changed()

    async def _compute_digests(self, paths: Sequence[Path]) -> None:
        for p in paths:
            try:
                await asyncio.to_thread(self.digests.get, p)
            except OSError as exc:
                log.warning("cannot hash %s: %s", p, exc)
        await self.rescan(force=True)  # now with digests (the headers come from the cache)


def _gguf_in(argv: Sequence[str]) -> Path | None:
    """A `cmd:` model's GGUF file, when its command names one (for metadata and /api/ps size); reads the disk."""
    for a in argv:
        if a.lower().endswith(".gguf") and "${" not in a:
            p = Path(a).expanduser()
            if p.is_file():
                return p
    return None


def _pinned(f: models_dir.ModelFile, pin: Sequence[str]) -> bool:
    """`runtime.pin` names a models folder model by its name or one of its aliases."""
    return bool(pin) and any(n in pin for n in (f.name, *f.aliases))


def _block_count(info: GGUFInfo) -> int | None:
    n = info.kv.get(f"{info.architecture}.block_count")
    return n if isinstance(n, int) and not isinstance(n, bool) else None
