"""deploy/compose/nginx.conf run for real on loopback, in front of ollamux instances the test started: the
load balancer the compose file ships, rendered for loopback the way bench/scaleout.py renders it."""

from __future__ import annotations

import importlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from .servers import free_port

REPO = Path(__file__).resolve().parent.parent
COMPOSE_NGINX = REPO / "deploy" / "compose" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def scaleout() -> ModuleType:
    """bench/scaleout.py, whose lb_conf renders the compose nginx.conf for loopback."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module("scaleout")
    finally:
        sys.path.remove(str(REPO / "bench"))


@contextmanager
def compose_nginx(tmp: Path, ports: Sequence[int]) -> Iterator[str]:
    """nginx with the compose nginx.conf, its upstreams the given loopback ports; yields its URL."""
    listen = free_port()
    conf = tmp / "lb.conf"
    conf.write_text(scaleout().lb_conf(COMPOSE_NGINX.read_text(), tmp, listen, list(ports)))
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                break
            except OSError:
                assert nginx.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{listen}"
    finally:
        nginx.terminate()
        nginx.wait(10)
