"""What the SQLite writer process stores for each value of a row: NULL for None (bound through the adapter
that makes None cheap, `writer_process.bind_none_fast`), and the column's own type for everything else, in
batches that fill whole multi-row statements and the rows left over."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ollamux.config import RequestLogSettings
from ollamux.observe import RequestRecord
from ollamux.store import RequestLog, writer_process
from ollamux.store.schema import COLUMNS, row_of
from ollamux.store.writer import capped_entry, entry_of

# one batch: 32 rows a statement in writer_process, so 70 is two whole statements and 6 rows one by one
ROWS = 70


def _full(i: int) -> RequestRecord:
    """Every column given a value."""
    rec = RequestRecord(
        id=f"full{i}",
        api="openai",
        route="/v1/chat/completions",
        client="10.0.0.1",
        key_name="team",
        model_requested="m",
        model_served="m:latest",
        backend="b",
        upstream_url="http://up/v1/chat/completions",
        status=200,
        streamed=True,
        prompt_tokens=5,
        completion_tokens=7,
        error="late failure",
        request_body=b'{"model": "m"}',
        response_text="hello",
    )
    rec.first_token_ns = rec.start_ns + 1_000_000
    rec.end_ns = rec.start_ns + 8_000_000
    return rec


def _sparse(i: int) -> RequestRecord:
    """Every column that may be NULL left None."""
    rec = RequestRecord(id=f"sparse{i}", api="ollama", route="/api/tags", method="GET", status=200)
    rec.end_ns = rec.start_ns + 1_000_000
    return rec


def _typed_rows(db: Path) -> dict[str, dict[str, tuple[str, object]]]:
    conn = sqlite3.connect(db)
    try:
        cols = ", ".join(f"typeof({c}), {c}" for c in COLUMNS)
        out: dict[str, dict[str, tuple[str, object]]] = {}
        for r in conn.execute(f"SELECT {cols} FROM requests ORDER BY seq"):
            pairs = {c: (r[2 * i], r[2 * i + 1]) for i, c in enumerate(COLUMNS)}
            out[str(pairs["id"][1])] = pairs
        return out
    finally:
        conn.close()


def test_none_is_null_and_values_keep_their_types(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    rl = RequestLog(RequestLogSettings(path=db, capture_bodies=True), instance="host:1", flush_interval=60)
    rl.open()
    try:
        for i in range(ROWS // 2):
            rl.request_finished(_full(i))
            rl.request_finished(_sparse(i))
    finally:
        rl.close()  # one batch of 70 rows
    assert rl.written == ROWS and rl.dropped == 0
    got = _typed_rows(db)
    assert len(got) == ROWS
    nullable = {"ttft_ms", "prompt_tokens", "completion_tokens", "tokens_per_s", "error", "client", "key_name"}
    nullable |= {"model_requested", "model_served", "backend", "upstream_url", "request_body", "response_text"}
    for i in range(ROWS // 2):
        sparse = got[f"sparse{i}"]
        assert {c for c, (kind, _) in sparse.items() if kind == "null"} == nullable
        assert sparse["instance"] == ("text", "host:1") and sparse["method"] == ("text", "GET")
        assert sparse["streamed"] == ("integer", 0) and sparse["latency_ms"] == ("real", 1.0)
        full = got[f"full{i}"]
        assert not [c for c, (kind, _) in full.items() if kind == "null"]
        assert full["ttft_ms"] == ("real", 1.0) and full["latency_ms"] == ("real", 8.0)
        assert full["completion_tokens"] == ("integer", 7) and full["streamed"] == ("integer", 1)
        assert full["tokens_per_s"] == ("real", 1000.0)  # 7 tokens over the 7 ms after the first
        assert full["request_body"] == ("text", '{"model": "m"}') and full["key_name"] == ("text", "team")


def test_an_odd_row_among_many_keeps_the_others(tmp_path: Path) -> None:
    """A value SQLite cannot take (beyond 64 bits, a dict) sends the batch row by row; the None adapter must not
    turn the repaired value into anything but NULL."""
    db = tmp_path / "log.sqlite"
    rl = RequestLog(RequestLogSettings(path=db), flush_interval=60)
    rl.open()
    try:
        for i in range(40):
            rec = _sparse(i)
            if i == 33:
                rec.prompt_tokens = 2**70
            if i == 35:  # a handler's bug: a value sqlite3 cannot bind, kept as its text
                setattr(rec, "model_requested", {"name": "m"})  # noqa: B010
            rl.request_finished(rec)
    finally:
        rl.close()
    got = _typed_rows(db)
    assert len(got) == 40 and rl.dropped == 0
    assert got["sparse33"]["prompt_tokens"] == ("null", None)
    assert got["sparse35"]["model_requested"] == ("text", "{'name': 'm'}")
    assert got["sparse32"]["error"] == ("null", None)


class _Label(str):
    """A str subclass, as a plugin or a future field might hand over: marshal refuses it."""


class _Count(int):
    pass


def test_values_of_a_subclass_are_stored_as_their_plain_type(tmp_path: Path) -> None:
    """The writer process gets its batches in marshal, which carries only exact built-in types: a batch holding
    a str or int subclass (or a lone surrogate from a client's text) is still written, whole and typed."""
    db = tmp_path / "log.sqlite"
    rl = RequestLog(RequestLogSettings(path=db, capture_bodies=True), flush_interval=60)
    rl.open()
    try:
        for i in range(5):
            rec = _full(i)
            if i == 2:
                rec.model_served = _Label("m:sub")
                rec.prompt_tokens = _Count(9)
                rec.response_text = "half a pair: \ud83d"
            rl.request_finished(rec)
    finally:
        rl.close()
    got = _typed_rows(db)
    assert len(got) == 5 and rl.written == 5 and rl.dropped == 0
    assert got["full2"]["model_served"] == ("text", "m:sub")
    assert got["full2"]["prompt_tokens"] == ("integer", 9)
    assert got["full2"]["response_text"] == ("text", "half a pair: ?")
    assert got["full1"]["model_served"] == ("text", "m:latest")


_SQL_TYPE = {str: "text", int: "integer", float: "real", type(None): "null"}


def _log_all(rl: RequestLog, recs: list[RequestRecord]) -> None:
    """Open the log, hand it every record, close it: one batch, written by `close()` (flush_interval 60)."""
    rl.open()
    try:
        for rec in recs:
            rl.request_finished(rec)
    finally:
        rl.close()


def test_a_batch_is_stored_exactly_as_sent_whatever_its_columns_share(tmp_path: Path) -> None:
    """The writer binds a string that every row of a statement shares once, and writes NULL into the SQL
    for a column no row fills: each row must still come back exactly as `row_of` derives it from the entry
    (the SQL's arithmetic and Python's agree to the bit), in every mix (all rows alike, one row different, a
    column NULL in all but one row), whole statements and the rest."""
    db = tmp_path / "log.sqlite"
    rl = RequestLog(RequestLogSettings(path=db, capture_bodies=True), instance="host:1", flush_interval=60)
    recs: list[RequestRecord] = []
    for i in range(ROWS):
        rec = _full(i) if i % 3 else _sparse(i)
        if i < 32:  # the first statement: every row alike but its id and numbers
            rec = _full(i)
            rec.error = None
        elif i == 40:
            rec.client = "10.0.0.2"  # one row's client differs from the rest of its statement
        elif i == 50:
            rec.error = "only this one failed"
        if i >= 64:
            rec.model_served = f"m{i}"  # the rest: a value a row
        rec.route = "NULL" if i == 5 else rec.route  # a value that looks like SQL is still a value
        recs.append(rec)
    _log_all(rl, recs)
    assert rl.written == ROWS and rl.dropped == 0
    got = _typed_rows(db)
    for rec in recs:
        sent = row_of(capped_entry(entry_of(rec, "host:1", True), rl.settings.body_cap_bytes))
        stored = got[rec.id]
        for column, value in zip(COLUMNS, sent, strict=True):
            assert stored[column] == (_SQL_TYPE[type(value)], value), (rec.id, column)


def test_past_its_few_shapes_the_writer_binds_every_value_and_still_stores_them_exactly(tmp_path: Path) -> None:
    """Each statement shape is kept for the process's life (prepared once, ~100 KB of the writer's memory),
    so there are only a few; a batch of another shape goes through the generic statement."""
    store = writer_process.Store(str(tmp_path / "log.sqlite"), None, None)
    try:
        texts = ("model_requested", "model_served", "backend", "upstream_url", "client", "key_name", "error")
        sent: list[tuple[object, ...]] = []
        for shape in range(2 * writer_process._SHAPES_MAX):
            for r in range(writer_process._MULTI):
                rec = _full(shape * 100 + r)
                # in statement `shape`, one text column differs from row to row, a second one is NULL throughout
                setattr(rec, texts[shape % len(texts)], f"row {r}")
                setattr(rec, texts[(shape // len(texts) + shape + 1) % len(texts)], None)
                sent.append(capped_entry(entry_of(rec, f"i{shape}", True), 1 << 16))
        assert store.write(sent) == (len(sent), 0, None, [])
        assert len(store._shapes) == writer_process._SHAPES_MAX  # the rest went the generic way
    finally:
        store.close()
    got = _typed_rows(tmp_path / "log.sqlite")
    assert len(got) == len(sent)
    for row in map(row_of, sent):
        stored = got[str(row[0])]
        for column, value in zip(COLUMNS, row, strict=True):
            assert stored[column] == (_SQL_TYPE[type(value)], value), (row[0], column)


def test_latency_ttft_and_speed_derived_in_sql_match_python_in_every_case(tmp_path: Path) -> None:
    """The SQLite writer derives latency, TTFT and tokens/s in its INSERT; PostgreSQL's rows come from `row_of`:
    both must give the same value, NULL included, on every branch (streamed or not, a first token or none, at
    the end, no tokens, no time at all), in a whole statement and in the rows left over."""
    db = tmp_path / "log.sqlite"
    cases: list[RequestRecord] = []
    for streamed in (True, False):
        for first in (None, 0, 3_000_001, 10_000_000):  # ns after the start; 10 ms: the first token at the end
            for completion in (None, 0, 1, 7, 123_457):
                for total in (0, 10_000_000):
                    rec = _sparse(len(cases))
                    rec.streamed = streamed
                    rec.end_ns = rec.start_ns + total
                    rec.first_token_ns = None if first is None else rec.start_ns + min(first, total)
                    rec.completion_tokens = completion
                    cases.append(rec)
    rl = RequestLog(RequestLogSettings(path=db), flush_interval=60)
    _log_all(rl, cases)
    assert rl.written == len(cases) > 64 and len(cases) % 32  # whole statements and a remainder
    got = _typed_rows(db)
    derived = ("latency_ms", "ttft_ms", "tokens_per_s")
    seen_null_speed = seen_speed = 0
    for rec in cases:
        want = dict(zip(COLUMNS, row_of(entry_of(rec)), strict=True))
        for column in derived:
            assert got[rec.id][column] == (_SQL_TYPE[type(want[column])], want[column]), (rec.id, column)
        seen_speed += want["tokens_per_s"] is not None
        seen_null_speed += want["tokens_per_s"] is None
    assert seen_speed and seen_null_speed
