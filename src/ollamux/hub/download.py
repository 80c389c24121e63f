"""A resumable download of one file into `<file>.partial`, with the app's aiohttp session, hashed as it arrives.

Why not huggingface_hub's `hf_hub_download`, which does report bytes (its `tqdm_class`): in 2.x it writes
into a temporary file unique to each call and deletes it when the download fails, so an interrupted pull
would start over, and it does not check the sha256 the hub publishes. Here a GET of the file's `resolve`
URL (huggingface_hub builds it) with `Range: bytes=N-` continues `<file>.partial` from its size N; the
bytes are hashed as they are written, and the caller compares the digest before it renames the file.
Writing and hashing run in worker threads: the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import IO, TypeVar

import aiohttp

from ..errors import BackendUnavailable

__all__ = ["FLUSH_BYTES", "PARTIAL_SUFFIX", "DownloadError", "PartialDownload", "partial_path"]

T = TypeVar("T")

PARTIAL_SUFFIX = ".partial"
FLUSH_BYTES = 256 * 1024  # bytes handed to the writer thread at once (and the finest progress step)
# no total limit (a model takes as long as it takes); a link silent for two minutes is a failure
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


class DownloadError(BackendUnavailable):
    """The download failed; what arrived stays in the partial file for the next pull to resume."""


async def _in_thread(fn: Callable[[], T]) -> T:
    """`fn()` in a worker thread, run to its end even when the caller is cancelled meanwhile, so the
    partial file is never closed under a write that is still going on."""
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class _Sink:
    """The partial file and the sha256 of what it holds. Its methods run in worker threads, one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = 0
        self.file: IO[bytes] | None = None

    def open(self, resume: bool) -> int:
        """Open for appending what was downloaded before (hashing it first), or empty; the size it holds."""
        self.close()
        self.hasher, self.size = hashlib.sha256(), 0
        if resume and self.path.exists():
            with open(self.path, "rb") as f:
                while chunk := f.read(1 << 20):
                    self.hasher.update(chunk)
                    self.size += len(chunk)
            self.file = open(self.path, "ab")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "wb")
        return self.size

    def write(self, data: bytes) -> int:
        assert self.file is not None
        self.file.write(data)
        self.hasher.update(data)
        self.size += len(data)
        return self.size

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class PartialDownload:
    """One file's download: `run()` yields the bytes on disk as they grow; then `digest` is their sha256."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str], dest: Path, size: int | None
    ) -> None:
        self.session = session
        self.url = url
        self.headers = headers
        self.dest = dest
        self.partial = partial_path(dest)
        self.total = size  # from the hub's listing; else from the answer's headers
        self.digest: str | None = None
        self._restart = False

    async def run(self) -> AsyncGenerator[int, None]:
        sink = _Sink(self.partial)
        try:
            have = await _in_thread(functools.partial(sink.open, True))
            if self.total is not None and have > self.total:  # not this file: start over
                have = await _in_thread(functools.partial(sink.open, False))
            yield have
            if self.total is None or have < self.total:
                async with contextlib.aclosing(self._fetch(sink)) as sizes:
                    async for completed in sizes:
                        yield completed
                if self._restart:  # the server would not continue the partial file: start over, once
                    await _in_thread(functools.partial(sink.open, False))
                    async with contextlib.aclosing(self._fetch(sink)) as sizes:
                        async for completed in sizes:
                            yield completed
            if self.total is not None and sink.size != self.total:
                raise DownloadError(
                    f"download of {self.dest.name} ended after {sink.size} of {self.total} bytes; pull again to resume"
                )
        finally:
            await _in_thread(sink.close)
        self.digest = sink.hasher.hexdigest()

    async def _fetch(self, sink: _Sink) -> AsyncGenerator[int, None]:
        self._restart = False
        headers = dict(self.headers)
        if sink.size:
            headers["Range"] = f"bytes={sink.size}-"
        name = self.dest.name
        try:
            async with self.session.get(self.url, headers=headers, timeout=TIMEOUT) as resp:
                if not self._usable(resp, sink):
                    return
                if resp.status == 200 and sink.size:  # the range was ignored: the whole file comes again
                    await _in_thread(functools.partial(sink.open, False))
                if self.total is None and resp.content_length is not None:
                    self.total = sink.size + resp.content_length
                buf = bytearray()
                try:
                    async for data in resp.content.iter_chunked(FLUSH_BYTES):
                        buf += data
                        if len(buf) >= FLUSH_BYTES:
                            chunk, buf = bytes(buf), bytearray()
                            yield await _in_thread(functools.partial(sink.write, chunk))
                finally:  # what arrived before a failure is kept, for the next pull to resume from
                    if buf:
                        await _in_thread(functools.partial(sink.write, bytes(buf)))
                yield sink.size
        except (aiohttp.ClientError, TimeoutError) as exc:
            of = f" of {self.total}" if self.total is not None else ""
            raise DownloadError(
                f"download of {name} was interrupted after {sink.size}{of} bytes ({type(exc).__name__}: {exc}); "
                "pull again to resume"
            ) from None

    def _usable(self, resp: aiohttp.ClientResponse, sink: _Sink) -> bool:
        """Whether the answer carries the bytes asked for; False asks `run` to start over from nothing."""
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != sink.size:
                self._restart = True
                return False
            return True
        if resp.status == 416 and sink.size:  # the partial file is longer than, or no prefix of, this file
            self._restart = True
            return False
        if resp.status != 200:
            raise DownloadError(f"download of {self.dest.name} failed: {self.url} answered {resp.status} {resp.reason}")
        return True
