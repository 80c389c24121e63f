"""`ollamux serve` as an operator meets it: the address it binds, the open-files limit, a busy or forbidden port.

The behaviour tests start the real `ollamux serve` process, under the limits a shell would give it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from ollamux.cli.serve import bind_address, settings_from_args
from ollamux.config import ConfigError
from ollamux.server import DescriptorAlarm

from .served import Served, running
from .servers import free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and sets rlimits")


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no config, no OLLAMA_HOST from the caller, state under a temporary HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMUX_CONFIG", "OLLAMA_HOST", "OLLAMUX_MODELS")}
    return {**env, "HOME": str(home), **extra}


def _with_nofile(soft: int, hard: int) -> list[str]:
    """A command prefix that runs the rest under these open-files limits, as a login shell would set them."""
    return ["bash", "-c", f'ulimit -Sn {soft} && ulimit -Hn {hard} && exec "$@"', "bash"]


@contextmanager
def serve(tmp: Path, *args: str, env: dict[str, str], port: int, prefix: Sequence[str] = ()) -> Iterator[Served]:
    """The real `ollamux serve`, up and answering at 127.0.0.1:port; stopped with SIGTERM as a service manager."""
    err_path = tmp / "stderr.log"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "ollamux", "serve", "--log-format", "text", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    served = Served(proc, f"http://127.0.0.1:{port}", err_path)
    with running(served, "/api/version"):
        yield served


def _idle_connections(stack: ExitStack, port: int, n: int) -> None:
    """n connections that never send a byte, as idle keep-alive clients (or a leaking one) hold them."""
    for _ in range(n):
        stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))


def _need_descriptors(n: int) -> None:
    """This test process itself holds n client sockets: raise its own soft limit if it must (as ollamux now does)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"the test itself needs {n} descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def _max_open_files(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


# --- the open-files limit -----------------------------------------------------------------------------------


def test_serve_raises_the_soft_open_files_limit_to_the_hard_one(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() != 0 and hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"cannot give ollamux a hard limit of 4096 from a hard limit of {hard}")
    _need_descriptors(1300)
    port = free_port()
    with serve(tmp_path, "--port", str(port), env=_env(tmp_path), port=port, prefix=_with_nofile(1024, 4096)) as s:
        assert _max_open_files(s.proc.pid) == (4096, 4096)
        assert s.lines("open-files limit 4096 (raised from 1024; hard limit 4096)"), s.log()
        # what the default soft limit of 1024 could not take: more idle connections than that, then a request
        with ExitStack() as stack:
            _idle_connections(stack, port, 1100)
            assert httpx.get(s.url + "/api/version", timeout=10).status_code == 200


def test_running_out_of_descriptors_is_one_line_every_few_seconds(tmp_path: Path) -> None:
    # soft = hard: nothing to raise, so 400 idle connections exhaust the process for certain
    port = free_port()
    with serve(tmp_path, "--port", str(port), env=_env(tmp_path), port=port, prefix=_with_nofile(256, 256)) as s:
        assert s.lines("open-files limit 256 (the hard limit)"), s.log()  # a warning with the way out
        assert "WARNING" in s.lines("open-files limit 256")[0]
        needle = "out of file descriptors (EMFILE)"
        with ExitStack() as stack:
            _idle_connections(stack, port, 400)
            first = s.wait_for_line(needle)[0]
            assert "ERROR" in first and "the open-files limit 256 is reached" in first, first
            # still exhausted: the probe sees it every second, the log says it once per 5 s, not once a second
            time.sleep(3)
            assert len(s.lines(needle)) == 1, s.log()
            second = s.wait_for_line(needle, count=2)[1]
            assert " s now: the open-files limit 256" in second, second
            gap = datetime.fromisoformat(second.split()[0]) - datetime.fromisoformat(first.split()[0])
            assert gap.total_seconds() >= 4.5, s.log()
        # the idle clients gone, the listener still accepts: nothing was left broken
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(s.url + "/api/version", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, s.log()
            time.sleep(0.2)
        assert "Traceback" not in s.log()


def test_asyncio_out_of_resource_reports_become_the_rate_limited_line(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio's own loop (no uvloop) reports each failed accept to the exception handler, once a second."""
    loop = asyncio.new_event_loop()
    try:
        alarm = DescriptorAlarm(interval=60)
        loop.set_exception_handler(alarm.exception_handler)
        context = {
            "message": "socket.accept() out of system resource",
            "exception": OSError(errno.EMFILE, "Too many open files"),
        }
        with caplog.at_level(logging.INFO):
            for _ in range(10):
                loop.call_exception_handler(dict(context))
            loop.call_exception_handler({"message": "something else", "exception": ValueError("boom")})
    finally:
        loop.close()
    ours = [r for r in caplog.records if r.name == "ollamux"]
    assert len(ours) == 1 and "open-files limit" in ours[0].getMessage() and ours[0].exc_info is None
    # anything else still reaches asyncio's default handler, unchanged
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == ["something else"]


# --- the address: flags, config file, OLLAMA_HOST -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("", None),
        ("0.0.0.0", ("0.0.0.0", 11434)),
        ("example.com", ("example.com", 11434)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        (":1234", ("127.0.0.1", 1234)),
        ("http://0.0.0.0:5000", ("0.0.0.0", 5000)),
        ("http://example.com", ("example.com", 80)),  # Ollama's default port for the scheme
        ("https://example.com:8443/ollama", ("example.com", 8443)),  # scheme and path: nothing to bind
        ("[::1]:5000", ("::1", 5000)),
        ("::1", ("::1", 11434)),
        ('"0.0.0.0:7000"', ("0.0.0.0", 7000)),  # quoted, as in a systemd Environment= line
    ],
)
def test_ollama_host_is_read_like_ollama_serve(value: str, address: tuple[str, int] | None) -> None:
    assert bind_address({"OLLAMA_HOST": value}) == address


@pytest.mark.parametrize("value", ["127.0.0.1:http", "127.0.0.1:70000"])
def test_an_ollama_host_port_that_is_no_port_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="OLLAMA_HOST"):
        bind_address({"OLLAMA_HOST": value})


@pytest.mark.parametrize(
    ("server", "host", "port", "env", "address"),
    [
        (None, None, None, None, ("127.0.0.1", 11434)),
        (None, None, None, "0.0.0.0:9000", ("0.0.0.0", 9000)),
        ({}, None, None, "0.0.0.0:9000", ("0.0.0.0", 9000)),  # a file without the keys
        ({"version": "0.12.0"}, None, None, ":9000", ("127.0.0.1", 9000)),
        ({"port": 8000}, None, None, "0.0.0.0:9000", ("0.0.0.0", 8000)),  # key by key
        ({"host": "127.0.0.2"}, None, None, "0.0.0.0:9000", ("127.0.0.2", 9000)),
        ({"host": "127.0.0.2", "port": 8000}, None, None, "0.0.0.0:9000", ("127.0.0.2", 8000)),
        # the file says the default value itself: still the file's word, not OLLAMA_HOST's
        ({"host": "127.0.0.1", "port": 11434}, None, None, "0.0.0.0:9000", ("127.0.0.1", 11434)),
        ({"host": "127.0.0.2", "port": 8000}, "127.0.0.3", 7000, "0.0.0.0:9000", ("127.0.0.3", 7000)),
        (None, None, 7000, "0.0.0.0:9000", ("0.0.0.0", 7000)),
        (None, "127.0.0.3", None, "0.0.0.0:9000", ("127.0.0.3", 9000)),
        ({"port": 8000}, None, None, None, ("127.0.0.1", 8000)),
    ],
)
def test_address_precedence_flag_then_file_then_ollama_host(
    tmp_path: Path,
    server: dict[str, object] | None,
    host: str | None,
    port: int | None,
    env: str | None,
    address: tuple[str, int],
) -> None:
    environ = {"HOME": str(tmp_path)}
    if env is not None:
        environ["OLLAMA_HOST"] = env
    config = None
    if server is not None:
        path = tmp_path / "ollamux.yaml"
        path.write_text(yaml.safe_dump({"server": server} if server else {}))
        config = str(path)
    s = settings_from_args(config, host, port, None, environ)
    assert (s.server.host, s.server.port) == address
    if config is not None:  # the same through OLLAMUX_CONFIG
        s = settings_from_args(None, host, port, None, {**environ, "OLLAMUX_CONFIG": config})
        assert (s.server.host, s.server.port) == address


def test_serve_listens_where_ollama_host_says(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, OLLAMA_HOST=f"127.0.0.1:{port}")
    with serve(tmp_path, env=env, port=port) as s:  # no --host, no --port, no config
        assert s.lines(f"ollamux listening on http://127.0.0.1:{port}"), s.log()


# --- a port that cannot be had ------------------------------------------------------------------------------


def _serve_fails(tmp_path: Path, *args: str, prefix: Sequence[str] = ()) -> str:
    """Run `ollamux serve`, which must exit 1 at once; its stderr."""
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "ollamux", "serve", *args],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_a_busy_port_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stderr = _serve_fails(tmp_path, "--port", str(port))
    assert stderr == (
        f"ollamux: cannot listen on 127.0.0.1:{port}: address already in use "
        "(is another ollamux or ollama running? use --port or OLLAMA_HOST)\n"
    )


def test_a_privileged_port_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if not start.exists() or int(start.read_text()) <= 80:
        pytest.skip("port 80 is not privileged here")
    prefix: list[str] = []
    if os.geteuid() == 0:  # root may bind it: run without the capability that allows it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop CAP_NET_BIND_SERVICE")
        prefix = ["setpriv", "--bounding-set=-net_bind_service"]
    stderr = _serve_fails(tmp_path, "--port", "80", prefix=prefix)
    assert stderr == (
        "ollamux: cannot listen on 127.0.0.1:80: permission denied "
        "(ports below 1024 need root or CAP_NET_BIND_SERVICE; use a higher one with --port or OLLAMA_HOST)\n"
    )
