"""A fake Hugging Face hub on a real socket: the requests huggingface_hub makes, and the downloads.

It answers, as huggingface.co does (huggingface_hub 2.x's hf_api.py and file_download.py say what they ask):
  GET  /api/models/{repo}[/revision/{rev}]   model info; `?blobs=true` adds size, blobId and lfs per file
  GET  /api/models/{repo}/tree/{rev}[/{path}] the file listing (`?recursive=true`), one page
  HEAD|GET /{repo}/resolve/{rev}/{file}       an LFS file: 302 to the "CDN" (this server as `localhost`)
                                              with X-Repo-Commit, X-Linked-Etag, X-Linked-Size, ETag;
                                              a small (non-LFS) file: its bytes
  HEAD|GET /cdn/{sha256}                      the bytes, with Range (206 + Content-Range), ETag, Accept-Ranges
An unknown repo is 401 with `X-Error-Code: RepoNotFound` (huggingface.co's answer to an anonymous caller),
a missing file 404 with `EntryNotFound`. Repo ids match case-insensitively and come back as spelt here.

Switches: `wrong_sha` (paths whose published sha256 is wrong), `cut_after` (path -> bytes: the next GET of
it drops the connection after that many bytes, once), `private` (repos that need `Authorization: Bearer
{token}`), `chunk_delay` (seconds between 64 KiB chunks). Counters: `bytes_sent` and `gets` by path,
`ranges` (path, first byte) of each ranged GET, `api_calls`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

COMMIT = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c"
CHUNK = 64 * 1024


def _cdn_host(host: str) -> str:
    """The same server under another name: to huggingface_hub (and aiohttp) a redirect off the hub, as the
    real hub's to its CDN is, so the metadata is read from the 302 and no token follows it."""
    name, _, port = host.rpartition(":")
    return f"{'localhost' if name == '127.0.0.1' else '127.0.0.1'}:{port}"


def gguf_bytes(size: int, *, file_type: int = 15, seed: int = 0) -> bytes:
    """A small "GGUF" file: a real header (architecture and file type, so the catalogue reads it and hashes
    it), then filler up to `size` bytes. Not a model: it is downloaded and listed, never run."""
    key_arch, arch = b"general.architecture", b"llama"
    key_type = b"general.file_type"
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 2)
    head += struct.pack("<Q", len(key_arch)) + key_arch + struct.pack("<IQ", 8, len(arch)) + arch
    head += struct.pack("<Q", len(key_type)) + key_type + struct.pack("<II", 4, file_type)
    return head + random.Random(seed).randbytes(max(size - len(head), 0))


@dataclass
class HubFile:
    path: str
    data: bytes | None = None
    source: Path | None = None  # served from this file instead (the real SmolLM2)
    lfs: bool = True
    _sha256: str | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.source.stat().st_size  # type: ignore[union-attr]

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            if self.data is not None:
                h.update(self.data)
            else:
                assert self.source is not None
                with open(self.source, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            self._sha256 = h.hexdigest()
        return self._sha256

    @property
    def blob_id(self) -> str:
        return hashlib.sha1(self.path.encode()).hexdigest()

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        assert self.source is not None
        with open(self.source, "rb") as f:
            f.seek(start)
            return f.read(end - start)


@dataclass
class FakeHub:
    repos: dict[str, list[HubFile]] = field(default_factory=dict)
    wrong_sha: set[str] = field(default_factory=set)
    cut_after: dict[str, int] = field(default_factory=dict)
    private: set[str] = field(default_factory=set)
    token: str = "hf_test_token"
    chunk_delay: float = 0.0
    bytes_sent: dict[str, int] = field(default_factory=dict)
    gets: dict[str, int] = field(default_factory=dict)
    ranges: list[tuple[str, int]] = field(default_factory=list)
    api_calls: int = 0
    user_agents: list[str] = field(default_factory=list)

    def add(self, repo_id: str, *files: HubFile) -> None:
        self.repos[repo_id] = list(files)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/models/{user}/{repo}", self._info)
        app.router.add_get("/api/models/{user}/{repo}/revision/{rev}", self._info)
        app.router.add_get("/api/models/{user}/{repo}/tree/{rev}", self._tree)
        app.router.add_get("/api/models/{user}/{repo}/tree/{rev}/{path:.+}", self._tree)
        app.router.add_route("*", "/{user}/{repo}/resolve/{rev}/{path:.+}", self._resolve)
        app.router.add_route("*", "/cdn/{sha}", self._cdn)
        return app

    # ------------------------------------------------------------------------------------------- lookups
    def _repo(self, request: web.Request) -> tuple[str, list[HubFile]]:
        wanted = f"{request.match_info['user']}/{request.match_info['repo']}".lower()
        self.user_agents.append(request.headers.get("User-Agent", ""))
        for repo_id, files in self.repos.items():
            if repo_id.lower() != wanted:
                continue
            if repo_id in self.private and request.headers.get("Authorization") != f"Bearer {self.token}":
                break
            return repo_id, files
        raise web.HTTPUnauthorized(
            text='{"error":"Repository not found"}',
            content_type="application/json",
            headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
        )

    def _published_sha(self, f: HubFile) -> str:
        return hashlib.sha256(b"not " + f.sha256.encode()).hexdigest() if f.path in self.wrong_sha else f.sha256

    def _by_sha(self, sha: str) -> HubFile | None:
        for files in self.repos.values():
            for f in files:
                if f.sha256 == sha:
                    return f
        return None

    # ----------------------------------------------------------------------------------------------- API
    async def _info(self, request: web.Request) -> web.Response:
        self.api_calls += 1
        repo_id, files = self._repo(request)
        rev = request.match_info.get("rev", "main")
        if rev not in ("main", COMMIT):
            raise web.HTTPNotFound(headers={"X-Error-Code": "RevisionNotFound"})
        blobs = request.query.get("blobs", "").lower() == "true"
        siblings: list[dict[str, Any]] = []
        for f in files:
            s: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                s.update(blobId=f.blob_id, size=f.size)
                if f.lfs:
                    s["lfs"] = {"sha256": self._published_sha(f), "size": f.size, "pointerSize": 134}
            siblings.append(s)
        return web.json_response(
            {
                "_id": "65f0c0ffee",
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": COMMIT,
                "lastModified": "2024-11-01T12:00:00.000Z",
                "createdAt": "2024-10-31T12:00:00.000Z",
                "private": repo_id in self.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "library_name": "gguf",
                "tags": ["gguf"],
                "siblings": siblings,
                "usedStorage": sum(f.size for f in files),
            }
        )

    async def _tree(self, request: web.Request) -> web.Response:
        self.api_calls += 1
        _, files = self._repo(request)
        prefix = request.match_info.get("path", "").strip("/")
        recursive = request.query.get("recursive", "").lower() == "true"
        out: list[dict[str, Any]] = []
        folders: set[str] = set()
        for f in files:
            if prefix and not f.path.startswith(prefix + "/"):
                continue
            rest = f.path[len(prefix) + 1 :] if prefix else f.path
            if "/" in rest and not recursive:
                folders.add((prefix + "/" if prefix else "") + rest.split("/")[0])
                continue
            item: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
            if f.lfs:
                item["lfs"] = {"oid": self._published_sha(f), "size": f.size, "pointerSize": 134}
            out.append(item)
        out += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d} for d in sorted(folders)]
        return web.json_response(out)

    # ------------------------------------------------------------------------------------------ files
    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        _, files = self._repo(request)
        path = request.match_info["path"]
        f = next((x for x in files if x.path == path), None)
        if f is None:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
        headers = {"X-Repo-Commit": COMMIT}
        if not f.lfs:
            headers["ETag"] = f'"{f.blob_id}"'
            return await self._send(request, f, headers)
        headers.update(
            {
                "ETag": f'"{f.blob_id}"',
                "X-Linked-Etag": f'"{self._published_sha(f)}"',
                "X-Linked-Size": str(f.size),
                "Location": f"{request.scheme}://{_cdn_host(request.host)}/cdn/{f.sha256}",
            }
        )
        return web.Response(status=302, headers=headers)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        f = self._by_sha(request.match_info["sha"])
        if f is None:
            raise web.HTTPNotFound()
        return await self._send(request, f, {"ETag": f'"{f.sha256}"'})

    async def _send(self, request: web.Request, f: HubFile, headers: dict[str, str]) -> web.StreamResponse:
        size = f.size
        start, end = 0, size
        status = 200
        rng = request.headers.get("Range")
        if rng:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start = int(first)
            end = int(last) + 1 if last else size
            if start >= size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Accept-Ranges"] = "bytes"
        headers["Content-Length"] = str(end - start)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        self.gets[f.path] = self.gets.get(f.path, 0) + 1
        if rng:
            self.ranges.append((f.path, start))
        cut = self.cut_after.pop(f.path, None)
        pos = start
        while pos < end:
            n = min(CHUNK, end - pos)
            if cut is not None:
                n = min(n, cut - (pos - start))
                if n <= 0:
                    assert request.transport is not None
                    request.transport.abort()  # the connection drops mid-body, as a flaky network does
                    return resp
            await resp.write(f.read(pos, pos + n))
            pos += n
            self.bytes_sent[f.path] = self.bytes_sent.get(f.path, 0) + n
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        return resp
