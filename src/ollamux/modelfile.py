"""Ollama's Modelfile: the parser (text -> commands -> a create request) and the writer (pure).

The parser is Ollama's own state machine (parser/parser.go `ParseFile`), so a Modelfile reads here as it
reads there: commands are case-insensitive words (`FROM`, `PARAMETER name`, `SYSTEM`, `TEMPLATE`, `MESSAGE
role`, `LICENSE`, `ADAPTER`, ...), `#` starts a comment line, a value runs to the end of its line, and a
value in one or three double quotes may span lines (the quotes are dropped; nothing inside is an escape). Errors
carry Ollama's wording and line number. `create_request` turns the commands into the JSON form of
`/api/create`, typing each PARAMETER by Ollama's option types (`stop` may be given many times), as Ollama's
`Modelfile.CreateRequest` does; `render` writes one back (what `/api/show` answers as `modelfile`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .ollama_options import DEPRECATED, OPTION_TYPES, OptionError, parse_text

__all__ = [
    "Command",
    "CreateRequest",
    "ModelfileError",
    "create_request",
    "parameters_text",
    "parse",
    "quote",
    "render",
]

_COMMANDS = frozenset(
    {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message"}
    | {"requires"}
)
_ROLES = ("system", "user", "assistant")
_INVALID_COMMAND = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", "renderer", '
    '"parser", "parameter", "message", or "requires"'
)
_INVALID_ROLE = 'message role must be one of "system", "user", or "assistant"'


class ModelfileError(ValueError):
    """A Modelfile Ollama would refuse; the message is Ollama's (with `(line N): ` where it gives one)."""


@dataclass(frozen=True)
class Command:
    name: str  # "model" for FROM, the parameter's name for PARAMETER, else the command in lower case
    args: str  # MESSAGE: "role: content", as Ollama keeps it


class _State(Enum):
    NIL = 0
    NAME = 1
    VALUE = 2
    PARAMETER = 3
    MESSAGE = 4
    COMMENT = 5


class _UnexpectedEOF(Exception):
    pass


def _is_space(ch: str) -> bool:
    return ch in (" ", "\t")


def _is_newline(ch: str) -> bool:
    return ch in ("\r", "\n")


def _is_alpha(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _step(ch: str, state: _State) -> tuple[_State, str]:
    """Ollama's parseRuneForState: the next state and the character to keep ("" keeps none)."""
    if state is _State.NIL:
        if ch == "#":
            return _State.COMMENT, ""
        if _is_space(ch) or _is_newline(ch):
            return _State.NIL, ""
        return _State.NAME, ch
    if state is _State.NAME:
        if _is_alpha(ch):
            return _State.NAME, ch
        if _is_space(ch):
            return _State.VALUE, ""
        raise ModelfileError(_INVALID_COMMAND)
    if state is _State.VALUE:
        if _is_newline(ch) or _is_space(ch):
            return _State.NIL, ch
        return _State.VALUE, ch
    if state is _State.PARAMETER:
        if _is_alpha(ch) or (ch.isdigit() and ch.isascii()) or ch == "_":
            return _State.PARAMETER, ch
        if _is_space(ch):
            return _State.VALUE, ""
        raise _UnexpectedEOF
    if state is _State.MESSAGE:
        if _is_alpha(ch):
            return _State.MESSAGE, ch
        if _is_space(ch):
            return _State.VALUE, ""
        raise _UnexpectedEOF
    # a comment runs to the end of its line
    return (_State.NIL, "") if _is_newline(ch) else (_State.COMMENT, "")


def _unquote(s: str) -> tuple[str, bool]:
    """A value without its quotes; False while a quote is still open (the value goes on)."""
    if s.startswith('"""'):
        if len(s) >= 6 and s.endswith('"""'):
            return s[3:-3], True
        return "", False
    if s.startswith('"'):
        if len(s) >= 2 and s.endswith('"'):
            return s[1:-1], True
        return "", False
    return s, True


def parse(text: str) -> list[Command]:
    """The commands of a Modelfile; raises ModelfileError as Ollama's parser refuses one."""
    text = text.removeprefix("\ufeff")  # a byte-order mark, as Ollama's BOMOverride drops it
    commands: list[Command] = []
    name = ""
    role = ""
    state = _State.NIL
    line = 1
    buf: list[str] = []
    for ch in text:
        if _is_newline(ch):
            line += 1
        try:
            nxt, keep = _step(ch, state)
        except ModelfileError as exc:
            raise ModelfileError(f"(line {line}): {exc}") from None
        except _UnexpectedEOF:
            raise ModelfileError(f"unexpected EOF: {''.join(buf)}") from None
        if nxt is not state:
            if state is _State.NAME:
                word = "".join(buf).lower()
                if word not in _COMMANDS:
                    raise ModelfileError(f"(line {line}): {_INVALID_COMMAND}")
                if word == "from":
                    name = "model"
                elif word == "parameter":
                    nxt = _State.PARAMETER  # its own state names the command
                else:
                    if word == "message":
                        nxt = _State.MESSAGE  # checks the role
                    name = word
            elif state is _State.PARAMETER:
                name = "".join(buf)
            elif state is _State.MESSAGE:
                role = "".join(buf)
                if role not in _ROLES:
                    raise ModelfileError(f"(line {line}): {_INVALID_ROLE}")
            elif state is _State.VALUE:
                value, closed = _unquote("".join(buf).strip())
                if not closed or _is_space(ch):
                    buf.append(ch)  # a space inside a value, or a line break inside quotes: part of it
                    continue
                if role:
                    value, role = f"{role}: {value}", ""
                commands.append(Command(name, value))
            buf = []
            state = nxt
        if keep and keep.isprintable():
            buf.append(keep)
    if state is _State.VALUE:
        value, closed = _unquote("".join(buf).strip())
        if not closed:
            raise ModelfileError("unexpected EOF")
        commands.append(Command(name, f"{role}: {value}" if role else value))
    elif state not in (_State.NIL, _State.COMMENT):
        raise ModelfileError("unexpected EOF")
    if not any(c.name == "model" for c in commands):
        raise ModelfileError("no FROM line")
    return commands


@dataclass(frozen=True)
class CreateRequest:
    """The JSON form of /api/create a Modelfile stands for, and what the parser warned about."""

    body: dict[str, Any]
    warnings: tuple[str, ...] = ()


def create_request(commands: Iterable[Command]) -> CreateRequest:
    """`/api/create`'s JSON fields for the commands (Ollama's Modelfile.CreateRequest): `from` as written
    (a model name, a blob digest or a file path, for the caller to resolve), `parameters` typed."""
    body: dict[str, Any] = {}
    params: dict[str, list[str]] = {}
    messages: list[dict[str, str]] = []
    licenses: list[str] = []
    warnings: list[str] = []
    for c in commands:
        if c.name == "model":
            body["from"] = c.args
        elif c.name in ("template", "system"):
            body[c.name] = c.args
        elif c.name == "license":
            licenses.append(c.args)
        elif c.name == "message":
            r, _, content = c.args.partition(": ")
            messages.append({"role": r, "content": content})
        elif c.name in ("adapter", "draft"):
            raise ModelfileError(
                f"{c.name.upper()} is not supported by ollamux: it serves one GGUF file per model "
                "(merge a LoRA adapter into the model's GGUF file first)"
            )
        elif c.name in ("renderer", "parser", "requires"):
            warnings.append(f"{c.name.upper()} is ignored: the backend's own chat template formats prompts")
        elif c.name in DEPRECATED:
            warnings.append(f"parameter {c.name} is deprecated")  # Ollama's own warning, and it is dropped too
        else:
            params.setdefault(c.name, []).append(c.args)
    typed: dict[str, Any] = {}
    for key, values in params.items():
        try:
            # a list option collects every line; any other takes its last one
            typed[key] = parse_text(key, values if OPTION_TYPES.get(key) == "strings" else values[-1:])
        except OptionError as exc:
            raise ModelfileError(str(exc)) from None
    if typed:
        body["parameters"] = typed
    if messages:
        body["messages"] = messages
    if licenses:
        body["license"] = licenses
    return CreateRequest(body, tuple(warnings))


# ------------------------------------------------------------------------------------------ writing
def quote(value: str) -> str:
    """A value as a Modelfile writes it (Ollama's `quote`): bare unless it holds a line break, starts or
    ends with a space, or starts with a quote (which the parser would take for one); then in one double
    quote, or in three when it holds a quote itself."""
    if "\n" in value or "\r" in value or value.startswith((" ", "\t", '"')) or value.endswith((" ", "\t")):
        return f'"""{value}"""' if '"' in value else f'"{value}"'
    return value


def _go_value(v: Any) -> str:
    """A parameter value as Go's %v prints it (a whole float without `.0`)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        text = repr(v) if math.isfinite(v) else str(v)
        return text[:-2] if text.endswith(".0") else text
    return str(v)


def _expanded(options: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) pairs, sorted by name, a list option once per item (as Ollama writes `stop`)."""
    out: list[tuple[str, Any]] = []
    for key in sorted(options):
        value = options[key]
        for item in value if isinstance(value, list | tuple) else [value]:
            out.append((key, item))
    return out


def parameters_text(options: Mapping[str, Any]) -> str:
    """`/api/show`'s `parameters`: one `name value` line per value, as Ollama's ShowHandler prints them
    (`%-30s %#v`: strings in Go's quotes)."""
    lines = []
    for key, value in _expanded(options):
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else _go_value(value)
        lines.append(f"{key:<30} {shown}")
    return "\n".join(lines)


def render(
    *,
    from_: str,
    template: str | None = None,
    system: str | None = None,
    options: Mapping[str, Any] | None = None,
    licenses: Sequence[str] = (),
    messages: Sequence[Mapping[str, str]] = (),
    header: Sequence[str] = (),
) -> str:
    """A Modelfile in Ollama's order (Model.String: FROM, TEMPLATE, SYSTEM, PARAMETER, LICENSE, MESSAGE)
    that `parse` reads back to the same values; `header` lines go first as comments."""
    lines = [f"# {h}" if h else "#" for h in header]
    if header:
        lines.append("")
    lines.append(f"FROM {from_}")
    if template is not None:
        lines.append(f"TEMPLATE {quote(template)}")
    if system is not None:
        lines.append(f"SYSTEM {quote(system)}")
    for key, value in _expanded(options or {}):
        lines.append(f"PARAMETER {key} {quote(_go_value(value))}")
    for text in licenses:
        lines.append(f"LICENSE {quote(text)}")
    for m in messages:
        lines.append(f"MESSAGE {m.get('role', 'user')} {quote(str(m.get('content', '')))}")
    return "\n".join(lines) + "\n"
