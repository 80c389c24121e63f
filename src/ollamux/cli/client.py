"""`ollamux list | ps | show | stop`: a command line like Ollama's, as a client of any Ollama-API server.

The server is `OLLAMA_HOST` (default 127.0.0.1:11434), read the way the `ollama` CLI reads it. Plain
urllib: the commands are one request each (a stream read line by line), nothing to gain from asyncio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

__all__ = ["ClientError", "ollama_host", "print_show", "register"]

DEFAULT_PORT = 11434


class ClientError(Exception):
    pass


def ollama_host(environ: Mapping[str, str] = os.environ) -> str:
    """The base URL from OLLAMA_HOST, as ollama's envconfig.Host parses it."""
    raw = environ.get("OLLAMA_HOST", "").strip().strip("\"'")
    scheme, sep, hostport = raw.partition("://")
    default_port = str(DEFAULT_PORT)
    if not sep:
        scheme, hostport = "http", raw
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    host, port = "127.0.0.1", default_port
    if hostport.startswith("["):  # [::1]:port
        end = hostport.find("]")
        host = hostport[1:end] if end > 0 else host
        rest = hostport[end + 1 :] if end > 0 else ""
        if rest.startswith(":") and rest[1:]:
            port = rest[1:]
        host = f"[{host}]"
    elif hostport.count(":") == 1:
        h, p = hostport.split(":")
        host, port = h or host, p or port
    elif hostport.count(":") > 1:  # a bare IPv6 address
        host = f"[{hostport}]"
    elif hostport:
        host = hostport
    url = f"{scheme}://{host}:{port}"
    return url + ("/" + path.rstrip("/") if path.strip("/") else "")


def _request(
    method: str, path: str, body: Any = None, *, timeout: float | None = None, upload: tuple[Any, int] | None = None
) -> Any:
    """`body` as JSON, or `upload`: (a binary file, its size) streamed as the body."""
    data: Any = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if upload is not None:
        data = upload[0]
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(upload[1])}
    req = urllib.request.Request(ollama_host() + path, data=data, method=method, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            message = json.loads(raw).get("error", "")
        except (ValueError, AttributeError):
            message = ""
        if isinstance(message, dict):
            message = message.get("message", "")
        if not isinstance(message, str) or not message:
            # no Ollama (or OpenAI) error in the body: an HTML page or a framework's "404: Not Found" says
            # nothing to the user; the likely cause is OLLAMA_HOST naming some other server
            raise _not_ollama(f"answered {method} {path} with HTTP {exc.code} {exc.reason}") from None
        raise ClientError(message) from None
    except urllib.error.URLError as exc:
        raise ClientError(
            f"could not connect to an Ollama-API server at {ollama_host()} ({exc.reason}); "
            "is `ollamux serve` running? (set OLLAMA_HOST to reach another one)"
        ) from None
    except (OSError, http.client.HTTPException) as exc:  # reset, timed out, or no HTTP answer at all
        raise _not_ollama(f"did not answer {method} {path} ({exc or type(exc).__name__})") from None


def _not_ollama(what: str) -> ClientError:
    return ClientError(
        f"the server at {ollama_host()} {what}: is it an Ollama-API server (`ollamux serve`, `ollama serve`)? "
        "(set OLLAMA_HOST to reach another one)"
    )


def _lost(exc: Exception) -> ClientError:
    return ClientError(
        f"lost the connection to {ollama_host()} ({exc or type(exc).__name__}); is the server still running?"
    )


def _json(method: str, path: str, body: Any = None) -> Any:
    with _request(method, path, body, timeout=600) as resp:
        try:
            obj = json.loads(_read(resp) or b"{}")
        except ValueError:
            raise _not_ollama(f"answered {method} {path} with something that is not JSON") from None
    if not isinstance(obj, dict):
        raise _not_ollama(f"answered {method} {path} with JSON that is not an object")
    return obj


def _read(resp: Any) -> bytes:
    try:
        data: bytes = resp.read()
        return data
    except (OSError, http.client.HTTPException) as exc:  # the server went away half way
        raise _lost(exc) from None


def _stream(path: str, body: Any) -> Iterator[dict[str, Any]]:
    """The objects of an NDJSON answer; one cut before its last object (`done: true`, or the `success` of a
    pull or create) is an error: http.client reads a chunked stream that stops short as a clean end."""
    last: dict[str, Any] | None = None
    with _request("POST", path, body) as resp:
        while True:
            try:
                line = resp.readline()
            except (OSError, http.client.HTTPException) as exc:
                raise _lost(exc) from None
            if not line:
                if last is None or not (last.get("done") is True or last.get("status") == "success"):
                    raise _lost(ConnectionError("the answer stopped before its end"))
                return
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise _not_ollama(f"streamed a line that is not JSON to POST {path}") from None
            if not isinstance(obj, dict):
                raise _not_ollama(f"streamed JSON that is not an object to POST {path}")
            if obj.get("error"):
                raise ClientError(str(obj["error"]))
            last = obj
            yield obj


# ---------------------------------------------------------------------------------------- commands
def _size(n: Any) -> str:
    if not isinstance(n, int | float) or n <= 0:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}" if n / div < 10 else f"{round(n / div)} {unit}"
    return f"{int(n)} B"


def _ago(stamp: Any) -> str:
    t = _parse_time(stamp)
    if t is None:
        return "-"
    d = time.time() - t
    if d < 0:
        return _until(stamp)
    for unit, secs in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if d >= secs:
            n = int(d // secs)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "Less than a minute ago"


def _until(stamp: Any) -> str:
    t = _parse_time(stamp)
    if t is None:
        return "-"
    d = t - time.time()
    if d > 100 * 365 * 86400:
        return "Forever"
    if d <= 0:
        return "Stopping..."
    for unit, secs in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if d >= secs:
            n = int(d // secs)
            return f"{n} {unit}{'s' if n != 1 else ''} from now"
    return "Less than a second from now"


def _parse_time(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    s = stamp.replace("Z", "+00:00")
    # Python's fromisoformat wants at most 6 fractional digits; Go writes up to 9
    if "." in s:
        head, _, tail = s.partition(".")
        digits = "".join(ch for ch in tail if ch.isdigit())
        s = f"{head}.{digits[:6]}{tail[len(digits) :]}"
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("    ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def cmd_list(args: argparse.Namespace) -> int:
    models = _json("GET", "/api/tags").get("models", [])
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in models:
        digest = str(m.get("digest") or "").removeprefix("sha256:")
        rows.append([m.get("name", ""), digest[:12], _size(m.get("size")), _ago(m.get("modified_at"))])
    print(_table(rows))
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    models = _json("GET", "/api/ps").get("models", [])
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        digest = str(m.get("digest") or "").removeprefix("sha256:")
        size, vram = m.get("size") or 0, m.get("size_vram") or 0
        proc = "100% GPU" if size and vram >= size else ("100% CPU" if not vram else f"{round(100 * vram / size)}% GPU")
        rows.append(
            [
                m.get("name", ""),
                digest[:12],
                _size(size),
                proc,
                str(m.get("context_length") or "-"),
                _until(m.get("expires_at")),
            ]
        )
    print(_table(rows))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print_show(_json("POST", "/api/show", {"model": args.model}), args.field)
    return 0


def print_show(info: dict[str, Any], field: str | None) -> None:
    """An /api/show answer as `ollama show` prints it: one field alone (`--modelfile`), or the summary."""
    if field:
        text = str(info.get(field) or "")
        print(text if field == "modelfile" else text.rstrip("\n"))
        return
    details = info.get("details") or {}
    mi = info.get("model_info") or {}
    arch = mi.get("general.architecture") or details.get("family") or ""
    rows = [
        ("architecture", arch),
        ("parameters", details.get("parameter_size")),
        ("context length", mi.get(f"{arch}.context_length")),
        ("embedding length", mi.get(f"{arch}.embedding_length")),
        ("quantization", details.get("quantization_level")),
    ]
    print("  Model")
    for k, v in rows:
        if v not in (None, "", 0):
            print(f"    {k:<20}{v}")
    caps = info.get("capabilities") or []
    if caps:
        print("\n  Capabilities")
        for c in caps:
            print(f"    {c}")
    if info.get("parameters"):
        print("\n  Parameters")
        for line in str(info["parameters"]).splitlines():
            print(f"    {line}")
    print()


def cmd_stop(args: argparse.Namespace) -> int:
    # ollama's own `stop`: an empty generate with keep_alive 0
    _json("POST", "/api/generate", {"model": args.model, "keep_alive": 0})
    return 0


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
            return result
        except ClientError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        except BrokenPipeError:  # `ollamux list | head`
            return 0

    return run


def register(sub: Any) -> None:
    env = "the server is $OLLAMA_HOST (default 127.0.0.1:11434)"
    p = sub.add_parser("list", aliases=["ls"], help="list the models a server serves", description=env)
    p.set_defaults(func=_guarded(cmd_list))
    p = sub.add_parser("ps", help="list running models", description=env)
    p.set_defaults(func=_guarded(cmd_ps))
    p = sub.add_parser("show", help="show a model's information", description=env)
    p.add_argument("model")
    only = p.add_mutually_exclusive_group()
    for field, what in [
        ("modelfile", "the Modelfile (reads back with `ollamux create -f`)"),
        ("parameters", "the parameters a request gets by default"),
        ("system", "the system prompt"),
        ("template", "the prompt template"),
        ("license", "the license"),
    ]:
        only.add_argument(f"--{field}", dest="field", action="store_const", const=field, help=f"show {what}")
    p.set_defaults(func=_guarded(cmd_show), field=None)
    p = sub.add_parser("stop", help="stop a running model", description=env)
    p.add_argument("model")
    p.set_defaults(func=_guarded(cmd_stop))
