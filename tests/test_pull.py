"""`pull hf.co/{user}/{repo}[:{quant}]` over real sockets: the official ollama client (and `ollamux pull`)
against an ollamux app whose `runtime.hf_endpoint` is a fake hub (tests/fakes/fake_hub.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import pexpect
import pytest

from .conftest import ProxyFactory
from .fakes.fake_hub import FakeHub, HubFile, gguf_bytes
from .runtime_helpers import model_file
from .servers import LoopThread

TINY = "acme/Tiny-GGUF"
Q4 = "Tiny-Q4_K_M.gguf"
Q8 = "Tiny-Q8_0.gguf"
MMPROJ = "mmproj-Tiny-f16.gguf"


def tiny_repo() -> list[HubFile]:
    return [
        HubFile("README.md", b"# Tiny\n", lfs=False),
        HubFile("Tiny-Q2_K.gguf", gguf_bytes(120_000, file_type=10, seed=1)),
        HubFile(Q4, gguf_bytes(700_000, file_type=15, seed=2)),
        HubFile(Q8, gguf_bytes(300_000, file_type=7, seed=3)),
        HubFile(MMPROJ, gguf_bytes(90_000, file_type=1, seed=4)),
    ]


@dataclass
class Setup:
    hub: FakeHub
    url: str  # ollamux
    models: Path
    clients: list[ollama.Client]

    def client(self) -> ollama.Client:
        c = ollama.Client(host=self.url, timeout=60)
        self.clients.append(c)
        return c

    def repo_folder(self, repo_id: str = TINY) -> Path:
        return self.models.joinpath("hf.co", *repo_id.split("/"))

    def tags(self) -> dict[str, dict[str, Any]]:
        r = httpx.get(self.url + "/api/tags", timeout=10)
        assert r.status_code == 200, r.text
        return {m["name"]: m for m in r.json()["models"]}

    def file(self, repo_id: str, path: str) -> HubFile:
        return next(f for f in self.hub.repos[repo_id] if f.path == path)


@pytest.fixture
def setup(loop_thread: LoopThread, start_proxy: ProxyFactory, tmp_path: Path) -> Iterator[Setup]:
    hub = FakeHub()
    hub.add(TINY, *tiny_repo())
    runner, hub_url = loop_thread.start_app(hub.app())
    models = tmp_path / "models"
    url = start_proxy(
        {"runtime": {"models_dir": str(models), "hf_endpoint": hub_url, "log_dir": str(tmp_path / "logs")}}
    )
    s = Setup(hub, url, models, [])
    yield s
    for c in s.clients:
        c._client.close()
    loop_thread.stop_app(runner)


def pull_all(client: ollama.Client, name: str) -> list[dict[str, Any]]:
    return [p.model_dump(exclude_none=True) for p in client.pull(name, stream=True)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- pulls
def test_default_pull_takes_q4_k_m_and_its_projector_with_ollamas_progress(setup: Setup) -> None:
    events = pull_all(setup.client(), f"hf.co/{TINY}")
    q4, mmproj = setup.file(TINY, Q4), setup.file(TINY, MMPROJ)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    model_lines = [e for e in events if e.get("digest") == f"sha256:{q4.sha256}"]
    assert {e["status"] for e in model_lines} == {f"pulling {q4.sha256[:12]}"}
    completed = [e["completed"] for e in model_lines]
    assert len(completed) >= 3 and completed == sorted(completed) and len(set(completed)) == len(completed)
    assert completed[0] == 0 and completed[-1] == q4.size and model_lines[-1]["total"] == q4.size
    assert any(e.get("digest") == f"sha256:{mmproj.sha256}" and e["completed"] == mmproj.size for e in events)
    # the files beside each other, named as the hub names them; nothing half-done left
    folder = setup.repo_folder()
    assert {p.name for p in folder.glob("*.gguf*")} == {MMPROJ, Q4}
    assert sha256(folder / Q4) == q4.sha256
    assert setup.hub.gets.keys() == {Q4, MMPROJ}
    # served at once, under the pulled name and its other spellings, with the hub's digest
    tags = setup.tags()
    assert f"hf.co/{TINY}:Q4_K_M" in tags and f"hf.co/{TINY}:latest" not in tags
    assert tags[f"hf.co/{TINY}:Q4_K_M"]["digest"] == q4.sha256
    assert tags[f"hf.co/{TINY}:Q4_K_M"]["size"] == q4.size
    for name in (f"hf.co/{TINY}", f"huggingface.co/{TINY}:q4_k_m", f"hf.co/{TINY.lower()}:Q4_K_M"):
        details = setup.client().show(name).details
        assert details is not None and details.quantization_level == "Q4_K_M"


def test_named_quant_not_streamed(setup: Setup) -> None:
    done = setup.client().pull(f"huggingface.co/{TINY}:q8_0", stream=False)
    assert done.status == "success"
    folder = setup.repo_folder()
    assert {p.name for p in folder.glob("*.gguf*")} == {MMPROJ, Q8}
    tags = setup.tags()
    assert tags[f"hf.co/{TINY}:Q8_0"]["digest"] == setup.file(TINY, Q8).sha256
    details = setup.client().show(f"huggingface.co/{TINY}:Q8_0").details
    assert details is not None and details.quantization_level == "Q8_0"


def test_https_link_and_split_files_all_parts(setup: Setup) -> None:
    parts = [HubFile(f"Q4_K_M/Big-Q4_K_M-0000{k}-of-00002.gguf", gguf_bytes(80_000, seed=k)) for k in (1, 2)]
    setup.hub.add("acme/Big", *parts, HubFile("Big-Q8_0.gguf", gguf_bytes(50_000)))
    assert setup.client().pull("https://huggingface.co/acme/Big", stream=False).status == "success"
    folder = setup.repo_folder("acme/Big")
    assert sorted(p.name for p in folder.glob("*.gguf*")) == [
        "Big-Q4_K_M-00001-of-00002.gguf",
        "Big-Q4_K_M-00002-of-00002.gguf",
    ]
    assert "hf.co/acme/Big:Q4_K_M" in setup.tags()


def test_a_missing_quant_is_a_404_naming_what_there_is(setup: Setup) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        pull_all(setup.client(), f"hf.co/{TINY}:Q5_K_M")
    assert err.value.status_code == 404
    assert err.value.error.startswith("pull model manifest: file does not exist")
    assert "no Q5_K_M GGUF file" in err.value.error and "Q4_K_M, Q8_0" in err.value.error


def test_unknown_repo_is_a_404(setup: Setup) -> None:
    for stream in (True, False):
        with pytest.raises(ollama.ResponseError) as err:
            if stream:
                pull_all(setup.client(), "hf.co/acme/nope")
            else:
                setup.client().pull("hf.co/acme/nope", stream=False)
        assert err.value.status_code == 404
        assert err.value.error.startswith("pull model manifest: file does not exist: no model repository 'acme/nope'")
    assert not setup.models.joinpath("hf.co", "acme", "nope").exists()


def test_names_that_are_not_hub_models(setup: Setup) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        setup.client().pull("llama3.2", stream=False)
    assert err.value.status_code == 404 and "only hub models" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        setup.client().pull("hf.co/onlyuser", stream=False)
    assert err.value.status_code == 400 and "is not a hub model name" in err.value.error


def test_a_checksum_mismatch_is_refused_and_leaves_no_file(setup: Setup) -> None:
    setup.hub.wrong_sha = {Q4}
    with pytest.raises(ollama.ResponseError) as err:
        pull_all(setup.client(), f"hf.co/{TINY}")
    assert "sha256 digest mismatch for Tiny-Q4_K_M.gguf" in err.value.error
    assert "deleted" in err.value.error
    folder = setup.repo_folder()
    assert not (folder / Q4).exists() and not (folder / f"{Q4}.partial").exists()
    assert f"hf.co/{TINY}:Q4_K_M" not in setup.tags()
    with pytest.raises(ollama.ResponseError, match="sha256 digest mismatch") as err:
        setup.client().pull(f"hf.co/{TINY}", stream=False)
    assert err.value.status_code == 502


def test_a_cut_download_is_resumed_by_the_next_pull(setup: Setup) -> None:
    q4 = setup.file(TINY, Q4)
    setup.hub.cut_after = {Q4: 300_000}
    with pytest.raises(ollama.ResponseError, match=r"interrupted after .*pull again to resume"):
        pull_all(setup.client(), f"hf.co/{TINY}:Q4_K_M")
    partial = setup.repo_folder() / f"{Q4}.partial"
    kept = partial.stat().st_size
    assert 0 < kept <= 300_000
    assert setup.hub.bytes_sent[Q4] == 300_000
    events = pull_all(setup.client(), f"hf.co/{TINY}:Q4_K_M")
    assert events[-1] == {"status": "success"}
    first = next(e for e in events if e.get("digest") == f"sha256:{q4.sha256}")
    assert first["completed"] == kept  # it starts from what was there
    assert setup.hub.ranges == [(Q4, kept)]
    assert setup.hub.bytes_sent[Q4] == 300_000 + (q4.size - kept)  # the second time, only the rest
    assert sha256(setup.repo_folder() / Q4) == q4.sha256
    assert not partial.exists()


def test_a_client_that_goes_away_leaves_a_partial_file_the_next_pull_resumes(setup: Setup) -> None:
    setup.hub.chunk_delay = 0.03
    with httpx.stream("POST", setup.url + "/api/pull", json={"model": f"hf.co/{TINY}:Q4_K_M"}, timeout=30) as r:
        for line in r.iter_lines():
            if json.loads(line).get("completed"):
                break  # some bytes are on disk: hang up
    setup.hub.chunk_delay = 0.0
    assert setup.client().pull(f"hf.co/{TINY}:Q4_K_M", stream=False).status == "success"
    resumed = [start for path, start in setup.hub.ranges if path == Q4]
    assert resumed and resumed[0] > 0
    assert sha256(setup.repo_folder() / Q4) == setup.file(TINY, Q4).sha256


def test_pulling_what_is_served_is_quick_with_the_digest_tags_shows(setup: Setup) -> None:
    local = setup.models / "local.Q4_K_M.gguf"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(gguf_bytes(200_000, seed=9))
    pull_all(setup.client(), f"hf.co/{TINY}")
    calls = setup.hub.api_calls
    served = [
        (f"hf.co/{TINY}", setup.repo_folder() / Q4, f"hf.co/{TINY}:Q4_K_M"),
        ("local:q4_k_m", local, "local:q4_k_m"),
    ]
    for name, path, listed in served:
        t0 = time.monotonic()
        events = pull_all(setup.client(), name)
        assert time.monotonic() - t0 < 5
        assert [e["status"] for e in events][-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        digest = next(e["digest"] for e in events if "digest" in e).removeprefix("sha256:")
        assert digest == sha256(path)
        assert setup.tags()[listed]["digest"] == digest
    assert setup.hub.api_calls == calls  # nothing asked of the hub


def test_a_private_repo_needs_hf_token(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.hub.add("acme/Secret", HubFile("Secret-Q4_K_M.gguf", gguf_bytes(50_000)))
    setup.hub.private = {"acme/Secret"}
    with pytest.raises(ollama.ResponseError, match="or it is private") as err:
        setup.client().pull("hf.co/acme/Secret", stream=False)
    assert err.value.status_code == 404
    monkeypatch.setenv("HF_TOKEN", setup.hub.token)  # huggingface_hub reads it at each call
    assert setup.client().pull("hf.co/acme/Secret", stream=False).status == "success"
    assert any(ua.startswith("ollamux/") for ua in setup.hub.user_agents)


def test_two_pulls_of_one_model_download_it_once(setup: Setup) -> None:
    setup.hub.chunk_delay = 0.01
    results: list[str] = []

    def run() -> None:
        results.append(str(setup.client().pull(f"hf.co/{TINY}", stream=False).status))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["success", "success"]
    assert setup.hub.gets[Q4] == 1
    assert sha256(setup.repo_folder() / Q4) == setup.file(TINY, Q4).sha256


# ----------------------------------------------------------------------------------------------- CLI
def cli_env(setup: Setup) -> dict[str, str]:
    return {**os.environ, "OLLAMA_HOST": setup.url, "COLUMNS": "120", "TERM": "xterm"}


def test_cli_pull_draws_a_progress_bar_and_ends_with_success(setup: Setup) -> None:
    setup.hub.chunk_delay = 0.02
    out = io.StringIO()
    child = pexpect.spawn(
        sys.executable,
        ["-m", "ollamux", "pull", f"hf.co/{TINY}"],
        env=cli_env(setup),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    child.logfile_read = out
    try:
        child.expect_exact("pulling manifest")
        child.expect(r"pulling [0-9a-f]{12}")
        child.expect_exact("success")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    text = out.getvalue()
    assert "━" in text and "100%" in text  # rich's bar, filled
    assert text.index("verifying sha256 digest") < text.index("writing manifest") < text.index("success")


def test_cli_pull_error_is_one_line_and_exit_1(setup: Setup) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ollamux", "pull", "hf.co/acme/nope"],
        env=cli_env(setup),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: pull model manifest: file does not exist")


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.e2e
def test_pulled_smollm2_is_listed_and_chats(loop_thread: LoopThread, start_proxy: ProxyFactory, tmp_path: Path) -> None:
    repo = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
    hub = FakeHub()
    hub.add(repo, HubFile("SmolLM2-135M-Instruct-Q4_K_M.gguf", source=model_file()), HubFile("README.md", b"x"))
    runner, hub_url = loop_thread.start_app(hub.app())
    with contextlib.ExitStack() as stack:
        stack.callback(loop_thread.stop_app, runner)
        runtime = {"models_dir": str(tmp_path / "models"), "hf_endpoint": hub_url, "log_dir": str(tmp_path / "logs")}
        url = start_proxy({"runtime": {**runtime, "ctx": 512, "threads": 2}})
        client = ollama.Client(host=url, timeout=120)
        stack.callback(client._client.close)
        assert [p.status for p in client.pull(f"hf.co/{repo}", stream=True)][-1] == "success"
        names = [m.model for m in client.list().models]
        assert f"hf.co/{repo}:Q4_K_M" in names
        answer = client.chat(
            model=f"hf.co/{repo}",
            messages=[{"role": "user", "content": "Say hello."}],
            options={"temperature": 0, "seed": 1, "num_predict": 8},
        )
        assert answer.message.content and answer.model == f"hf.co/{repo}"
