"""A new user's first hour, by the README: each test is a defect that following it (or making the obvious
mistakes) showed, on the command line. Real processes and real sockets; a fake hub and small fake servers
stand in for the internet and for "some other server on that port"."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from ollamux.cli import main
from ollamux.cli.serve import settings_from_args
from ollamux.cli.serve_banner import served_lines
from ollamux.config import ConfigError, RequestLogSettings, parse_settings
from ollamux.hub.ref import BadHubName, HubRef, parse_hub_ref
from ollamux.observe import RequestRecord
from ollamux.store import RequestLog

from .conftest import ProxyFactory
from .fakes.fake_hub import FakeHub, HubFile, gguf_bytes
from .served import Served, clean_env, running
from .servers import LoopThread, free_port

REPO = "someone/Tiny-GGUF"


def _cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ollamux", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------------------ serve with no config file, HF_ENDPOINT
def test_no_config_file_still_takes_the_environment_s_defaults(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9", "OLLAMA_NUM_PARALLEL": "2"}
    for backend in (None, "http://127.0.0.1:8080/v1"):  # `ollamux serve` and `ollamux serve --backend URL`
        settings = settings_from_args(None, None, None, backend, env)
        assert settings.runtime.hf_endpoint == "http://127.0.0.1:9"  # was https://huggingface.co
        assert settings.runtime.parallel == 2  # was None: ollamux's 4


@pytest.fixture
def hub(loop_thread: LoopThread) -> Iterator[str]:
    fake = FakeHub()
    fake.add(REPO, HubFile("Tiny-Q8_0.gguf", data=gguf_bytes(300_000, file_type=7)))
    runner, url = loop_thread.start_app(fake.app())
    yield url
    loop_thread.stop_app(runner)


def test_pull_on_a_server_without_config_asks_hf_endpoint(hub: str, tmp_path: Path) -> None:
    """README: `runtime.hf_endpoint` / `HF_ENDPOINT` point pulls at a mirror. With no config file the
    server asked huggingface.co anyway: `cannot reach https://huggingface.co` (502)."""
    port = free_port()
    env = {**clean_env(tmp_path), "HF_ENDPOINT": hub}
    err = tmp_path / "stderr.log"
    with err.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ollamux", "serve", "--port", str(port), "--log-format", "text"],
            stdout=subprocess.DEVNULL,
            stderr=f,
            env=env,
        )
    with running(Served(proc, f"http://127.0.0.1:{port}", err), "/health"):
        client_env = {**env, "OLLAMA_HOST": f"127.0.0.1:{port}"}
        pulled = _cli("pull", f"hf.co/{REPO}:Q8_0", env=client_env)
        assert pulled.returncode == 0, pulled.stderr
        assert "success" in pulled.stderr
        listed = _cli("list", env=client_env)
        assert f"hf.co/{REPO.lower()}:q8_0" in listed.stdout.lower(), listed.stdout


# ------------------------------------------------------------------------------------------ flags
def test_config_has_the_short_flag_the_readme_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README (SIGHUP): `ollamux serve -c config.yaml`; it was `unrecognized arguments: -c`."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server: {port: 18999}\n")
    assert main(["check", "-c", str(cfg)]) == 0
    assert "listen: 127.0.0.1:18999" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--port", "99999"], "argument --port: 99999 is not a port from 0 to 65535"),
        (["--port", "-1"], "argument --port: -1 is not a port from 0 to 65535"),
        (["--log-level", "verbose"], "argument --log-level: invalid choice: 'verbose'"),
    ],
)
def test_serve_refuses_bad_flags_saying_which(flags: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--port 99999` said `address already in use`, `--port -1` `unknown host`; `--log-level verbose`
    was taken silently as info."""
    with pytest.raises(SystemExit) as exc:
        main(["serve", *flags])
    assert exc.value.code == 2
    assert said in capsys.readouterr().err


def test_log_level_takes_any_case() -> None:
    from ollamux.cli import build_parser

    assert build_parser().parse_args(["serve", "--log-level", "DEBUG"]).log_level == "debug"


# ------------------------------------------------------------------------------------ start-up banner
def test_banner_for_a_backend_that_lists_nothing_says_it_may_be_down() -> None:
    """`ollamux serve --backend URL` with the backend down said `run ollamux pull ..., or name a backend`:
    a backend was named, and pull cannot work without a models folder."""
    settings = settings_from_args(None, None, None, "http://127.0.0.1:9/v1", {"HOME": "/nonexistent"})
    last = served_lines(settings, [])[-1]
    assert last.startswith(
        "warning: no models to serve; backend 'default' listed none (see the warning above: is it running"
    )
    assert "pull" not in last and "name a backend" not in last


# ------------------------------------------------------------------- the client against the wrong server
async def _html_404(request: web.Request) -> web.Response:
    return web.Response(status=404, text="<html><body><h1>404</h1>Nothing here</body></html>", content_type="text/html")


async def _html_200(request: web.Request) -> web.Response:
    return web.Response(text="<html><body>a web page</body></html>", content_type="text/html")


async def _cut_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    await resp.write(b'{"model":"m","message":{"role":"assistant","content":"Hel"},"done":false}\n')
    assert request.transport is not None
    request.transport.close()  # the server dies half way through the answer
    return resp


async def _slow_pull(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    await resp.write(b'{"status":"pulling manifest"}\n')
    await resp.write(b'{"status":"pulling abc","digest":"sha256:abc","total":1000,"completed":10}\n')
    await asyncio.sleep(60)
    return resp


@pytest.fixture
def other_server(loop_thread: LoopThread) -> Iterator[str]:
    app = web.Application()
    app.router.add_get("/api/tags", _html_200)
    app.router.add_post("/api/chat", _cut_stream)
    app.router.add_post("/api/pull", _slow_pull)
    app.router.add_route("*", "/{tail:.*}", _html_404)
    runner, url = loop_thread.start_app(app)
    yield url
    loop_thread.stop_app(runner)


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_a_server_that_is_not_ollama_is_named_as_the_likely_cause(
    other_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """OLLAMA_HOST at the wrong port (another web server): `ollamux show` printed the page's HTML and `Error:
    404: Not Found`; `ollamux list` on a 200 HTML page was a JSONDecodeError traceback."""
    monkeypatch.setenv("OLLAMA_HOST", other_server)
    code, err = _main(capsys, "show", "smol")
    assert code == 1
    assert err.startswith(f"Error: the server at {other_server} answered POST /api/show with HTTP 404")
    assert "is it an Ollama-API server" in err and "OLLAMA_HOST" in err and "<html" not in err
    code, err = _main(capsys, "list")
    assert code == 1
    assert "answered GET /api/tags with something that is not JSON: is it an Ollama-API server" in err


def test_a_server_that_dies_mid_answer_is_one_line_not_a_traceback(other_server: str, tmp_path: Path) -> None:
    """`ollamux run` when the server went away half way through the answer: an IncompleteRead traceback."""
    env = {**clean_env(tmp_path), "OLLAMA_HOST": other_server}
    done = subprocess.run(
        [sys.executable, "-m", "ollamux", "run", "m", "hi"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert f"Error: lost the connection to {other_server}" in done.stderr
    assert "is the server still running?" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_during_a_pull_says_how_to_resume(other_server: str, tmp_path: Path) -> None:
    """Ctrl-C left the bar on screen and nothing else; the server keeps the partial download, so say that
    the same command continues it."""
    env = {**clean_env(tmp_path), "OLLAMA_HOST": other_server}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ollamux", "pull", "hf.co/a/b"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # printed once the stream has started
    assert first.strip() == "pulling manifest"
    time.sleep(0.5)  # into the progress bar
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "pull interrupted: `ollamux pull hf.co/a/b` again continues where it stopped" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------ ollamux logs
@pytest.fixture
def big_log(tmp_path: Path) -> Path:
    path = tmp_path / "requests.sqlite"
    rl = RequestLog(RequestLogSettings(path=path), flush_interval=0.01)
    rl.open()
    base = time.time() - 3600
    for i in range(3000):
        rec = RequestRecord(id=f"0123456789abcdef{i:016x}", api="ollama", route="/api/chat", status=200)
        rec.started = base + i
        rec.end_ns = rec.start_ns + 1_000_000
        rl.request_finished(rec)
    rl.close()
    return path


def test_logs_into_head_is_quiet_and_shows_whole_ids(big_log: Path) -> None:
    """`ollamux logs | head` said `ollamux logs: [Errno 32] Broken pipe`; and every line showed the same 12
    characters of id (the server process's prefix), not the request's."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ollamux", "logs", "--db", str(big_log), "-n", "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline().decode()
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 0, err
    assert err == ""
    assert first.split()[2] == f"0123456789abcdef{0:016x}"


# ---------------------------------------------------------------------------------------- ollamux create
def test_create_from_a_path_that_does_not_exist_says_so(
    other_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Modelfile whose `FROM ./model.gguf` has a typo: the server answered `the server does not read files
    by path; upload the file first ... as ollamux create does`, to a user who ran `ollamux create`."""
    monkeypatch.setenv("OLLAMA_HOST", other_server)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./SmolLM2-typo.gguf\n")
    code, err = _main(capsys, "create", "smol", "-f", str(modelfile))
    assert code == 1
    assert f"Error: FROM ./SmolLM2-typo.gguf: no such file: {tmp_path / 'SmolLM2-typo.gguf'}" in err


# ------------------------------------------------------------------------------------- ollamux pull LINK
def test_a_file_link_copied_from_the_hub_pulls_that_quantization() -> None:
    """README: "`huggingface.co/...` and `https://` links work too". The link a user copies from a file's
    page on the hub was refused: `... is not a hub model name`."""
    link = "https://huggingface.co/bartowski/SmolLM2-135M-Instruct-GGUF/blob/main/SmolLM2-135M-Instruct-Q8_0.gguf"
    assert parse_hub_ref(link) == HubRef("bartowski/SmolLM2-135M-Instruct-GGUF", "Q8_0")
    split = "hf.co/u/r/resolve/main/Big-Q4_K_M-00001-of-00003.gguf"  # a split model's first part
    assert parse_hub_ref(split) == HubRef("u/r", "Q4_K_M")
    with pytest.raises(BadHubName, match=r"model\.gguf has no quantization label to pull it by"):
        parse_hub_ref("https://huggingface.co/u/r/blob/main/model.gguf")
    with pytest.raises(BadHubName):  # any other page of a repo stays refused
        parse_hub_ref("https://huggingface.co/u/r/tree/main")


def test_a_hub_that_cannot_be_reached_says_what_to_set(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    """No internet (this machine's case): `cannot reach https://huggingface.co: [Errno -2] Name or service not
    known`, and nothing about the proxy or mirror settings that would help."""
    url = start_proxy(
        {"runtime": {"models_dir": str(tmp_path / "models"), "hf_endpoint": f"http://127.0.0.1:{free_port()}"}}
    )
    r = httpx.post(url + "/api/pull", json={"model": "hf.co/u/r", "stream": False}, timeout=60)
    assert r.status_code == 502
    message = r.json()["error"]
    assert message.startswith("pull model manifest: cannot reach http://127.0.0.1:")
    assert message.endswith(
        "(offline, or behind a proxy? HTTPS_PROXY, or a mirror: runtime.hf_endpoint or HF_ENDPOINT)"
    )


# ------------------------------------------------------------------------------------------ config typos
@pytest.mark.parametrize(
    ("config", "said"),
    [
        ({"server": {"prot": 8080}}, "server.prot: unknown key (did you mean 'port'? known here: "),
        ({"modles": {}}, "modles: unknown key (did you mean 'models'? known here: "),
        ({"server": {"zzz": 1}}, "server.zzz: unknown key (known here: "),  # nothing close: no guess
    ],
)
def test_a_config_typo_is_answered_with_the_key_meant(config: dict[str, object], said: str) -> None:
    """A typo listed a dozen keys and left the user to spot the one meant."""
    with pytest.raises(ConfigError) as exc:
        parse_settings(config, {})
    assert str(exc.value).startswith(said)


def test_a_backend_url_without_its_scheme_gets_the_url_meant(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ollamux serve --backend 127.0.0.1:8080/v1` (written as OLLAMA_HOST is) said only that it is not a URL."""
    monkeypatch.delenv("OLLAMUX_CONFIG", raising=False)
    assert main(["serve", "--backend", "127.0.0.1:8080/v1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "ollamux: config error: --backend: '127.0.0.1:8080/v1' is not an http:// or https:// URL "
        "(did you mean 'http://127.0.0.1:8080/v1'?)"
    )
    with pytest.raises(ConfigError) as exc:  # a user:password is not echoed a second time
        parse_settings({"backends": {"b": {"url": "me:pw@host/v1"}}}, {})
    assert "did you mean" not in str(exc.value)
