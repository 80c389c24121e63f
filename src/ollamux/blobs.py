"""Uploaded model files (`/api/blobs/{digest}`), kept by their sha256 in the models folder's `blobs` subfolder.

Ollama's blob store, as far as ollamux needs one: `ollama create` (and `ollamux create`, `client.create_blob`)
upload a GGUF file before naming it by digest in a create request's `files` or a Modelfile's FROM. The folder
scan skips subfolders, so a blob is served only as the model a create request makes of it. Files are named as
Ollama names them (`sha256-<hex>`); an upload is written to a temporary file, hashed on the way and renamed
into place only once its digest is the one the path named.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from .config import Settings
from .errors import BadRequest

__all__ = ["BlobStore", "blobs_dir", "parse_digest"]

# Ollama's GetBlobsPath accepts either separator
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
GGUF_MAGIC = b"GGUF"


def parse_digest(text: str) -> str:
    """The hex of a `sha256:<64 hex>` digest (lower case); 400 with Ollama's wording otherwise."""
    m = _DIGEST.fullmatch(text.strip().removeprefix("@"))
    if m is None:
        raise BadRequest("invalid digest format")
    return m.group(1).lower()


def blobs_dir(settings: Settings) -> Path:
    """`blobs` in the models folder; without one, in the ollamux home's `models` folder."""
    folder = settings.runtime.models_dir or settings.request_log.path.parent / "models"
    return folder / "blobs"


class BlobStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, hexdigest: str) -> Path:
        return self.folder / f"sha256-{hexdigest}"

    def exists(self, hexdigest: str) -> bool:
        return self.path(hexdigest).is_file()

    def is_gguf(self, hexdigest: str) -> bool:
        try:
            with self.path(hexdigest).open("rb") as f:
                return f.read(4) == GGUF_MAGIC
        except OSError:
            return False

    async def receive(self, hexdigest: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store an upload under its digest; True when new, False when it was there already. A body whose
        sha256 is not `hexdigest` is refused (400, Ollama's "digest mismatch") and nothing is kept. Each
        chunk is hashed and written in a worker thread: a slow disk never holds up the event loop."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".upload-")
        sha = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    await asyncio.to_thread(_hash_and_write, sha, f, chunk)
            got = sha.hexdigest()
            if got != hexdigest:
                raise BadRequest(f'digest mismatch, expected "sha256:{hexdigest}", got "sha256:{got}"')
            if self.exists(hexdigest):
                return False
            os.replace(tmp, self.path(hexdigest))
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def remove(self, hexdigest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(hexdigest).unlink()


def _hash_and_write(sha: Any, f: BinaryIO, chunk: bytes) -> None:
    sha.update(chunk)  # hashlib lets go of the GIL for a chunk this size
    f.write(chunk)
