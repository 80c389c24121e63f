"""Ollama's model options (`options` of a request, `PARAMETER` of a Modelfile): their names and types (pure).

The table is Ollama's `api.Options` and `api.Runner` (api/types.go), with the parameters Ollama has since
deprecated still known, so an old Modelfile parses. Two readings: `parse_text` types a Modelfile value the way
Ollama's `api.FormatParams` does (strconv.ParseInt, ParseFloat, ParseBool; `stop` collects every line), and
`check_value` checks a JSON value (a create request's `parameters`, the config file's `defaults.options`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "DEPRECATED",
    "OPTION_TYPES",
    "OptionError",
    "OptionType",
    "check_options",
    "check_value",
    "parse_text",
]

OptionType = Literal["int", "float", "bool", "strings"]

OPTION_TYPES: Mapping[str, OptionType] = {
    # sampling, set per request
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "int",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "strings",
    # the runner's, set when the model is loaded
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
    # deprecated by Ollama (parser.deprecatedParameters and older releases): accepted, never sent anywhere
    "numa": "bool",
    "low_vram": "bool",
    "f16_kv": "bool",
    "logits_all": "bool",
    "vocab_only": "bool",
    "use_mlock": "bool",
    "embedding_only": "bool",
    "tfs_z": "float",
    "mirostat": "int",
    "mirostat_tau": "float",
    "mirostat_eta": "float",
    "penalize_newline": "bool",
}

# Ollama's CLI warns "parameter X is deprecated" and leaves them out of the request (parser.go)
DEPRECATED = frozenset(
    {"penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock", "mirostat"}
    | {"mirostat_tau", "mirostat_eta"}
)


class OptionError(ValueError):
    """A parameter Ollama would refuse; the message is Ollama's wording where it has one."""


def parse_text(name: str, values: list[str]) -> Any:
    """A Modelfile `PARAMETER name value` (every value given for `name`, in order) as its typed value."""
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise OptionError(f"unknown parameter '{name}'")
    if kind == "strings":
        return list(values)
    text = values[-1].strip()  # the last one wins, as a later PARAMETER line overrides an earlier one
    shown = "[" + " ".join(values) + "]"  # Go prints the slice: "invalid int value [abc]"
    if kind == "int":
        try:
            return int(text, 10)
        except ValueError:
            raise OptionError(f"invalid int value {shown}") from None
    if kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise OptionError(f"invalid float value {shown}") from None
        if not math.isfinite(value):
            raise OptionError(f"invalid float value {shown}")
        return value
    lowered = text.lower()
    if lowered in ("1", "t", "true"):  # strconv.ParseBool's spellings
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise OptionError(f"invalid bool value {shown}")


def check_value(name: str, value: Any) -> Any:
    """A JSON option value, checked against its type: an int option takes 3 or 3.0, `stop` a string or list."""
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise OptionError(f"unknown parameter '{name}'")
    if kind == "strings":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list | tuple) and all(isinstance(s, str) for s in value):
            return list(value)
        raise OptionError(f"parameter '{name}' must be a string or a list of strings")
    if kind == "bool":
        if not isinstance(value, bool):
            raise OptionError(f"parameter '{name}' must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OptionError(f"parameter '{name}' must be a number")
    if kind == "int":
        if not float(value).is_integer():
            raise OptionError(f"parameter '{name}' must be an integer")
        return int(value)
    return float(value) if isinstance(value, int) else value


def check_options(options: Any) -> dict[str, Any]:
    """A whole options object (a create request's `parameters`) checked; its keys in order."""
    if not isinstance(options, Mapping):
        raise OptionError("parameters must be an object")
    return {str(k): check_value(str(k), v) for k, v in options.items() if v is not None}
