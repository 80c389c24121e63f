"""The `tools` and `tool_choice` of a Responses request as the pivot's, and the names to map back (pure).

Function tools, also those inside Codex's namespaces, become chat function tools; every other tool type
is dropped (see `translate.responses`). `Tools.names` maps a pivot tool name back to the client's
(name, namespace), for the calls of an answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest
from .responses_checks import bad_type, opt_object, opt_str, req_str

__all__ = ["Tools", "client_names", "collect_tools", "parse_tool_choice"]

_TOOL_CHOICES = ("auto", "none", "required")
# a tool without parameters still gets a schema: some chat templates iterate `parameters.properties`
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(slots=True)
class Tools:
    pivot: list[dict[str, Any]] = field(default_factory=list)  # chat function tools, in order
    names: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # pivot name -> (name, namespace)
    echo: list[dict[str, Any]] = field(default_factory=list)  # the function tools as the client sent them

    def pivot_name(self, name: str, namespace: str | None) -> str:
        """The pivot name of a client's (name, namespace): the name itself unless a collision qualified it."""
        if namespace:
            for pivot, ident in self.names.items():
                if ident == (name, namespace):
                    return pivot
        return name

    def pivot_names(self, name: str) -> list[str]:
        """Every pivot tool whose own name is `name` (a tool_choice names tools without their namespace)."""
        return [pivot for pivot, (own, _) in self.names.items() if own == name]


def _function_tool(t: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A Responses function tool (flat: name, description, parameters, strict) as the chat API's."""
    name = req_str(t, "name", f"{where}.name")
    fn: dict[str, Any] = {"name": name}
    description = opt_str(t, "description", f"{where}.description")
    if description is not None:
        fn["description"] = description
    parameters = opt_object(t, "parameters", f"{where}.parameters")
    fn["parameters"] = parameters if parameters is not None else _NO_PARAMETERS
    strict = t.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise bad_type(f"{where}.strict", "a boolean", strict)
        fn["strict"] = strict
    return fn


def collect_tools(value: Any) -> Tools:
    """`tools`: function tools, and the function tools inside namespaces, as pivot function tools.

    Codex sends `{"type": "namespace", "name": "mcp__server", "tools": [{"type": "function", ...}]}` (the
    SDK's `types/responses/namespace_tool.py`); the chat API has no namespaces, so nested functions are
    flattened under their own names, and `names` remembers the namespace, because the client expects a
    call of one back with its `namespace` set (the SDK's `lib/_parsing/_responses.py` looks a call up by
    name and namespace). A nested name that is already taken is qualified as `<namespace>__<name>`.
    Every other tool type (web_search, file_search, computer_use, custom, local_shell, mcp...) is
    served by OpenAI itself or by a grammar the pivot cannot carry: dropped.
    """
    tools = Tools()
    if value is None:
        return tools
    if not isinstance(value, list):
        raise bad_type("tools", "an array", value)
    found: list[tuple[dict[str, Any], str | None]] = []
    for i, t in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(t, dict):
            raise bad_type(where, "an object", t)
        kind = t.get("type")
        if kind == "function":
            found.append((_function_tool(t, where), None))
            tools.echo.append(t)
        elif kind == "namespace":
            namespace = req_str(t, "name", f"{where}.name")
            nested = t.get("tools")
            if not isinstance(nested, list):
                raise bad_type(f"{where}.tools", "an array", nested)
            for j, sub in enumerate(nested):
                if isinstance(sub, dict) and sub.get("type") == "function":
                    found.append((_function_tool(sub, f"{where}.tools[{j}]"), namespace))
    # top-level functions keep their names whatever comes before them; a nested one yields on a collision
    top = {fn["name"] for fn, ns in found if ns is None}
    for fn, ns in found:
        own = fn["name"]
        pivot = own
        if ns and (own in top or own in tools.names):
            pivot = f"{ns}__{own}"
        if pivot in tools.names:
            continue  # the same function twice: the first one stands
        tools.names[pivot] = (own, ns)
        tools.pivot.append({"type": "function", "function": {**fn, "name": pivot}})
    return tools


def client_names(request: Mapping[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Pivot tool name -> (name, namespace) as the client knows the tool, for the calls of an answer."""
    return collect_tools(request.get("tools")).names


def parse_tool_choice(value: Any, tools: Tools) -> tuple[Any, Any, set[str] | None]:
    """`tool_choice` as (the pivot's, the one to echo, the pivot tools it allows or None for all).

    A choice of a tool type that was dropped (web_search, mcp, custom...) becomes "auto": the model may
    still answer, just without that tool. `allowed_tools` narrows the pivot's tool list (local backends
    know no such choice) and keeps its mode.
    """
    if value is None:
        return None, "auto", None
    if isinstance(value, str):
        if value not in _TOOL_CHOICES:
            raise BadRequest(
                f"Invalid value: '{value}'. Supported values are: 'none', 'auto', and 'required'.", param="tool_choice"
            )
        return value, value, None
    if not isinstance(value, dict):
        raise bad_type("tool_choice", "a string or an object", value)
    kind = value.get("type")
    if kind == "function":
        name = req_str(value, "name", "tool_choice.name")
        pivots = tools.pivot_names(name)
        if not pivots:
            raise BadRequest(
                f"Invalid value for 'tool_choice': no function named '{name}' in 'tools'.", param="tool_choice"
            )
        return {"type": "function", "function": {"name": pivots[0]}}, {"type": "function", "name": name}, None
    if kind == "allowed_tools":
        mode = value.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise BadRequest(
                f"Invalid value: '{mode}'. Supported values are: 'auto' and 'required'.", param="tool_choice.mode"
            )
        listed = value.get("tools")
        if not isinstance(listed, list):
            raise bad_type("tool_choice.tools", "an array", listed)
        allowed: set[str] = set()
        for t in listed:
            if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str):
                allowed.update(tools.pivot_names(t["name"]))
        return mode, {"type": "allowed_tools", "mode": mode, "tools": listed}, allowed
    return "auto", "auto", None
