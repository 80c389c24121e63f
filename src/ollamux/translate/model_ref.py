"""Where a request names its model outside a JSON body: a multipart form's `model` field, and the path of
`/upstream/{model}/...` (pure, no I/O).

The concurrency gate (guard) and the handlers (api/routed.py) both read the model through these functions:
a request the gate read differently from its handler would wait at the wrong gate, or at none.

Forms are not parsed into fields and rebuilt: an audio upload can be many megabytes, and the backend
should get the client's bytes. The parts are found with a few C-speed `find` calls, and only the `model`
value is spliced in place when the backend knows the model by another name (as `replace_model_in_body`
does for JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp.helpers import parse_mimetype
from aiohttp.multipart import parse_content_disposition

from ..errors import BadRequest, ModelNotFound, OllamuxError
from ..registry import Registry, Route

__all__ = ["UPSTREAM_PREFIX", "FormField", "form_boundary", "form_field", "set_form_field", "split_model_path"]

CRLF = b"\r\n"
UPSTREAM_PREFIX = "/upstream/"  # the raw route of a model's backend: /upstream/{model}/{path}


@dataclass(frozen=True, slots=True)
class FormField:
    """One text field of a form: its value, and where the value's bytes sit in the body."""

    value: str
    start: int
    end: int


def form_boundary(content_type: str) -> bytes | None:
    """The boundary of a `multipart/form-data` Content-Type; None for any other type (or none given)."""
    mime = parse_mimetype(content_type)
    if (mime.type, mime.subtype) != ("multipart", "form-data"):
        return None
    boundary = mime.parameters.get("boundary", "")
    if not boundary:
        raise BadRequest("multipart/form-data request has no boundary in its Content-Type")
    return boundary.encode("latin-1", "replace")


def _parts(raw: bytes, boundary: bytes) -> tuple[list[tuple[bytes, int, int]], int]:
    """(header block, body start, body end) of each part, and where the closing `--boundary--` starts.

    RFC 2046 5.1.1: a part's body ends at the CRLF before the next `--boundary`, which cannot occur inside
    it; what follows the closing boundary (the epilogue) is not looked at.
    """
    dash = b"--" + boundary
    delim = CRLF + dash
    if raw.startswith(dash):
        pos = len(dash)
    else:  # a preamble before the first boundary
        at = raw.find(delim)
        if at < 0:
            raise BadRequest("multipart/form-data body does not contain its boundary")
        pos = at + len(delim)
    parts: list[tuple[bytes, int, int]] = []
    while not raw.startswith(b"--", pos):  # `--boundary--` closes the form
        eol = raw.find(CRLF, pos)
        if eol < 0:
            raise BadRequest("multipart/form-data body ends inside a boundary line")
        start = eol + 2
        end = raw.find(delim, start)
        if end < 0:
            raise BadRequest("multipart/form-data body is not closed by its boundary")
        if raw.startswith(CRLF, start):  # a part without headers
            parts.append((b"", start + 2, end))
        else:
            head_end = raw.find(CRLF + CRLF, start, end)
            if head_end < 0:
                raise BadRequest("multipart/form-data part has no blank line after its headers")
            parts.append((raw[start:head_end], head_end + 4, end))
        pos = end + len(delim)
    return parts, pos - len(dash)


def _field_name(headers: bytes) -> str | None:
    for line in headers.split(CRLF):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-disposition":
            _, params = parse_content_disposition(value.decode("utf-8", "replace"))
            return params.get("name")
    return None


def form_field(raw: bytes, boundary: bytes, name: str) -> FormField | None:
    """The form's one field called `name`; None when it has none. A malformed form, or a field given twice
    (which one the backend would read is anyone's guess), is a 400."""
    found: FormField | None = None
    for headers, start, end in _parts(raw, boundary)[0]:
        if _field_name(headers) != name:
            continue
        if found is not None:
            raise BadRequest(f"multipart/form-data request has more than one '{name}' field", param=name)
        found = FormField(raw[start:end].decode("utf-8", "replace"), start, end)
    return found


def set_form_field(raw: bytes, boundary: bytes, name: str, value: str, field: FormField | None) -> bytes:
    """`raw` with `field`'s value replaced by `value` (with no such field, one added as the last part),
    every other byte untouched: the Content-Type, and its boundary, stay valid."""
    data = value.encode()
    if b"\r" in data or b"\n" in data:
        # the delimiter starts with CRLF: a value without CR and LF cannot contain it
        raise OllamuxError(f"cannot put {value!r} in a multipart/form-data field: it spans lines", status=500)
    if field is not None:
        return raw[: field.start] + data + raw[field.end :]
    close = _parts(raw, boundary)[1]
    part = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n'
    return raw[:close] + part + data + CRLF + raw[close:]


def split_model_path(registry: Registry, raw_path: str) -> tuple[Route, str]:
    """The model named at the start of `raw_path` (the percent-encoded path after `/upstream/`) and the rest
    of the path, still encoded, starting with '/' (or "" when nothing follows).

    Model names hold '/' (`org/model`) and ':' (tags), so the model is the longest leading run of segments
    (percent-decoded) that names a model of the catalogue, configured or discovered. A wildcard pattern
    would match any prefix (`*` matches '/'), so a name only a wildcard knows is the first segment alone,
    llama-swap's convention: such a name with '/' in it is sent as one segment, its '/' encoded as %2F.
    """
    segments = raw_path.split("/")
    for n in range(len(segments), 0, -1):
        name = unquote("/".join(segments[:n]))
        if not name.strip():
            continue  # an empty name would pick the default model: never a name in a path
        try:
            route = registry.resolve(name)
        except OllamuxError:
            continue
        if route.entry.source != "wildcard":
            return route, _rest(segments, n)
    first = unquote(segments[0])
    if first.strip():
        try:
            return registry.resolve(first), _rest(segments, 1)
        except OllamuxError:
            pass
    err = ModelNotFound(first)
    err.message = f"model '{first}' not found (no leading part of '{unquote(raw_path)}' names a model)"
    err.args = (err.message,)
    raise err


def _rest(segments: list[str], n: int) -> str:
    return "/" + "/".join(segments[n:]) if n < len(segments) else ""
