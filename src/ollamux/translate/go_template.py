"""The subset of Go's text/template that Ollama prompt templates use, rendered as Ollama renders them (pure).

For /api/generate's `template` (Ollama: server/routes.go GenerateHandler parses `req.Template` with
template.Parse and renders the request through it, template/template.go `Template.Execute`):

  {{ .System }} {{ .Prompt }} {{ .Response }}      the values (text/template prints them unescaped)
  {{ if .X }}...{{ else }}...{{ end }}             truthiness as Go's: a non-empty string or list
  {{ range .Messages }}{{ .Role }} {{ .Content }}{{ end }}   each message; `$.System` etc. reach the top
  {{- ... -}}                                      trims the white space before / after the action
  {{/* a comment */}}

Two ways to render, as Ollama's `Execute` has them: a template that names `.Messages` gets the messages
(the system message among them) with `.System` their system text; any other is the legacy
System/Prompt/Response template, rendered up to its first `{{ .Response }}` (Ollama cuts the parse tree
after that node, in document order, so the answer is the model's to write; `.Response` itself is "").

Anything else (`with`, `else if`, functions, pipelines, variables of one's own, other fields) raises
`TemplateError` naming the construct: one clear 400 rather than a prompt the model was never meant to see.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TemplateError", "parse", "render_generate"]


class TemplateError(ValueError):
    pass


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOP_FIELDS = frozenset({"System", "Prompt", "Response", "Messages"})
_MESSAGE_FIELDS = frozenset({"Role", "Content"})


@dataclass
class _Text:
    text: str


@dataclass
class _Field:
    name: str  # e.g. "System"; `top` for `$.System`
    top: bool = False


@dataclass
class _If:
    cond: _Field
    then: list[Any] = field(default_factory=list)
    other: list[Any] = field(default_factory=list)


@dataclass
class _Range:
    over: _Field
    body: list[Any] = field(default_factory=list)


def _field(expr: str, *, in_range: bool, action: str) -> _Field:
    top = expr.startswith("$.")
    name = expr[2:] if top else expr[1:] if expr.startswith(".") else ""
    if not name.isidentifier():
        raise TemplateError(f"template: unsupported construct {action}")
    allowed = _MESSAGE_FIELDS if in_range and not top else _TOP_FIELDS
    if name not in allowed:
        raise TemplateError(f"template: unsupported field {expr} in {action}")
    return _Field(name, top)


def _tokens(source: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", body) in order, with `{{- ` / ` -}}` trimming applied to the text."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if text:
            out.append(("text", text))
        out.append(("action", m.group(2).strip()))
        trim_next, pos = bool(m.group(3)), m.end()
    rest = source[pos:]
    if "{{" in rest:
        raise TemplateError("template: unclosed action")
    if trim_next:
        rest = rest.lstrip()
    if rest:
        out.append(("text", rest))
    return out


def parse(source: str) -> list[Any]:
    """The template's nodes; raises TemplateError on what the subset lacks."""
    root: list[Any] = []
    stack: list[tuple[Any, list[Any]]] = []  # (open node, the list now filled)
    current = root
    for kind, body in _tokens(source):
        if kind == "text":
            current.append(_Text(body))
            continue
        action = "{{ " + body + " }}"
        in_range = any(isinstance(n, _Range) for n, _ in stack)
        if body.startswith("/*") and body.endswith("*/"):
            continue
        words = body.split()
        if not words:
            raise TemplateError("template: empty action {{ }}")
        head = words[0]
        if head in ("if", "range"):
            if len(words) != 2:
                raise TemplateError(f"template: unsupported construct {action}")
            cond = _field(words[1], in_range=in_range, action=action)
            if head == "range" and cond.name != "Messages":
                raise TemplateError(f"template: unsupported construct {action}")
            node: Any = _If(cond) if head == "if" else _Range(cond)
            current.append(node)
            stack.append((node, current))
            current = node.then if head == "if" else node.body
        elif head == "else":
            if len(words) != 1 or not stack or not isinstance(stack[-1][0], _If) or current is stack[-1][0].other:
                raise TemplateError(f"template: unsupported construct {action}")
            current = stack[-1][0].other
        elif head == "end":
            if len(words) != 1 or not stack:
                raise TemplateError(f"template: unexpected {action}")
            current = stack.pop()[1]
        elif len(words) == 1 and (head.startswith(".") or head.startswith("$.")):
            f = _field(head, in_range=in_range, action=action)
            if f.name == "Messages":
                raise TemplateError(f"template: unsupported construct {action}")
            current.append(f)
        else:
            raise TemplateError(f"template: unsupported construct {action}")
    if stack:
        raise TemplateError("template: unexpected EOF (an if or range without its end)")
    return root


def _names_messages(nodes: Sequence[Any]) -> bool:
    for n in nodes:
        if isinstance(n, _Range) or (isinstance(n, _If) and n.cond.name == "Messages"):
            return True
        if isinstance(n, _If) and (_names_messages(n.then) or _names_messages(n.other)):
            return True
    return False


def _cut_after_response(nodes: list[Any], seen: list[bool]) -> list[Any]:
    """Ollama's deleteNode (template/template.go): every node after the first `.Response`, in document
    order, is gone; the nodes that contain it stay."""
    out: list[Any] = []
    for n in nodes:
        if seen[0]:
            break
        if isinstance(n, _Field):
            seen[0] = n.name == "Response"
            out.append(n)
        elif isinstance(n, _If):
            seen[0] = n.cond.name == "Response"
            then = [] if seen[0] else _cut_after_response(n.then, seen)
            other = [] if seen[0] else _cut_after_response(n.other, seen)
            out.append(_If(n.cond, then, other))
        else:
            out.append(n)
    return out


def _value(f: _Field, top: Mapping[str, Any], here: Mapping[str, Any]) -> Any:
    return (top if f.top else here).get(f.name, "")


def _execute(nodes: Sequence[Any], top: Mapping[str, Any], here: Mapping[str, Any], out: list[str]) -> None:
    for n in nodes:
        if isinstance(n, _Text):
            out.append(n.text)
        elif isinstance(n, _Field):
            value = _value(n, top, here)
            out.append(value if isinstance(value, str) else str(value))
        elif isinstance(n, _If):
            _execute(n.then if _value(n.cond, top, here) else n.other, top, here, out)
        else:
            for message in _value(n.over, top, here) or ():
                _execute(n.body, top, message, out)


def render_generate(source: str, *, prompt: str, system: str = "") -> str:
    """The prompt Ollama's GenerateHandler renders for `template` with this prompt and system text: the
    messages `[system?, user]`, through Template.Execute's two ways (the module docstring)."""
    nodes = parse(source)
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    if _names_messages(nodes):
        values: dict[str, Any] = {
            "System": system,
            "Response": "",
            "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages],
        }
    else:
        values = {"System": system, "Prompt": prompt, "Response": ""}
        nodes = _cut_after_response(nodes, [False])
    out: list[str] = []
    _execute(nodes, values, values, out)
    return "".join(out)
