"""The times the request log's filters take (`store.times.parse_time`) and the admin API's `since`/`until`
parameters built on it (`api.admin_common.query_time`): every accepted form, and a 400 that lists them."""

from __future__ import annotations

import time

import pytest

from ollamux.api.admin_common import query_time
from ollamux.errors import BadRequest
from ollamux.store.times import parse_time


def test_unix_seconds_ages_and_iso_times() -> None:
    assert parse_time("1738324800") == 1738324800.0
    assert parse_time("1738324800.5") == 1738324800.5
    assert parse_time("90s", now=1000.0) == 910.0
    assert parse_time(" 1.5 h ", now=10000.0) == 4600.0
    assert parse_time("2w", now=2_000_000.0) == 2_000_000.0 - 14 * 86400
    assert parse_time("2025-01-31T12:00:00Z") == 1738324800.0
    assert parse_time("2025-01-31T13:00:00+01:00") == 1738324800.0
    with pytest.raises(ValueError, match="'yesterday' is neither unix seconds, an age"):
        parse_time("yesterday")


def test_query_time_absent_given_and_wrong() -> None:
    assert query_time({}, "since") is None
    assert query_time({"since": "  "}, "since") is None
    before = time.time()
    got = query_time({"since": "15m"}, "since")
    assert got is not None and before - 900 <= got <= time.time() - 900
    assert query_time({"until": "2025-01-31T12:00:00Z"}, "until") == 1738324800.0
    with pytest.raises(BadRequest) as err:
        query_time({"until": "soon\x00"}, "until")
    assert "query parameter 'until' must be unix seconds, an age (30s, 15m, 2h, 7d) or an ISO 8601 time" in str(
        err.value.message
    )
    assert err.value.status == 400
