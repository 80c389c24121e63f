"""Prometheus metrics at /metrics: series that move with requests, per-app registries, scrape-time values."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ollamux.metrics import Metrics
from ollamux.observe import RequestRecord

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _chat(model: str, stream: bool) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


@pytest.fixture
def proxy_url(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> str:
    return start_proxy(basic_config(fake_openai[1]))


def test_request_metrics_move(proxy_url: str) -> None:
    with httpx.Client(base_url=proxy_url, timeout=10) as c:
        before = scrape(c)
        for stream in (True, False, True):
            assert c.post("/api/chat", json=_chat("fake-model", stream)).status_code == 200
        assert c.post("/api/chat", json=_chat("x-server-error", False)).status_code >= 500
        assert c.post("/api/chat", json=_chat("missing", False)).status_code == 404
        after = scrape(c)
    ok = {"api": "ollama", "route": "/api/chat", "model": "fake-model", "backend": "fake", "status": "200"}
    assert value(after, "ollamux_requests_total", **ok) - value(before, "ollamux_requests_total", **ok) == 3
    assert value(after, "ollamux_requests_total", model="x-server-error", status="500") == 1
    # an unknown model does not become a label value (clients could create series at will)
    assert value(after, "ollamux_requests_total", model="", status="404") >= 1
    assert not any(("model", "missing") in ls for (_, ls) in after)
    lat = {"api": "ollama", "route": "/api/chat", "model": "fake-model", "backend": "fake"}
    d_count = value(after, "ollamux_request_duration_seconds_count", **lat) - value(
        before, "ollamux_request_duration_seconds_count", **lat
    )
    assert d_count == 3
    assert value(after, "ollamux_request_duration_seconds_sum", **lat) > 0
    assert (
        value(after, "ollamux_time_to_first_token_seconds_count", **lat)
        - value(before, "ollamux_time_to_first_token_seconds_count", **lat)
        == 3
    )
    tok = {"model": "fake-model", "backend": "fake"}
    assert (
        value(after, "ollamux_prompt_tokens_total", **tok) - value(before, "ollamux_prompt_tokens_total", **tok) == 33
    )
    assert (
        value(after, "ollamux_completion_tokens_total", **tok) - value(before, "ollamux_completion_tokens_total", **tok)
        == 9
    )
    assert value(after, "ollamux_requests_in_flight") == 0
    assert value(after, "ollamux_log_rows_dropped_total") == 0
    assert value(after, "ollamux_build_info") == 1


def test_in_flight_counts_a_running_stream(proxy_url: str) -> None:
    with httpx.Client(base_url=proxy_url, timeout=10) as c, httpx.Client(base_url=proxy_url, timeout=10) as c2:
        with c.stream("POST", "/api/chat", json=_chat("x-slow", True)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            next(lines)  # the first chunk is out: the request is mid-stream
            assert value(scrape(c2), "ollamux_requests_in_flight") == 1
            list(lines)
        assert value(scrape(c2), "ollamux_requests_in_flight") == 0


def test_backend_up_and_log_rows(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    cfg = basic_config(fake_openai[1])
    cfg["backends"]["dead"] = {"type": "openai", "url": "http://127.0.0.1:9/v1"}
    cfg["metrics"] = {"backend_probe_interval": 0.05}
    url = start_proxy(cfg)
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.post("/api/chat", json=_chat("fake-model", False)).status_code == 200
        deadline = time.monotonic() + 5
        while True:
            s = scrape(c)
            if (
                value(s, "ollamux_backend_up", backend="fake") == 1
                and ("ollamux_backend_up", frozenset({("backend", "dead")})) in s
                and value(s, "ollamux_log_rows_written_total") >= 1
            ) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert value(s, "ollamux_backend_up", backend="fake") == 1
    assert value(s, "ollamux_backend_up", backend="dead") == 0
    assert value(s, "ollamux_log_rows_written_total") >= 1


def test_two_apps_do_not_share_series(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> None:
    a = start_proxy(basic_config(fake_openai[1]))
    b = start_proxy(basic_config(fake_openai[1]))
    with httpx.Client(base_url=a, timeout=10) as ca, httpx.Client(base_url=b, timeout=10) as cb:
        assert ca.post("/api/chat", json=_chat("fake-model", False)).status_code == 200
        assert value(scrape(ca), "ollamux_requests_total", model="fake-model") == 1
        assert value(scrape(cb), "ollamux_requests_total", model="fake-model") == 0


def test_metrics_disabled(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> None:
    url = start_proxy({**basic_config(fake_openai[1]), "metrics": {"enabled": False}})
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/metrics").status_code == 404
        assert c.post("/api/chat", json=_chat("fake-model", False)).status_code == 200


def test_model_state_and_load_time_reported_by_runtime() -> None:
    m = Metrics(version="1.2.3")
    m.set_model_state("smol", "starting")
    m.observe_model_load("smol", 0.8)
    m.set_model_state("smol", "ready")
    m.add_model_state_source(lambda: [("other", "weird")])
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    states = {(s.labels["model"], s.labels["state"]): s.value for s in fams["ollamux_model_state"].samples}
    assert states[("smol", "ready")] == 1 and states[("smol", "starting")] == 0
    assert states[("other", "weird")] == 1 and states[("other", "stopped")] == 0
    load = {s.name: s.value for s in fams["ollamux_model_load_seconds"].samples if s.labels.get("model") == "smol"}
    assert load["ollamux_model_load_seconds_count"] == 1 and load["ollamux_model_load_seconds_sum"] == 0.8


def test_histograms_consistent_over_many_requests() -> None:
    m = Metrics()
    recs = []
    for i in range(4000):
        r = RequestRecord(
            id=str(i),
            api="openai",
            route="/v1/chat/completions",
            model_served="m",
            backend="b",
            status=200,
            prompt_tokens=2,
            completion_tokens=1,
        )
        r.end_ns = r.start_ns + (i % 40) * 1_000_000  # 0..39 ms
        r.first_token_ns = r.start_ns + 500
        recs.append(r)
    for r in recs:  # the event loop is the only caller: no locks on this path
        m.request_finished(r)
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert sum(s.value for s in fams["ollamux_requests"].samples if s.name == "ollamux_requests_total") == 4000
    buckets = {
        s.labels["le"]: s.value for s in fams["ollamux_request_duration_seconds"].samples if s.name.endswith("_bucket")
    }
    assert buckets["0.005"] == 600 and buckets["0.01"] == 1100 and buckets["+Inf"] == 4000  # le is inclusive
    count = [s.value for s in fams["ollamux_request_duration_seconds"].samples if s.name.endswith("_count")]
    assert count == [4000]
    # what it costs a request is the bench's to say (bench/observe_cost.py), not a timed test's


def test_managed_model_state_in_metrics_and_readiness(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A `cmd:` model (any HTTP server will do for its health check) loaded, then unloaded."""
    cfg = basic_config(fake_openai[1])
    cfg["runtime"] = {"log_dir": str(tmp_path / "logs")}
    cfg["models"]["webby"] = {
        "runtime": {
            "cmd": [sys.executable, "-m", "http.server", "${PORT}", "--bind", "127.0.0.1"],
            "health": "/",
            "startup_timeout": 20,
        }
    }
    url = start_proxy(cfg)
    with httpx.Client(base_url=url, timeout=30) as c:

        def state_of(samples: Samples) -> str:
            hot = [
                dict(ls)["state"]
                for (n, ls), v in samples.items()
                if n == "ollamux_model_state" and ("model", "webby:latest") in ls and v == 1
            ]
            assert len(hot) == 1
            return hot[0]

        assert state_of(scrape(c)) == "stopped"
        r = c.post("/api/generate", json={"model": "webby"})  # an empty prompt loads the model
        assert r.status_code == 200 and r.json()["done_reason"] == "load"
        samples = scrape(c)
        assert state_of(samples) == "ready"
        loads = [
            v
            for (n, ls), v in samples.items()
            if n == "ollamux_model_load_seconds_count" and any("webby" in val for _, val in ls)
        ]
        assert loads == [1.0]  # the runtime reports each load to the histogram
        models = c.get("/health/ready").json()["models"]
        assert [(m["model"], m["state"]) for m in models] == [("webby:latest", "ready")] and models[0]["pid"]
        r = c.post("/api/generate", json={"model": "webby", "keep_alive": 0})
        assert r.status_code == 200 and r.json()["done_reason"] == "unload"
        assert state_of(scrape(c)) in ("stopping", "stopped")
