"""TLS files changed under a running `ollamux serve`: a renewed certificate at the same paths (cert-manager,
certbot) is what new connections get, with or without SIGHUP; a file caught half written, or a key that is
not the certificate's, keeps the previous certificate serving and is said once."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import basic_config
from .fakes.openai_upstream import FakeOpenAI
from .served import serve_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ca")
    _openssl("req", "-x509", *EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA", cwd=d)
    (d / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    for name in ("one", "two"):
        _openssl("req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d,
        )  # fmt: skip
    return d


def _served_cn(url: str, ca: Path, sni: str | None = None) -> str:
    """The CN of the certificate a new connection gets (by IP: no SNI, as most clients of an address)."""
    host, port = url.removeprefix("https://").split(":")
    ctx = ssl.create_default_context(cafile=str(ca / "ca.pem"))
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni or host) as tls:
            cert = tls.getpeercert()
    assert cert is not None
    subject: Any = cert["subject"]  # ((("commonName", "one"),),)
    [cn] = [value for rdn in subject for name, value in rdn if name == "commonName"]
    return str(cn)


def _until(ok: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def _install(ca: Path, tmp: Path, name: str) -> None:
    # as certbot and cert-manager do: each file replaced whole (a rename), the key first
    for src, dst in ((f"{name}.key", "server.key"), (f"{name}.pem", "server.pem")):
        shutil.copy(ca / src, tmp / f".{dst}.new")
        (tmp / f".{dst}.new").replace(tmp / dst)


def test_a_renewed_certificate_is_served_to_new_connections(
    fake_openai: tuple[FakeOpenAI, str], tmp_path: Path, ca: Path
) -> None:
    _install(ca, tmp_path, "one")
    cfg = {**basic_config(fake_openai[1]), "server": {"tls_cert": "server.pem", "tls_key": "server.key"}}
    cfg["request_log"] = {"enabled": False}
    verify = ssl.create_default_context(cafile=str(ca / "ca.pem"))
    with serve_config(tmp_path, cfg, verify=verify) as served:
        assert _served_cn(served.url, ca) == "one"
        with httpx.Client(verify=verify) as kept:  # a connection opened before the renewal
            assert kept.get(served.url + "/health").status_code == 200
            _install(ca, tmp_path, "two")
            served.proc.send_signal(signal.SIGHUP)  # what an operator sends after a renewal (not needed)
            _until(lambda: _served_cn(served.url, ca) == "two", "the renewed certificate served")
            assert _served_cn(served.url, ca, sni="localhost") == "two"
            assert kept.get(served.url + "/health").status_code == 200  # and the old connection still works
        assert len(served.lines("certificate")) >= 1
        # a key that is not the certificate's (a rotation half done): the previous one serves, said once
        shutil.copy(ca / "one.key", tmp_path / "server.key")
        for _ in range(5):
            assert _served_cn(served.url, ca) == "two"
        bad = served.lines("still serving the previous certificate")
        assert len(bad) == 1 and "server.key" in bad[0], served.log()
        _install(ca, tmp_path, "one")
        _until(lambda: _served_cn(served.url, ca) == "one", "a good pair again: served")
        assert "Traceback" not in served.log()
