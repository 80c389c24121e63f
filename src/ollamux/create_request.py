"""An /api/create body, checked and read (pure): Ollama's JSON form (`from`, `files`, `system`, `parameters`,
`template`, `messages`, `license`) or the older `modelfile` text, whose commands fill the same fields (the
JSON's own win). Errors are 400s with Ollama's wording where Ollama has one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .blobs import parse_digest
from .created import Changes
from .errors import BadRequest
from .modelfile import ModelfileError, create_request, parse
from .ollama_options import DEPRECATED, OptionError, check_options

__all__ = ["CreateInput", "check_name", "read_create"]

# Ollama's model.ParseName, in short: [host/][namespace/]model[:tag], each part from a small alphabet
_NAME = re.compile(
    r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,349}/){0,2}[A-Za-z0-9_][A-Za-z0-9._-]{0,79}(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,79})?"
)
_ROLES = ("system", "user", "assistant")
_JSON_FIELDS = ("from", "files", "adapters", "system", "template", "parameters", "messages", "license")


@dataclass(frozen=True)
class CreateInput:
    name: str
    from_: str | None  # a served model's name
    blob: str | None  # or a GGUF blob's sha256 hex
    changes: Changes
    stream: bool = True
    warnings: tuple[str, ...] = ()


def check_name(name: Any, message: str) -> str:
    """A model name Ollama would take (`name:tag`, optionally `namespace/` and `host/`), else 400 `message`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name.strip()):
        raise BadRequest(message)
    return name.strip()


def read_create(body: Mapping[str, Any]) -> CreateInput:
    raw_name = body.get("model") or body.get("name")
    name = check_name(raw_name, "invalid model name")
    fields = dict(body)
    warnings: tuple[str, ...] = ()
    modelfile = body.get("modelfile")
    if modelfile:
        if not isinstance(modelfile, str):
            raise BadRequest("modelfile must be a string")
        try:
            parsed = create_request(parse(modelfile))
        except ModelfileError as exc:
            raise BadRequest(str(exc)) from None
        fields = {**parsed.body, **{k: v for k, v in body.items() if k in _JSON_FIELDS and v is not None}}
        warnings = parsed.warnings
    if body.get("quantize") or body.get("quantization"):
        raise BadRequest(
            "ollamux does not quantize models: quantize the GGUF file with llama.cpp's llama-quantize first "
            "and create the model from the result"
        )
    if fields.get("adapters"):
        raise BadRequest("ADAPTER is not supported by ollamux: merge the LoRA adapter into the GGUF file first")
    from_, blob = _source(fields.get("from"), fields.get("files"))
    stream = body.get("stream", True)
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    changes = Changes(
        system=_opt_str(fields, "system"),
        template=_opt_str(fields, "template"),
        options=_parameters(fields.get("parameters")),
        messages=_messages(fields.get("messages")),
        licenses=_licenses(fields.get("license")),
    )
    return CreateInput(name, from_, blob, changes, stream is not False, warnings)


def _source(from_: Any, files: Any) -> tuple[str | None, str | None]:
    """(a served model's name, None) or (None, a GGUF blob's hex)."""
    if from_ is not None and not isinstance(from_, str):
        raise BadRequest("from must be a string")
    if files is not None and not isinstance(files, dict):
        raise BadRequest("files must be an object of file names to blob digests")
    if from_ and files:
        raise BadRequest("give either 'from' (a model) or 'files' (a GGUF blob), not both")
    if files:
        ggufs = []
        for path, digest in files.items():
            if path in (".", "") or path.startswith("/") or ".." in path.split("/") or any(c in path for c in "\\:"):
                raise BadRequest(f"file path must be relative: {path}")
            if not isinstance(digest, str):
                raise BadRequest("invalid digest format")
            ggufs.append(parse_digest(digest))
        if len(ggufs) != 1:
            raise BadRequest(f"ollamux creates a model from one GGUF file, not {len(ggufs)}")
        return None, ggufs[0]
    if not from_:
        raise BadRequest("neither 'from' or 'files' was specified")  # Ollama's wording
    text = from_.strip()
    if text.startswith(("@sha256", "sha256:", "sha256-")):
        return None, parse_digest(text)  # a blob, as older clients name an uploaded file in FROM
    if text.startswith(("/", "./", "../", "~")) or text.lower().endswith((".gguf", ".bin")):
        raise BadRequest(
            f"FROM {text}: the server does not read files by path; upload the file first (POST /api/blobs/"
            "sha256:<digest>) and name it in 'files', as `ollama create` and `ollamux create` do"
        )
    return text, None


def _opt_str(fields: Mapping[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def _parameters(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        options = check_options(value)
    except OptionError as exc:
        raise BadRequest(str(exc)) from None
    if "typical_p" in options:
        # Ollama's own refusal (server/create.go errTypicalPDeprecated)
        raise BadRequest(
            "typical_p is deprecated and cannot be set as a model parameter; pass it as a request option instead"
        )
    return {k: v for k, v in options.items() if k not in DEPRECATED}


def _messages(value: Any) -> tuple[dict[str, str], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest("messages must be a list")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise BadRequest(f'messages[{i}]: message role must be one of "system", "user", or "assistant"')
        content = m.get("content") or ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string")
        out.append({"role": str(m["role"]), "content": content})
    return tuple(out)


def _licenses(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise BadRequest("license must be a string or a list of strings")
