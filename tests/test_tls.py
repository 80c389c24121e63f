"""HTTPS: `server.tls_cert` and `server.tls_key`, with a CA and a server certificate made here by the
openssl CLI; the official clients talk to ollamux over https trusting that CA, plain http is refused."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from ollamux.config import ConfigError, parse_settings
from ollamux.config.settings import ServerSettings
from ollamux.tls import server_context

from .conftest import basic_config
from .fakes.openai_upstream import FakeOpenAI
from .served import clean_env, serve_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem (a test CA), server.pem signed by it for 127.0.0.1 and localhost, and server.key."""
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ollamux test CA", cwd=d
    )
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d,
    )  # fmt: skip
    return d


def _tls_config(upstream: str, tmp: Path, certs: Path) -> dict[str, object]:
    # relative paths: read from the config file's folder, as every other path of the config
    for name in ("server.pem", "server.key"):
        shutil.copy(certs / name, tmp / name)
    return {**basic_config(upstream), "server": {"tls_cert": "server.pem", "tls_key": "server.key"}}


def test_the_official_clients_talk_to_ollamux_over_https(
    fake_openai: tuple[FakeOpenAI, str], tmp_path: Path, certs: Path
) -> None:
    ca = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with serve_config(tmp_path, _tls_config(fake_openai[1], tmp_path, certs), verify=ca) as served:
        assert served.url.startswith("https://")
        assert served.wait_for_line(f"ollamux listening on {served.url}")
        assert served.lines(f"dashboard: {served.url}/ui")
        client = ollama.Client(host=served.url, verify=ca)
        try:
            answer = client.chat(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        finally:
            client._client.close()
        assert answer.message.content == "Hello from the fake!"
        with openai.DefaultHttpxClient(verify=ca) as oai_http:
            oai = openai.OpenAI(base_url=served.url + "/v1", api_key="sk-x", http_client=oai_http, max_retries=0)
            stream = oai.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from the fake!"
        with httpx.Client(verify=ca) as http:
            # negotiated as the context says: TLS 1.2 or later
            with http.stream("GET", served.url + "/health") as resp:
                version = resp.extensions["network_stream"].get_extra_info("ssl_object").version()
            assert version in ("TLSv1.2", "TLSv1.3")
        # a client that does not trust the CA refuses the server, and plain http gets no answer at all
        with pytest.raises(httpx.ConnectError):
            httpx.get(served.url + "/health")
        with pytest.raises(httpx.TransportError):
            httpx.get(served.url.replace("https://", "http://") + "/health", timeout=5)


def test_ollamux_check_says_https(fake_openai: tuple[FakeOpenAI, str], tmp_path: Path, certs: Path) -> None:
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_tls_config(fake_openai[1], tmp_path, certs)))
    done = subprocess.run(
        [sys.executable, "-m", "ollamux", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert "(HTTPS)" in done.stdout


def test_tls_cert_and_key_come_together() -> None:
    for given, missing in (("tls_cert", "server.tls_key"), ("tls_key", "server.tls_cert")):
        with pytest.raises(ConfigError) as err:
            parse_settings({"server": {given: "x.pem"}}, {})
        assert err.value.key == missing


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    s = parse_settings({"server": {"tls_cert": "a.pem", "tls_key": "/abs/b.key"}}, {}, base_dir=tmp_path)
    assert s.server.tls_cert == tmp_path / "a.pem"
    assert s.server.tls_key == Path("/abs/b.key")
    assert parse_settings({}, {}).server.tls_cert is None


@pytest.mark.parametrize(
    ("case", "key", "says"),
    [
        ("missing cert", "server.tls_cert", "cannot read"),
        ("missing key", "server.tls_key", "cannot read"),
        ("cert is not a certificate", "server.tls_cert", "holds no PEM certificate"),
        ("key is not a key", "server.tls_key", "holds no PEM private key"),
        ("key of another certificate", "server.tls_key", "is not the private key of the certificate"),
    ],
)
def test_unloadable_files_are_a_config_error_naming_the_file(
    tmp_path: Path, certs: Path, case: str, key: str, says: str
) -> None:
    cert, pkey = certs / "server.pem", certs / "server.key"
    if case == "missing cert":
        cert = tmp_path / "nope.pem"
    elif case == "missing key":
        pkey = tmp_path / "nope.key"
    elif case == "cert is not a certificate":
        cert = pkey
    elif case == "key is not a key":
        pkey = cert
    else:
        pkey = certs / "ca.key"
    with pytest.raises(ConfigError) as err:
        server_context(ServerSettings(tls_cert=cert, tls_key=pkey))
    assert err.value.key == key
    assert says in err.value.message
    assert str(cert if key == "server.tls_cert" else pkey) in err.value.message


def test_serve_with_a_bad_certificate_is_one_line_and_exit_code_1(tmp_path: Path, certs: Path) -> None:
    import yaml

    (tmp_path / "bad.pem").write_text("not a certificate\n")
    shutil.copy(certs / "server.key", tmp_path / "server.key")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"server": {"port": 0, "tls_cert": "bad.pem", "tls_key": "server.key"}}))
    done = subprocess.run(
        [sys.executable, "-m", "ollamux", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"server.tls_cert: {tmp_path / 'bad.pem'} holds no PEM certificate" in done.stderr
