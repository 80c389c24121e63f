"""llama.cpp server options per model (`runtime: {options: {...}}`): checked at config load, applied by the engine.

An option is an attribute of xllamacpp's `CommonParams` (what `llama-server`'s flags fill in), by its
attribute name: `n_gpu_layers`, `n_batch`, `cache_type_k`, `flash_attn_type` (`flash_attn` for short),
`reasoning_format`, `rope_freq_scale`... Nested ones take a dotted key or a nested mapping:
`cpuparams.n_threads`, `sampling.top_k`, `speculative.draft.n_max`.

The names and types are read from the installed xllamacpp itself (a fresh `CommonParams`), not from a list
kept here, so a newer wheel's options work at once and a typo fails at load, not when the model starts.
A value must fit the attribute's type: bool, int, float (an int is fine), str; an enum takes its member
name in any case, with or without the enum's prefix (`q8_0` for `GGML_TYPE_Q8_0`, `deepseek` for
`COMMON_REASONING_FORMAT_DEEPSEEK`), and an on/off/auto enum takes a bool too (`flash_attn: true`).
Lists, sets and the options ollamux sets itself (`RESERVED`) are refused.

`check_options` returns the options normalized to JSON scalars (an enum as its full member name): the
manager hands them to the engine as one `--options` JSON argument, and `apply_options` sets them there.
Without xllamacpp installed nothing can be checked; the options pass as given and the engine reports them.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["ALIASES", "RESERVED", "OptionError", "apply_options", "check_options", "dumps", "flatten", "load_params"]

Scalar = bool | int | float | str

# llama-server's flag spellings that differ from the attribute's
ALIASES = {
    "flash_attn": "flash_attn_type",
    "threads": "cpuparams.n_threads",
    "threads_batch": "cpuparams_batch.n_threads",
}

# what ollamux sets from its own keys (or must know to be right), and the key to use instead
RESERVED = {
    "model": "runtime.gguf",
    "mmproj": "runtime.mmproj (or an mmproj*.gguf beside the model)",
    "hostnames": "nothing: ollamux binds the engine to 127.0.0.1",
    "port": "nothing: ollamux picks a free port",
    "n_ctx": "runtime.ctx",
    "n_parallel": "runtime.parallel",
    "model_alias": "the model's name",
    "embedding": "nothing: the engine always serves embeddings",
    # /api/embed cuts inputs to the physical batch the engine runs with (engine.EMBED_BATCH)
    "n_ubatch": "nothing: ollamux cuts embedding inputs to this batch size (512)",
    "models_dir": "runtime.models_dir (this is llama-server's router, which ollamux replaces)",
}


class OptionError(ValueError):
    """A bad option; `key` is its dotted name under `options`."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def flatten(options: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{sampling: {top_k: 20}}` and `{sampling.top_k: 20}` alike become `{"sampling.top_k": 20}`."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_params() -> Any | None:
    """A fresh `CommonParams` of the installed xllamacpp (what options are checked against); None without it."""
    try:
        import xllamacpp
    except ImportError:
        return None
    return xllamacpp.CommonParams()


def check_options(options: Mapping[str, Any], params: Any | None) -> dict[str, Scalar]:
    """The options, checked against `params` (a `CommonParams`; None: not checked) and normalized."""
    out: dict[str, Scalar] = {}
    for raw_key, value in flatten(options).items():
        key = ALIASES.get(raw_key, raw_key)
        if key.split(".", 1)[0] in RESERVED:
            top = key.split(".", 1)[0]
            raise OptionError(raw_key, f"is set by ollamux; use {RESERVED[top]}")
        if params is None:
            if not isinstance(value, bool | int | float | str):
                raise OptionError(raw_key, f"must be a bool, number or string, not {type(value).__name__}")
            out[key] = value
            continue
        owner, attr = _resolve(params, key, raw_key)
        out[key] = _coerce(raw_key, getattr(owner, attr), value)
    return out


def apply_options(params: Any, options: Mapping[str, Scalar]) -> None:
    """Set normalized options (`check_options`' result, as the engine receives it) on `params`."""
    for key, value in options.items():
        owner, attr = _resolve(params, key, key)
        current = getattr(owner, attr)
        if isinstance(current, enum.Enum):
            value = _coerce(key, current, value)
            setattr(owner, attr, type(current)[str(value)])
        elif isinstance(current, float) and not isinstance(value, bool):
            setattr(owner, attr, float(value))
        else:
            setattr(owner, attr, value)


def dumps(options: Mapping[str, Scalar]) -> str:
    return json.dumps(dict(options), sort_keys=True)


def _resolve(params: Any, key: str, shown: str) -> tuple[Any, str]:
    """The object holding the option's attribute, and the attribute's name."""
    *path, attr = key.split(".")
    owner = params
    for i, part in enumerate(path):
        child = getattr(owner, part, None) if not part.startswith("_") else None
        if child is None or isinstance(child, _SCALARS) or callable(child):
            where = ".".join(path[: i + 1])
            raise OptionError(shown, f"'{where}' is not a group of llama.cpp server options")
        owner = child
    if attr.startswith("_") or not hasattr(owner, attr) or callable(getattr(owner, attr)):
        raise OptionError(shown, "is not an option of the installed llama.cpp server (xllamacpp CommonParams)")
    value = getattr(owner, attr)
    if not isinstance(value, _SCALARS):
        kind = type(value).__name__
        raise OptionError(shown, f"is a {kind}, not a single value: set its fields ({shown}.NAME)")
    return owner, attr


_SCALARS = (bool, int, float, str, enum.Enum, list, set, dict)


def _coerce(key: str, current: Any, value: Any) -> Scalar:
    """`value` as the type of the attribute's `current` value, JSON-ready (an enum: its member name)."""
    if isinstance(current, enum.Enum):
        return _enum_member(key, type(current), value)
    if isinstance(current, list | set | dict):
        raise OptionError(key, "is a list option; ollamux does not set those")
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise OptionError(key, f"must be true or false, not {value!r}")
    if isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise OptionError(key, f"must be an integer, not {value!r}")
    if isinstance(current, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise OptionError(key, f"must be a number, not {value!r}")
    if isinstance(value, str):
        return value
    raise OptionError(key, f"must be a string, not {value!r}")


def _enum_member(key: str, cls: type[enum.Enum], value: Any) -> str:
    names = list(cls.__members__)
    if isinstance(value, bool):
        # an on/off/auto enum (flash attention): true is ENABLED, false DISABLED
        want = "ENABLED" if value else "DISABLED"
        for n in names:
            if n.endswith("_" + want):
                return n
    elif isinstance(value, str):
        v = value.strip().upper().replace("-", "_")
        v = {"ON": "ENABLED", "OFF": "DISABLED"}.get(v, v)
        for n in names:
            if n == v or n.endswith("_" + v):
                return n
    prefix = _common_prefix(names)
    choices = ", ".join(n[len(prefix) :].lower() for n in names if not n.endswith("_COUNT"))
    raise OptionError(key, f"must be one of {choices}, not {value!r}")


def _common_prefix(names: list[str]) -> str:
    if len(names) < 2:
        return ""
    first, last = min(names), max(names)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[: first.rfind("_", 0, i + 1) + 1] if i else ""
