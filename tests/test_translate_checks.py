"""Upstream JSON is untrusted: a wrong type is a 502 that names the field (translate/checks.py)."""

from __future__ import annotations

import pytest

from ollamux.errors import UpstreamError
from ollamux.translate.checks import json_type, opt_field


def test_absent_null_and_right_type_pass() -> None:
    obj = {"content": "hi", "usage": None}
    assert opt_field(obj, "content", str, "a message") == "hi"
    assert opt_field(obj, "usage", dict, "an answer") is None
    assert opt_field(obj, "missing", list, "an answer") is None


@pytest.mark.parametrize(
    ("value", "kind", "said"),
    [
        (5, str, "an integer, not a string"),
        ("oops", dict, "a string, not an object"),
        ([1], dict, "an array, not an object"),
        (True, list, "a boolean, not an array"),
    ],
)
def test_a_wrong_type_is_a_502_naming_the_field(value: object, kind: type, said: str) -> None:
    with pytest.raises(UpstreamError) as info:
        opt_field({"content": value}, "content", kind, "a message")
    assert info.value.status == 502
    assert info.value.message == f"backend sent a message whose 'content' is {said}"


def test_json_type_names() -> None:
    values: list[object] = [{}, [], "", 1, 1.5, None]
    assert [json_type(v) for v in values] == [
        "an object",
        "an array",
        "a string",
        "an integer",
        "a number",
        "null",
    ]
