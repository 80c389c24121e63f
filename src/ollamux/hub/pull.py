"""One pull of a hub model: plan it (the hub's listing, the files, where they go), download, verify, register.

The files go to the repo's folder of the models folder (`models_dir.repo_folder`: `hf.co/{user}/{repo}/`)
under their own names, so the folder's scan serves them (a projector beside its model). A pull holds a
file lock on that folder, so two pulls of one repo (even by two ollamux processes sharing the folder) never
write one file; the second waits, then finds the files there. Each file downloads into `<file>.partial`
(resumed by the next pull after a failure), is checked against the sha256 the hub publishes (a mismatch
deletes it; a file not stored in LFS has none, and only its size is checked), then renamed into place;
its digest goes into the digest cache, so /api/tags shows it without hashing the file again, and the
catalogue rescans the folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from ..errors import OllamuxError
from ..runtime.models_dir import repo_folder
from .choose import NoSuchFile, RepoFile, select_files
from .download import PartialDownload, partial_path
from .listing import download_headers, file_url, list_repo, not_found
from .progress import VERIFYING, WRITING, Throttle, file_progress, status
from .ref import HUB_HOST, LATEST, HubRef

if TYPE_CHECKING:
    from ..runtime.catalogue import Catalogue

__all__ = ["DigestMismatch", "HubPull", "PlannedFile", "PullPlan", "plan_pull"]

log = logging.getLogger("ollamux.runtime")

LOCK_NAME = ".pull.lock"  # in the repo's folder (the scan reads only `.gguf` files)


class DigestMismatch(OllamuxError):
    status = 502


@dataclass(frozen=True)
class PlannedFile:
    file: RepoFile
    url: str
    dest: Path


@dataclass(frozen=True)
class PullPlan:
    ref: HubRef
    name: str  # what the model is served as once pulled: hf.co/{the hub's spelling of the repo}:{tag}
    folder: Path
    files: tuple[PlannedFile, ...]  # the model (all its parts), then its projector
    headers: dict[str, str]


def plan_pull(ref: HubRef, models_dir: Path, endpoint: str) -> PullPlan:
    """Ask the hub what to download and check there is room for it (blocking: run it in a thread)."""
    listing = list_repo(ref.repo_id, endpoint=endpoint)
    try:
        selection = select_files(listing.files, ref.quant)
    except NoSuchFile as exc:
        raise not_found(f"{HUB_HOST}/{listing.repo_id}: {exc}") from None
    folder = repo_folder(models_dir, listing.repo_id)
    files = tuple(
        PlannedFile(file=f, url=file_url(listing, f.path, endpoint), dest=folder / f.basename) for f in selection.files
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise OllamuxError(f"pull: cannot use the models folder {folder}: {exc.strerror or exc}", status=500) from None
    needed = sum(_missing_bytes(p) for p in files)
    if needed > free:
        raise OllamuxError(
            f"pull: {needed} more bytes are needed in {folder} and only {free} are free", status=507
        ) from None
    name = f"{HUB_HOST}/{listing.repo_id}:{ref.quant or LATEST}"
    return PullPlan(ref=ref, name=name, folder=folder, files=files, headers=download_headers())


def _missing_bytes(p: PlannedFile) -> int:
    size = p.file.size or 0
    if _complete(p):
        return 0
    try:
        return max(size - partial_path(p.dest).stat().st_size, 0)
    except OSError:
        return size


def _complete(p: PlannedFile) -> bool:
    """The file is in place already (a pull of another quantization brought the projector, say)."""
    try:
        size = p.dest.stat().st_size
    except OSError:
        return False
    return p.file.size is None or size == p.file.size


@dataclass(frozen=True)
class _Fetched:
    planned: PlannedFile
    digest: str


class HubPull:
    """Runs one plan: `events()` yields Ollama's progress objects; on success the model is served."""

    def __init__(self, plan: PullPlan, session: aiohttp.ClientSession, catalogue: Catalogue) -> None:
        self.plan = plan
        self.session = session
        self.catalogue = catalogue

    async def events(self) -> AsyncGenerator[dict[str, Any], None]:
        # imported on the first pull, not at start: filelock (with the decimal module it loads) is ~1.3 MB of
        # RSS in every server, and most never pull
        import filelock

        lock = filelock.AsyncFileLock(str(self.plan.folder / LOCK_NAME))
        try:
            await lock.acquire(timeout=0)
        except filelock.Timeout:
            yield status(f"waiting for another pull of {HUB_HOST}/{self.plan.ref.repo_id}")
            await lock.acquire()
        try:
            fetched: list[_Fetched] = []
            for p in self.plan.files:
                if await asyncio.to_thread(_complete, p):
                    size = p.file.size or 0
                    yield file_progress(p.file.sha256, p.file.basename, size, size)
                    continue
                download = PartialDownload(self.session, p.url, self.plan.headers, p.dest, p.file.size)
                throttle: Throttle | None = None
                async with contextlib.aclosing(download.run()) as sizes:
                    async for completed in sizes:
                        total = download.total or 0
                        throttle = throttle or Throttle(total)
                        throttle.total = total
                        if throttle.due(completed, time.monotonic()):
                            yield file_progress(p.file.sha256, p.file.basename, total, completed)
                assert download.digest is not None
                fetched.append(_Fetched(p, download.digest))
            yield status(VERIFYING)
            await self._verify(fetched)
            yield status(WRITING)
            await asyncio.to_thread(self._move_into_place, fetched)
            await self.catalogue.rescan(force=True)
            size = sum(f.planned.file.size or 0 for f in fetched)
            log.info("pulled %s: %d file(s), %d bytes, into %s", self.plan.name, len(fetched), size, self.plan.folder)
        finally:
            await lock.release()

    async def _verify(self, fetched: list[_Fetched]) -> None:
        bad = [f for f in fetched if f.planned.file.sha256 and f.planned.file.sha256.lower() != f.digest]
        if not bad:
            return
        for f in bad:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(partial_path(f.planned.dest).unlink)
        f = bad[0]
        raise DigestMismatch(
            f"pull: sha256 digest mismatch for {f.planned.file.path}: the hub publishes {f.planned.file.sha256}, "
            f"the download has {f.digest}; the downloaded file was deleted, pull again"
        )

    def _move_into_place(self, fetched: list[_Fetched]) -> None:
        for f in fetched:
            os.replace(partial_path(f.planned.dest), f.planned.dest)
            self.catalogue.digests.put(f.planned.dest, f.digest)  # /api/tags shows it without hashing again
