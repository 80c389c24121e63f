"""Copy, create and delete: the models made through the API, kept in a store, in the registry and the runtime.

`ModelAdmin` holds the records (`created.CreatedModel`), writes each change to its store (beside the
request log, or a JSON file) before it is served, and rebuilds the registry's "created" source after every
change and at start (`load`), so a restart serves what was made before it. A model made from a GGUF blob
is run by the built-in engine: it is handed to the runtime, which is started for it if nothing else needed
one. Changes happen one at a time (a lock), off the event loop where they touch the disk.

What may be deleted is what ollamux made or holds: a copied or created model, and a GGUF file of the models
folder (the file is removed, and with it the model). A model of the config file is the config's to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from .blobs import BlobStore, blobs_dir
from .catalog import meta_for
from .create_request import CreateInput
from .created import CreatedModel, derive, entry_for, gguf_spec, layer_digest
from .errors import BadRequest, OllamuxError
from .names import display_name, normalize_name
from .registry import CREATED_SOURCE, ModelEntry
from .runtime import start_runtime
from .runtime.catalogue import SOURCE as MODELS_DIR
from .runtime.manager import ModelManager
from .state import AppState
from .store.created import CreatedStore, open_created_store

__all__ = ["ModelAdmin", "open_model_admin"]

log = logging.getLogger("ollamux")


class ModelAdmin:
    def __init__(self, state: AppState, store: CreatedStore, blobs: BlobStore) -> None:
        self.state = state
        self.store = store
        self.blobs = blobs
        self.records: dict[str, CreatedModel] = {}  # by normalised name
        self._lock = asyncio.Lock()

    # -------------------------------------------------------------------------------------- start, stop
    async def load(self) -> None:
        """Every stored record into the registry (and the runtime): what earlier runs made is served again."""
        stored = await asyncio.to_thread(self.store.load)
        for key, data in stored.items():
            try:
                self.records[key] = CreatedModel.from_json(data)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("created model '%s': unreadable record, skipped: %s", key, exc)
        await self._apply(log_missing=True)

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------------------------- operations
    async def copy(self, source: ModelEntry, destination: str) -> None:
        """`destination` as a new name for the model `source` resolved to (Ollama's /api/copy)."""
        async with self._lock:
            name = display_name(destination)
            self._check_free(name)
            now = time.time()
            if source.source == CREATED_SOURCE:
                # the record itself, renamed: the same content (and digest), independent of its source
                model = replace(self.records[source.key], name=name, created_at=now)
            else:
                model = CreatedModel(name=name, base=source.name, created_at=now)
            await self._put(model)

    async def create(self, inp: CreateInput, base: ModelEntry | None) -> list[str]:
        """Make the model `inp` asks for, from `base` (its `from`, resolved) or a GGUF blob; the status
        lines Ollama's create streams for it, in order."""
        async with self._lock:
            name = display_name(inp.name)
            self._check_free(name)
            statuses: list[str] = []
            if inp.blob is not None:
                parent = await self._from_blob(name, inp.blob)
                statuses += ["parsing GGUF", f"using existing layer sha256:{inp.blob}"]
            else:
                assert base is not None
                if base.source == CREATED_SOURCE:
                    parent = self.records[base.key]
                else:
                    parent = CreatedModel(name=name, base=base.name)
                base_meta = meta_for(base, self.state.probed.get((base.backend, base.upstream)), self.state.started_at)
                statuses.append(f"using existing layer sha256:{base_meta.digest}")
            statuses += [f"creating new layer sha256:{layer_digest(k, c)}" for k, c in inp.changes.layers()]
            model = derive(name, parent, inp.changes, now=time.time())
            statuses.append("writing manifest")
            await self._put(model)
            statuses.append("success")
            return statuses

    async def delete(self, entry: ModelEntry, requested: str) -> None:
        """Remove a made model, or a GGUF file of the models folder; 400 for what ollamux does not hold."""
        async with self._lock:
            if entry.source == CREATED_SOURCE:
                model = self.records.pop(entry.key)
                await asyncio.to_thread(self.store.delete, entry.key)
                await self._apply()
                self._prune(model)
                return
            if entry.source == MODELS_DIR and self.state.runtime is not None:
                await self._delete_file(entry)
                return
            raise BadRequest(
                self._not_ours(entry, requested)
                + "; ollamux deletes only the models it made (copy, create) and the GGUF files of its models folder"
            )

    # -------------------------------------------------------------------------------------- internals
    def _check_free(self, name: str) -> None:
        """A new name may replace a made model (as Ollama's copy and create overwrite), nothing else."""
        held = self.state.registry.find(name)
        if held is not None and held.source not in (CREATED_SOURCE, "wildcard"):
            raise BadRequest(self._not_ours(held, name) + "; choose another name")

    def _not_ours(self, entry: ModelEntry, name: str) -> str:
        if entry.source == "config":
            where = f" ({self.state.settings.source})" if self.state.settings.source else ""
            return f"model '{name}' is defined in the config file{where}; change it there"
        if entry.source == MODELS_DIR:
            return f"model '{name}' is a GGUF file of the models folder"
        return f"model '{name}' is served by backend '{entry.backend}'"

    async def _from_blob(self, name: str, blob: str) -> CreatedModel:
        if not self.blobs.exists(blob):
            raise BadRequest(f"blob sha256:{blob} not found: upload it first (POST /api/blobs/sha256:{blob})")
        if not await asyncio.to_thread(self.blobs.is_gguf, blob):
            raise BadRequest("supplied file was not in GGUF format")  # Ollama's wording
        return CreatedModel(name=name, gguf=str(self.blobs.path(blob)), blob=blob)

    async def _put(self, model: CreatedModel) -> None:
        key = normalize_name(model.name)
        old = self.records.get(key)
        await asyncio.to_thread(self.store.put, key, model.to_json())  # kept before it is served
        self.records[key] = model
        await self._apply()
        if old is not None:
            self._prune(old)

    def _prune(self, gone: CreatedModel) -> None:
        """A blob no record names any more is removed, as Ollama prunes unused layers."""
        if gone.blob is not None and not any(m.blob == gone.blob for m in self.records.values()):
            self.blobs.remove(gone.blob)

    async def _delete_file(self, entry: ModelEntry) -> None:
        runtime = self.state.runtime
        assert runtime is not None
        managed = runtime.models.get(entry.backend)
        path = managed.gguf if managed is not None else None
        if path is None:
            raise OllamuxError(f"model '{entry.name}': its file is not known", status=500)
        try:
            await asyncio.to_thread(_unlink, path)
        except OSError as exc:
            raise OllamuxError(f"cannot delete {path}: {exc.strerror or exc}", status=500) from None
        await runtime.rescan(force=True)  # the folder without it: the model is retired and unlisted
        await self._apply()

    async def _apply(self, *, log_missing: bool = False) -> None:
        """The registry's "created" source (and the runtime's GGUF models) from the records."""
        settings = self.state.settings.runtime
        entries: list[ModelEntry] = []
        managed = []
        for model in self.records.values():
            spec = gguf_spec(model.gguf, settings.ctx, settings.ttl, settings.threads) if model.gguf else None
            base = self._base(model.base) if model.base is not None else None
            entry = entry_for(model, base, spec)
            if entry is None:
                if log_missing:
                    log.warning("created model '%s': '%s' is not served, so neither is it", model.name, model.base)
                continue
            entries.append(entry)
            if spec is not None:
                managed.append((entry, spec))
        self.state.registry.set_source(CREATED_SOURCE, entries)
        runtime = self.state.runtime
        if managed and runtime is None:
            runtime = await self._start_runtime()
        if runtime is not None:
            runtime.set_created(managed)
            if managed:
                await runtime.rescan()  # reads the new GGUF headers (context length, family, size)

    def _base(self, name: str) -> ModelEntry | None:
        entry = self.state.registry.find(name)
        return entry if entry is not None and entry.source != CREATED_SOURCE else None

    async def _start_runtime(self) -> ModelManager:
        runtime = await start_runtime(self.state, force=True)
        assert runtime is not None
        self.state.runtime = runtime
        return runtime


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def open_model_admin(state: AppState) -> ModelAdmin:
    """The app's model admin, its records loaded: beside the request log when it is on."""
    log_settings = state.settings.request_log
    # with the log in PostgreSQL (url), the records stay in this instance's home, as its blobs do
    in_file = log_settings.enabled and log_settings.url is None
    store = await asyncio.to_thread(
        open_created_store, log_settings.path if in_file else None, log_settings.path.parent
    )
    admin = ModelAdmin(state, store, BlobStore(blobs_dir(state.settings)))
    try:
        await admin.load()
    except BaseException:
        admin.close()
        raise
    return admin
