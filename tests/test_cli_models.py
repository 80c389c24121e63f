"""`ollamux cp | rm | create | show --modelfile ... | --version` against a real `ollamux serve`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import basic_config
from .fakes.openai_upstream import FakeOpenAI
from .servers import start_serve
from .test_model_admin import write_gguf

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def served(fake_openai: tuple[FakeOpenAI, str], tmp_path: Path) -> Iterator[tuple[str, Run]]:
    config = basic_config(fake_openai[1])
    config["request_log"] = {"path": str(tmp_path / "requests.sqlite")}
    proc, url, _ = start_serve(config, tmp_path)
    env = {**os.environ, "OLLAMA_HOST": url.removeprefix("http://")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "ollamux", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    try:
        yield url, run
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cp_create_show_rm(served: tuple[str, Run], tmp_path: Path) -> None:
    _, run = served
    r = run("cp", "llama3.2", "mine")
    assert r.returncode == 0 and r.stdout.strip() == "copied 'llama3.2' to 'mine'", r.stderr
    (tmp_path / "Modelfile").write_text(
        'FROM mine\nPARAMETER temperature 0.4\nPARAMETER stop "END"\nSYSTEM Be a CLI.\n'
    )
    r = run("create", "from-cli")  # -f defaults to ./Modelfile
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == "gathering model components" and r.stderr.splitlines()[-1] == "success"
    assert run("show", "from-cli", "--system").stdout == "Be a CLI.\n"
    params = run("show", "from-cli", "--parameters").stdout.splitlines()
    assert f"{'temperature':<30} 0.4" in params and f'{"stop":<30} "END"' in params
    modelfile = run("show", "from-cli", "--modelfile").stdout
    assert "SYSTEM Be a CLI.\n" in modelfile and "PARAMETER temperature 0.4\n" in modelfile
    assert "Parameters" in run("show", "from-cli").stdout
    listed = run("list").stdout
    assert "mine:latest" in listed and "from-cli:latest" in listed and "llama3.2:3b" in listed

    r = run("rm", "mine", "from-cli")
    assert r.returncode == 0 and r.stdout.splitlines() == ["deleted 'mine'", "deleted 'from-cli'"]
    assert "mine:latest" not in run("list").stdout
    r = run("rm", "llama3.2")
    assert r.returncode == 1 and "is defined in the config file" in r.stderr
    r = run("cp", "nope", "x")
    assert r.returncode == 1 and "Error: model 'nope' not found; try one of:" in r.stderr


def test_create_from_a_local_gguf_uploads_it_once(served: tuple[str, Run], tmp_path: Path) -> None:
    url, run = served
    (tmp_path / "files").mkdir()
    digest = write_gguf(tmp_path / "files" / "tiny.gguf")
    (tmp_path / "files" / "Modelfile").write_text("FROM ./tiny.gguf\nSYSTEM Tiny.\n")
    r = run("create", "tiny", "-f", str(tmp_path / "files" / "Modelfile"))
    assert r.returncode == 0 and f"copying file {digest} 100%" in r.stderr and "parsing GGUF" in r.stderr, r.stderr
    assert httpx.head(f"{url}/api/blobs/{digest}").status_code == 200
    r = run("create", "tiny2", "-f", str(tmp_path / "files" / "Modelfile"))
    assert r.returncode == 0 and "copying file" not in r.stderr  # the server has the blob already
    assert "/blobs/sha256-" in run("show", "tiny", "--modelfile").stdout


def test_modelfile_errors_and_version(served: tuple[str, Run], tmp_path: Path) -> None:
    _, run = served
    (tmp_path / "Bad").write_text("FROM x\nADAPTER ./lora.gguf\n")
    r = run("create", "bad", "-f", "Bad")
    assert r.returncode == 1 and "ADAPTER is not supported" in r.stderr
    r = run("create", "bad", "-f", "Missing")
    assert r.returncode == 1 and "cannot read Missing" in r.stderr
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("ollamux version ")
