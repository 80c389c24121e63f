"""`ollamux cp | rm | create`: make and remove models on any Ollama-API server, as the `ollama` CLI does.

`create NAME -f Modelfile` parses the Modelfile here (the server gets the JSON form, as `ollama create`
sends it): a FROM naming a local GGUF file (relative to the Modelfile's folder) is hashed, uploaded as a
blob unless the server has it, and named in `files`; any other FROM is a model the server serves.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from ..modelfile import ModelfileError, create_request, parse
from .client import ClientError, _guarded, _json, _request, _stream

__all__ = ["register"]


def cmd_cp(args: argparse.Namespace) -> int:
    _json("POST", "/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")  # ollama's words
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    for name in args.models:
        _request("DELETE", "/api/delete", {"model": name}, timeout=600).close()
        print(f"deleted '{name}'")
    return 0


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"


def _local_file(value: str, folder: Path) -> Path | None:
    """FROM as a file on this machine (`~`, absolute, or relative to the Modelfile), when there is one."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = folder / path
    return path if path.is_file() else None


def _upload(path: Path) -> str:
    digest = _digest(path)
    blob = "/api/blobs/" + urllib.parse.quote(digest)
    try:
        _request("HEAD", blob, timeout=30).close()
        return digest  # the server has it already
    except ClientError:
        pass
    print(f"copying file {digest} 100%", file=sys.stderr)
    with path.open("rb") as f:
        _request("POST", blob, upload=(f, path.stat().st_size)).close()
    return digest


def cmd_create(args: argparse.Namespace) -> int:
    modelfile = Path(args.file)
    try:
        text = modelfile.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"cannot read {modelfile}: {exc.strerror or exc}") from None
    try:
        request = create_request(parse(text))
    except ModelfileError as exc:
        raise ClientError(str(exc)) from None
    for warning in request.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    body: dict[str, Any] = {"model": args.model, **request.body, "stream": True}
    print("gathering model components", file=sys.stderr)
    source = str(body.get("from") or "")
    local = _local_file(source, modelfile.resolve().parent)
    if local is None and (source.startswith((".", "/", "~")) or source.lower().endswith(".gguf")):
        # a path, not a model name: the server's answer (it reads no paths) would hide the typo
        where = Path(source).expanduser()
        where = where if where.is_absolute() else modelfile.resolve().parent / where
        raise ClientError(f"FROM {source}: no such file: {where}")
    if local is not None:
        body.pop("from")
        body["files"] = {local.name: _upload(local)}
    for obj in _stream("/api/create", body):
        status = obj.get("status")
        if status:
            print(status, file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    env = "the server is $OLLAMA_HOST (default 127.0.0.1:11434)"
    p = sub.add_parser("cp", help="copy a model: serve it under another name too", description=env)
    p.add_argument("source")
    p.add_argument("destination")
    p.set_defaults(func=_guarded(cmd_cp))
    p = sub.add_parser("rm", help="remove a copied or created model (or a models-folder file)", description=env)
    p.add_argument("models", nargs="+", metavar="model")
    p.set_defaults(func=_guarded(cmd_rm))
    p = sub.add_parser("create", help="create a model from a Modelfile", description=env)
    p.add_argument("model")
    p.add_argument("-f", "--file", default="Modelfile", help="the Modelfile (default: ./Modelfile)")
    p.set_defaults(func=_guarded(cmd_create))
