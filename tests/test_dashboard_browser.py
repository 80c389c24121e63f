"""The dashboard at /ui in a real headless Chromium (Debian's), over a real ollamux with fake backends.

What a user relies on: after real requests through both APIs (the `ollama` and `openai` clients) the
overview's charts have points and its tables name the models and backends; the requests table lists them
and shows a new one without a reload, over the live event stream (not a poll), reopened with new filters,
back by itself after its connection is cut, without losing a row or showing one twice, and narrowed by
`until`; the Load and Unload buttons change `/api/ps`; a managed model's log streams new lines into the
page; the playground streams a reply token by token and Stop aborts it; with keys on, the page shows
nothing but the key prompt until it has an admin key. Every page at a desktop and a phone width, without
sideways scrolling; with OLLAMUX_SCREENSHOTS=1 those views are written to docs/screenshots/ (the README's
pictures).
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from .dashboard_helpers import (
    ADMIN_KEY,
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    USER_KEY,
    admin_get,
    dashboard_config,
    seed_history,
    wait_until,
)
from .fakes.fake_hub import FakeHub, HubFile, gguf_bytes
from .fakes.ollama_upstream import FakeOllama
from .fakes.openai_upstream import FakeOpenAI
from .fakes.tcp_relay import TcpRelay
from .runtime_helpers import Proxy, start_proxy
from .servers import LoopThread

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: scripts/debian_tools.sh installs Debian's chromium", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright

from .dashboard_pages import Pages

pytestmark = pytest.mark.timeout(120)

SCREENSHOTS = Path(__file__).parent.parent / "docs" / "screenshots"
# generous waits, not deadlines: two cores shared with other suites can make a page take seconds to settle
expect.set_options(timeout=20_000)
TABS = ("overview", "requests", "models", "backends", "playground")


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _traffic(url: str, key: str = "sk-client") -> None:
    """Real requests through both APIs, as their official clients send them: plain, streamed, failing."""
    with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20) as oai:
        oai.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        for _ in oai.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}])
    with ollama.Client(host=url, headers={"Authorization": f"Bearer {key}"}) as client:
        client.chat(model="qwen3", messages=[{"role": "user", "content": "hi"}])
        for _ in client.generate(model="fake-model", prompt="hi", stream=True):
            pass


def _start(
    loop_thread: LoopThread,
    fakes: tuple[tuple[FakeOpenAI, str], tuple[FakeOllama, str]],
    tmp: Path,
    **kw: Any,
) -> Proxy:
    history = kw.pop("history", False)
    config = dashboard_config(fakes[0][1], fakes[1][1], tmp, **kw)
    if history:
        seed_history(Path(config["request_log"]["path"]))
    return start_proxy(loop_thread, config, tmp)


@pytest.fixture(scope="module")
def dash(
    loop_thread: LoopThread,
    fake_openai_server: tuple[FakeOpenAI, str],
    fake_ollama: tuple[FakeOllama, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    """An open ollamux (no keys) with five requests in its log."""
    p = _start(loop_thread, (fake_openai_server, fake_ollama), tmp_path_factory.mktemp("dash"))
    _traffic(p.url)
    wait_until(lambda: len(admin_get(p.url, "/admin/requests")["rows"]) >= 5, "the five requests in the log")
    yield p
    p.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    p = Pages(browser)
    yield p
    p.close()
    assert p.errors == []


def chart_series(page: Page, chart: str) -> list[list[float | None]]:
    """The data a uPlot chart was given: [x values, then one list per series]."""
    data = page.evaluate("(id) => window.ollamuxCharts[id] && window.ollamuxCharts[id].data", chart)
    assert isinstance(data, list)
    return data


# whether a chart was given at least one point above zero in any of its series
HAS_POINTS = (
    "(id) => { const c = window.ollamuxCharts[id];"
    " return !!c && c.data.slice(1).some(s => s.some(v => v !== null && v > 0)); }"
)


def has_points(page: Page, chart: str) -> bool:
    return bool(page.evaluate(HAS_POINTS, chart))


# ------------------------------------------------------------------------------------------ overview
def test_overview_charts_have_points_from_both_apis(dash: Proxy, pages: Pages) -> None:
    page = pages.open(dash.url, "overview")
    for chart in ("rps", "errors", "latency", "ttft", "tps"):
        page.wait_for_function(HAS_POINTS, arg=chart)
    overview = admin_get(dash.url, "/admin/overview?window=3600")
    rps = chart_series(page, "rps")
    assert len(rps[0]) == len(overview["series"]["t"]) > 1  # one point a bucket (a minute may have turned since)
    # what the chart drew is what the server counted: the requests of the window, one of them failed
    drawn = round(sum(v * overview["bucket"] for v in rps[1] if v is not None))
    assert drawn == overview["totals"]["requests"] >= 5
    assert max(v for v in chart_series(page, "errors")[1] if v is not None) > 0
    latency = chart_series(page, "latency")
    assert len(latency) == 3  # p50 and p95
    by_model = page.locator("#by-model tbody tr")
    expect(by_model.filter(has_text="fake-model")).to_have_count(1)
    expect(by_model.filter(has_text="qwen3")).to_have_count(1)
    by_backend = page.locator("#by-backend tbody tr")
    expect(by_backend.filter(has_text="fake")).to_have_count(1)
    expect(by_backend.filter(has_text="ol")).to_have_count(1)


def test_overview_filters_narrow_the_charts(dash: Proxy, pages: Pages) -> None:
    page = pages.open(dash.url, "overview")
    page.wait_for_function("() => !!window.ollamuxCharts.rps")
    expect(page.locator("#by-backend tbody tr")).to_have_count(2)
    page.locator("label", has_text="Backend").locator("select").select_option("ol")
    expect(page.locator("#by-backend tbody tr")).to_have_count(1)
    expect(page.locator("#by-model tbody tr")).to_have_count(1)
    expect(page.locator("#by-model tbody tr").first).to_contain_text("qwen3")
    rps = chart_series(page, "rps")
    overview = admin_get(dash.url, "/admin/overview?window=3600&backend=ol")
    assert round(sum(v * overview["bucket"] for v in rps[1] if v is not None)) == 1  # the one Ollama chat


# ------------------------------------------------------------------------------------------ requests
def _chat(url: str, rid: str, model: str = "fake-model") -> None:
    """One request through the OpenAI API, as its client sends it, with the request id the test looks for."""
    with openai.OpenAI(base_url=url + "/v1", api_key="sk", max_retries=0, timeout=20) as oai:
        oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "live"}], extra_headers={"x-request-id": rid}
        )


def _row(page: Page, rid: str) -> Any:
    return page.locator(f'#request-log tbody tr[data-id="{rid}"]')


def _shown_seqs(page: Page) -> list[int]:
    return [int(s) for s in page.locator("#request-log tbody tr").evaluate_all("rs => rs.map(r => r.dataset.seq)")]


def test_requests_table_lists_them_and_shows_a_new_one_live(dash: Proxy, pages: Pages) -> None:
    page = pages.open(dash.url, "requests")
    rows = page.locator("#request-log tbody tr")
    expect(rows.filter(has_text="qwen3")).to_have_count(1)
    expect(rows.filter(has_text="/api/generate")).to_have_count(1)
    failed = page.locator("#request-log tbody tr.err")  # drawn as an error: the model whose backend said 500
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("broken")
    expect(page.locator("#rq-live")).to_have_text("live")
    before = rows.count()
    # made while the page is open: it appears without a reload, brought by the event stream, not a poll
    _chat(dash.url, "ui-live-1")
    live = _row(page, "ui-live-1")
    expect(live).to_have_count(1)
    assert rows.count() == before + 1
    assert len(pages.streams()) == 1 and pages.polls() == []
    live.click()
    detail = page.locator("#request-detail")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text("ui-live-1")
    expect(detail).to_contain_text("fake-model")
    expect(detail).to_contain_text("completion tokens")
    # another tab: the hidden table's stream is closed, not left open
    with page.expect_event("requestfailed", lambda r: "/admin/requests/stream" in r.url) as closed:
        page.goto(f"{dash.url}/ui#overview")
    assert closed.value.failure == "net::ERR_ABORTED" and closed.value.url == pages.streams()[0]


def test_requests_filters(dash: Proxy, pages: Pages) -> None:
    page = pages.open(dash.url, "requests")
    rows = page.locator("#request-log tbody tr")
    expect(rows.filter(has_text="qwen3")).to_have_count(1)
    expect(page.locator("#rq-live")).to_have_text("live")
    page.locator("label", has_text="Status").locator("select").select_option("error")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("broken")
    # the stream of all rows was closed, one of the failed ones opened: a new failure shows up live,
    # an answered request made before it does not
    expect(page.locator("#rq-live")).to_have_text("live")
    first, second = pages.streams()
    assert first in pages.aborted and "status=error" in second and "status" not in first
    _chat(dash.url, "ui-filtered-ok")
    with pytest.raises(openai.InternalServerError):
        _chat(dash.url, "ui-filtered-failed", model="broken")
    expect(_row(page, "ui-filtered-failed")).to_have_count(1)
    expect(rows).to_have_count(2)
    expect(_row(page, "ui-filtered-ok")).to_have_count(0)
    page.locator("label", has_text="Status").locator("select").select_option("")
    page.locator("label", has_text="API").locator("select").select_option("ollama")
    expect(rows).to_have_count(2)  # the chat and the generate of the ollama client
    for text in rows.all_inner_texts():
        assert "ollama" in text
    assert pages.polls() == []


def test_requests_until_leaves_out_what_came_after(dash: Proxy, pages: Pages) -> None:
    page = pages.open(dash.url, "requests")
    rows = page.locator("#request-log tbody tr")
    expect(page.locator("#rq-live")).to_have_text("live")
    cut = time.time()
    _chat(dash.url, "ui-after-until")
    expect(_row(page, "ui-after-until")).to_have_count(1)
    older = rows.count() - 1
    until = page.locator("#rq-until")
    # an ISO time, as `ollamux logs --until` takes it: the rows up to then, the later one left out
    until.fill(datetime.datetime.fromtimestamp(cut, datetime.UTC).isoformat())
    until.press("Enter")
    expect(rows).to_have_count(older)
    expect(_row(page, "ui-after-until")).to_have_count(0)
    expect(page.locator("#rq-live")).to_have_text("live")
    assert "until=" in pages.streams()[-1]  # the stream that follows is narrowed the same way
    # what the server cannot read, it says why, in the page
    pages.allow("status of 400")
    until.fill("the day after")
    until.press("Enter")
    expect(page.locator(".banner")).to_contain_text("'until' must be unix seconds, an age")
    expect(rows).to_have_count(0)
    until.fill("")
    until.press("Enter")
    expect(_row(page, "ui-after-until")).to_have_count(1)
    expect(rows).to_have_count(older + 1)
    expect(page.locator(".banner")).to_be_hidden()


def test_a_cut_stream_reconnects_and_catches_up_without_a_gap_or_a_twin(
    loop_thread: LoopThread, dash: Proxy, pages: Pages
) -> None:
    """The page through a relay that drops its connections (a restart, a proxy's timeout): the stream comes
    back by itself, and what was written while it was away is in the table once."""
    relay = TcpRelay(loop_thread, int(dash.url.rsplit(":", 1)[1])).start()
    # Chromium logs the cut stream itself (its chunked body never ended); any other error still fails the test
    pages.allow("net::ERR_INCOMPLETE_CHUNKED_ENCODING")
    try:
        page = pages.open(relay.url, "requests")
        expect(page.locator("#rq-live")).to_have_text("live")
        expect(page.locator("#request-log tbody tr").first).to_be_visible()
        relay.cut()
        expect(page.locator("#rq-live")).to_have_text("reconnecting")
        wait_until(lambda: relay.parked, "the page's reconnect, held by the relay")
        # written while the page cannot hear of it
        _chat(dash.url, "ui-gap-1")
        wait_until(lambda: _row_seq(dash.url, "ui-gap-1"), "the row in the log")
        relay.release()
        expect(_row(page, "ui-gap-1")).to_have_count(1)
        expect(page.locator("#rq-live")).to_have_text("live")
        logged = _logged_seqs(dash.url)
        assert _shown_seqs(page) == logged  # every row of the log once: none lost, none twice
        # the reopened stream asked for what came after the last row the page had, not for a poll
        first, second = pages.streams()
        before_gap = max(seq for seq in logged if seq < _row_seq(dash.url, "ui-gap-1"))
        assert "after=" in first and f"after={before_gap}" in second and pages.polls() == []
    finally:
        relay.close()


def test_where_the_stream_cannot_be_opened_the_table_polls(dash: Proxy, pages: Pages) -> None:
    """A proxy in front that does not pass the stream (here the browser answers it 404 itself): the table
    still grows, by the poll of `?after=`, and the page does not keep asking for the stream."""
    pages.allow("status of 404")
    page = pages.open(dash.url, "requests", refuse="**/admin/requests/stream*")
    expect(page.locator("#rq-live")).to_have_text("polling")
    _chat(dash.url, "ui-polled-1")
    expect(_row(page, "ui-polled-1")).to_have_count(1)
    assert len(pages.streams()) == 1 and pages.polls()


def _logged_seqs(url: str) -> list[int]:
    return [r["seq"] for r in admin_get(url, "/admin/requests?limit=1000")["rows"]]


def _row_seq(url: str, rid: str) -> int:
    """The seq of request `rid` in the log, 0 while it is not there yet."""
    return next((r["seq"] for r in admin_get(url, "/admin/requests?limit=1000")["rows"] if r["id"] == rid), 0)


# -------------------------------------------------------------------------------------------- models
def _tiny_row(page: Page) -> Any:
    return page.locator("#model-table tbody tr", has=page.locator("td", has_text="tiny"))


def test_load_and_unload_buttons_change_api_ps(dash: Proxy, pages: Pages) -> None:
    page = pages.open(dash.url, "models")
    row = _tiny_row(page)
    expect(row).to_have_count(1)
    assert "tiny:latest" not in dash.ps()
    row.locator("button.load").click()
    wait_until(lambda: "tiny:latest" in dash.ps(), "tiny in /api/ps after Load")
    expect(row.locator("td.state")).to_contain_text("ready")
    row.locator("button.unload").click()
    wait_until(lambda: "tiny:latest" not in dash.ps(), "tiny gone from /api/ps after Unload")
    expect(row.locator("td.state")).not_to_contain_text("ready")


def test_model_log_streams_new_lines(dash: Proxy, pages: Pages) -> None:
    page = pages.open(dash.url, "models")
    row = _tiny_row(page)
    row.locator("button.logs").click()
    log = page.locator("#model-log pre")
    expect(page.locator("#log-live")).to_be_visible()  # the stream is open: what is written now shows up
    starts = log.inner_text().count("ollamux starts")
    row.locator("button.load").click()  # the manager writes a start line into the model's log
    page.wait_for_function(
        "(n) => document.querySelector('#model-log pre').textContent.split('ollamux starts').length - 1 > n",
        arg=starts,
    )
    assert "tiny_model_server.py" in log.inner_text()
    wait_until(lambda: "tiny:latest" in dash.ps(), "tiny loaded")
    row.locator("button.unload").click()
    wait_until(lambda: "tiny:latest" not in dash.ps(), "tiny unloaded")


def test_pull_copy_and_delete_from_the_models_page(
    loop_thread: LoopThread,
    fake_openai: tuple[FakeOpenAI, str],
    fake_ollama: tuple[FakeOllama, str],
    tmp_path: Path,
    pages: Pages,
) -> None:
    hub = FakeHub()
    hub.add("acme/Tiny-GGUF", HubFile("Tiny-Q4_K_M.gguf", gguf_bytes(400_000, file_type=15, seed=2)))
    hub.chunk_delay = 0.02  # slow enough for the page to show progress on the way
    hub_runner, hub_url = loop_thread.start_app(hub.app())
    p = _start(loop_thread, (fake_openai, fake_ollama), tmp_path, hub=hub_url)
    try:
        page = pages.open(p.url, "models")
        expect(page.locator("#model-table tbody tr").filter(has_text="fake-model")).to_have_count(1)
        page.evaluate(
            """() => { window.statuses = []; const el = document.querySelector('#pull-status');
            new MutationObserver(() => window.statuses.push(el.textContent))
              .observe(el, {subtree: true, childList: true, characterData: true}); }"""
        )
        page.locator("#pull-name").fill("hf.co/acme/Tiny-GGUF")
        page.locator("#page-models button", has_text="Pull").click()
        expect(page.locator("#pull-status")).to_have_text("success", timeout=30_000)
        statuses = page.evaluate("() => window.statuses")
        assert "pulling manifest" in statuses and len(set(statuses)) >= 3, statuses
        pulled = page.locator("#model-table tbody tr").filter(has_text="hf.co/acme/Tiny-GGUF")
        expect(pulled).to_have_count(1)
        assert any(m["name"].startswith("hf.co/acme/Tiny-GGUF") for m in admin_get(p.url, "/admin/models")["models"])
        # Copy asks for the new name, Delete asks to be sure (browser dialogs)
        page.once("dialog", lambda d: d.accept("tiny-copy"))
        pulled.locator("button.copy").click()
        copy = page.locator("#model-table tbody tr", has=page.locator("td.name", has_text="tiny-copy"))
        expect(copy).to_have_count(1)
        page.once("dialog", lambda d: d.dismiss())
        copy.locator("button.delete").click()
        expect(page.locator("#pull-status")).to_have_text("success")  # nothing happened
        expect(copy).to_have_count(1)
        page.once("dialog", lambda d: d.accept())
        copy.locator("button.delete").click()
        expect(copy).to_have_count(0)
        names = {m["name"] for m in admin_get(p.url, "/admin/models")["models"]}
        assert not any(n.startswith("tiny-copy") for n in names)
    finally:
        p.close()
        loop_thread.stop_app(hub_runner)


# ------------------------------------------------------------------------------------------ backends
def test_backends_page_shows_replicas(dash: Proxy, pages: Pages) -> None:
    page = pages.open(dash.url, "backends")
    section = page.locator("#page-backends")
    expect(section.locator(".backend")).to_have_count(len(admin_get(dash.url, "/admin/backends")["backends"]))
    ol = section.locator(".backend", has=page.locator("h2", has_text="ol"))
    expect(ol.locator(".pill.up")).to_have_count(1)
    spare = section.locator(".backend", has=page.locator("h2", has_text="spare"))
    expect(spare.locator(".pill.down")).to_have_count(1)
    assert "sk-backend-secret" not in section.inner_text()


# ---------------------------------------------------------------------------------------- playground
def test_playground_streams_a_reply_and_stop_aborts(dash: Proxy, pages: Pages) -> None:
    page = pages.open(dash.url, "playground")
    page.locator("#pg-model").select_option("slow")
    # every text the reply bubble shows, in order: a stream shows more than the final text
    page.evaluate(
        """() => { window.seen = [];
        new MutationObserver(() => {
          const t = document.querySelector('#chat .msg.assistant:last-child .text');
          if (t && t.textContent !== window.seen[window.seen.length - 1]) window.seen.push(t.textContent);
        }).observe(document.querySelector('#chat'), {subtree: true, childList: true, characterData: true}); }"""
    )
    page.locator("#pg-input").fill("hello there")
    page.locator("#pg-send").click()
    reply = page.locator("#chat .msg.assistant .text").last
    expect(reply).to_have_text("Hello from the fake!")
    seen = [s for s in page.evaluate("() => window.seen") if s]
    assert len(seen) >= 2 and seen[-1] == "Hello from the fake!" and seen[0] != seen[-1], seen
    expect(page.locator("#chat .msg.user .text")).to_have_text(["hello there"])
    # Stop: the second answer is cut after its first chunk
    page.locator("#pg-input").fill("again")
    page.locator("#pg-send").click()
    expect(reply).to_contain_text("Hello")
    page.locator("#pg-stop").click()
    expect(reply).to_contain_text("[stopped]")
    assert "fake!" not in reply.inner_text()
    expect(page.locator("#pg-send")).to_be_visible()


# -------------------------------------------------------------------------------------------- keys on
def test_with_keys_on_only_an_admin_key_opens_the_page(
    loop_thread: LoopThread,
    fake_openai: tuple[FakeOpenAI, str],
    fake_ollama: tuple[FakeOllama, str],
    tmp_path: Path,
    pages: Pages,
) -> None:
    p = _start(loop_thread, (fake_openai, fake_ollama), tmp_path, keys=True)
    try:
        _traffic(p.url, key=USER_KEY)
        wait_until(lambda: len(admin_get(p.url, "/admin/requests", ADMIN_KEY)["rows"]) >= 5, "the requests")
        page = pages.open(p.url, "overview")
        expect(page.locator("#login")).to_be_visible()
        _assert_shows_nothing(page)
        # a key that is not an admin key: refused, and still nothing shown
        page.locator("#key").fill(USER_KEY)
        page.locator("#login button").click()
        expect(page.locator("#auth-error")).to_contain_text("not an admin key")
        _assert_shows_nothing(page)
        # a wrong key: refused
        page.locator("#key").fill("sk-wrong")
        page.locator("#login button").click()
        expect(page.locator("#auth-error")).to_contain_text("invalid API key")
        _assert_shows_nothing(page)
        # the admin key: the data, on every page, and the key stays for the tab's session (no cookie)
        page.locator("#key").fill(ADMIN_KEY)
        page.locator("#login button").click()
        expect(page.locator("#by-model tbody tr").filter(has_text="fake-model")).to_have_count(1)
        page.wait_for_function("() => !!window.ollamuxCharts.rps")
        assert has_points(page, "rps")
        page.goto(f"{p.url}/ui#requests")
        expect(page.locator("#request-log tbody tr").filter(has_text="qwen3")).to_have_count(1)
        expect(page.locator("header")).to_contain_text("key: boss")
        assert page.context.cookies() == []
        # forgetting the key drops the data at once
        page.locator("header button", has_text="forget key").click()
        expect(page.locator("#login")).to_be_visible()
        _assert_shows_nothing(page)
    finally:
        p.close()


def _assert_shows_nothing(page: Page) -> None:
    """No section, no model name, no chart: the page holds only the key prompt."""
    expect(page.locator("main")).to_have_count(0)
    text = page.locator("body").inner_text()
    for name in ("fake-model", "qwen3", "tiny", "broken"):
        assert name not in text
    assert page.evaluate("() => Object.keys(window.ollamuxCharts).length") == 0


# ------------------------------------------------------------------------------------- screenshots
def test_every_page_fits_a_phone_and_a_desktop(
    loop_thread: LoopThread,
    fake_openai: tuple[FakeOpenAI, str],
    fake_ollama: tuple[FakeOllama, str],
    tmp_path: Path,
    pages: Pages,
) -> None:
    """Each page at 1280x800 and 390x844: drawn, and no wider than the screen (tables scroll in their
    own boxes). The views are the README's screenshots: an app with an hour of history in its log."""
    p = _start(loop_thread, (fake_openai, fake_ollama), tmp_path, history=True)
    try:
        _traffic(p.url)
        wait_until(lambda: _fresh_rows(p.url) >= 5, "the requests")
        httpx.post(p.url + "/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False}, timeout=30)
        httpx.post(p.url + "/api/generate", json={"model": "offline", "prompt": "hi", "stream": False}, timeout=30)
        shots = tmp_path / "shots"
        shots.mkdir()
        for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page = pages.open(p.url, "overview", viewport)
            for tab in TABS:
                page.goto(f"{p.url}/ui#{tab}")
                assert page.evaluate("() => window.scrollY") == 0  # the tab's address keeps the header in view
                _settle(page, tab)
                width = page.evaluate("() => document.documentElement.scrollWidth")
                assert width <= viewport["width"], f"{tab} at {name} is {width} px wide"
                page.screenshot(path=str(shots / f"{tab}-{name}.png"))
        if os.environ.get("OLLAMUX_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            for png in shots.iterdir():
                assert png.stat().st_size < 200_000, f"{png.name} is too big for the README"
                shutil.copy(png, SCREENSHOTS / png.name)
    finally:
        p.close()


def _fresh_rows(url: str) -> int:
    return sum(not r["id"].startswith("seed-") for r in admin_get(url, "/admin/requests")["rows"])


def _settle(page: Page, tab: str) -> None:
    """Wait for what each page draws, so a picture shows data, not a page still loading."""
    if tab == "overview":
        page.wait_for_function("() => window.ollamuxCharts.latency && window.ollamuxCharts.latency.data[0].length")
        expect(page.locator("#by-model tbody tr")).not_to_have_count(0)
    elif tab == "requests":
        expect(page.locator("#request-log tbody tr").first).to_be_visible()
        page.locator("#request-log tbody tr").first.click()
        expect(page.locator("#request-detail")).to_contain_text("latency")
    elif tab == "models":
        expect(page.locator("#model-table tbody tr").filter(has_text="tiny")).to_have_count(1)
        page.locator("#model-table tbody tr", has=page.locator("td", has_text="tiny")).locator("button.logs").click()
        expect(page.locator("#model-log pre")).to_contain_text("ollamux starts")
    elif tab == "backends":
        expect(page.locator("#page-backends .backend").first).to_be_visible()
    elif tab == "playground":
        page.locator("#pg-model").select_option("fake-model")
        page.locator("#pg-input").fill("Say hello")
        page.locator("#pg-send").click()
        expect(page.locator("#chat .msg.assistant .text").last).to_have_text("Hello from the fake!")
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
