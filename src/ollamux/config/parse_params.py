"""A model's `defaults`, `strip` and `force` keys as ModelParams (what every request to it gets).

```yaml
models:
  qwen:
    backend: local
    defaults:                      # used when the request does not say otherwise
      options: {temperature: 0.7, num_predict: 512, stop: ["<|im_end|>"]}   # Ollama option names
      system: "You are terse."     # a leading system message, when the request has none
      think: false
      keep_alive: 10m
    strip: [seed, top_k]           # removed from every request
    force: {temperature: 0.2}      # set on every request, whatever it says
```
"""

from __future__ import annotations

from typing import Any

from ..errors import OllamuxError
from ..ollama_options import OPTION_TYPES, OptionError, check_value, parse_text
from ..translate.to_openai import parse_keep_alive
from .node import Node
from .settings import ConfigError, ModelDefaults, ModelParams

__all__ = ["FORCEABLE", "PARAMS_KEYS", "STRIPPABLE", "parse_params"]

# beyond the options, what a request carries that a model may refuse or pin
STRIPPABLE = frozenset(OPTION_TYPES) | {"think", "format", "tools"}
FORCEABLE = frozenset(OPTION_TYPES) | {"think"}
PARAMS_KEYS = frozenset({"defaults", "strip", "force"})
_ROLES = ("system", "user", "assistant")


def parse_params(node: Node, *, legacy_system: str | None) -> ModelParams:
    """`defaults`, `strip` and `force` of a model node; `legacy_system` is the older top-level `system`."""
    d = node.child("defaults")
    d.only({"options", "system", "think", "keep_alive", "messages"})
    system = d.opt_str("system")
    if system is not None and legacy_system is not None:
        raise ConfigError(node.key("system"), "is the same as defaults.system: give only one")
    defaults = ModelDefaults(
        options=_options(d.child("options")),
        system=system if system is not None else legacy_system,
        think=think_value(d.key("think"), d.value("think")) if d.has("think") else None,
        keep_alive=_keep_alive(d) if d.has("keep_alive") else None,
        messages=_messages(d),
    )
    strip = node.str_list("strip")
    for i, name in enumerate(strip):
        if name not in STRIPPABLE:
            raise ConfigError(f"{node.key('strip')}[{i}]", f"'{name}' is not an Ollama option, think, format or tools")
    force = node.child("force")
    forced: dict[str, Any] = {}
    for name in force.data:
        if name == "think":
            forced[name] = think_value(force.key(name), force.value(name))
        elif name not in FORCEABLE:
            raise ConfigError(force.key(name), "is not an Ollama option or think")
        else:
            forced[name] = _option(force, name)
    return ModelParams(defaults=defaults, strip=frozenset(strip), force=forced)


def think_value(key: str, value: Any) -> bool | str:
    if isinstance(value, bool) or value in ("low", "medium", "high", "max"):
        return value  # type: ignore[no-any-return]
    raise ConfigError(key, f"must be true, false, low, medium, high or max, not {value!r}")


def _options(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in node.data:
        if name not in OPTION_TYPES:
            raise ConfigError(node.key(name), "is not an Ollama option (num_predict, temperature, top_p, stop...)")
        if node.value(name) is not None:
            out[name] = _option(node, name)
    return out


def _option(node: Node, name: str) -> Any:
    """One option value: typed YAML as is, or a string (a `${VAR}` say) read as a Modelfile would read it."""
    value = node.value(name)
    try:
        if OPTION_TYPES[name] == "strings":
            return list(node.str_list(name))
        if isinstance(value, str):
            return parse_text(name, [node.expand(node.key(name), value)])
        return check_value(name, value)
    except OptionError as exc:
        raise ConfigError(node.key(name), str(exc)) from None


def _keep_alive(node: Node) -> float:
    value = node.value("keep_alive")
    try:
        seconds = parse_keep_alive(node.expand(node.key("keep_alive"), value) if isinstance(value, str) else value)
    except OllamuxError as exc:
        raise ConfigError(node.key("keep_alive"), exc.message) from None
    assert seconds is not None
    return seconds


def _messages(node: Node) -> tuple[dict[str, str], ...]:
    raw = node.value("messages")
    if raw is None:
        return ()
    key = node.key("messages")
    if not isinstance(raw, list):
        raise ConfigError(key, "must be a list of {role, content} messages")
    out = []
    for i, m in enumerate(raw):
        item = Node(f"{key}[{i}]", m, node.environ)
        item.only({"role", "content"})
        role = item.req_str("role")
        if role not in _ROLES:
            raise ConfigError(item.key("role"), f"must be one of {', '.join(_ROLES)}, not '{role}'")
        out.append({"role": role, "content": item.opt_str("content") or ""})
    return tuple(out)
