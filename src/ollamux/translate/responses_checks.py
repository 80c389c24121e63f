"""The field checks of a Responses request, in OpenAI's own words (pure).

Error wording is OpenAI's ("Missing required parameter: 'input'.", "Invalid type for ...") because clients
and people search for it. Shared by `responses_tools` and `responses_request`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest
from .checks import json_type

__all__ = ["bad_type", "missing", "opt_bool", "opt_int", "opt_number", "opt_object", "opt_str", "req_str"]


def bad_type(param: str, expected: str, value: Any) -> BadRequest:
    return BadRequest(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.", param=param
    )


def missing(param: str) -> BadRequest:
    return BadRequest(f"Missing required parameter: '{param}'.", param=param)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def opt_str(obj: Mapping[str, Any], key: str, param: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise bad_type(param, "a string", value)


def req_str(obj: Mapping[str, Any], key: str, param: str) -> str:
    value = opt_str(obj, key, param)
    if not value:
        raise missing(param)
    return value


def opt_number(body: Mapping[str, Any], key: str) -> float | int | None:
    value = body.get(key)
    if value is None or _is_number(value):
        return value
    raise bad_type(key, "a number", value)


def opt_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise bad_type(key, "an integer", value)


def opt_bool(body: Mapping[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise bad_type(key, "a boolean", value)


def opt_object(body: Mapping[str, Any], key: str, param: str | None = None) -> Mapping[str, Any] | None:
    value = body.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise bad_type(param or key, "an object", value)
