"""/api/copy, /api/create, /api/delete and /api/blobs with the official `ollama` client over real sockets:
names listed with their details, what a created model sends its backend, errors, and a restart."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from ollamux import create_app
from ollamux.config import parse_settings

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI
from .servers import LoopThread

HI = [{"role": "user", "content": "hi"}]


def write_gguf(path: Path, arch: str = "qwen2", ctx: int = 32768) -> str:
    """A GGUF file with a header and no tensors (enough for metadata); its digest."""

    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<Q", len(b)) + b

    kv = s("general.architecture") + struct.pack("<I", 8) + s(arch)
    kv += s(f"{arch}.context_length") + struct.pack("<II", 4, ctx)
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + kv
    path.write_bytes(data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def client_for() -> Iterator[Callable[[str], ollama.Client]]:
    made: list[ollama.Client] = []

    def make(host: str) -> ollama.Client:
        made.append(ollama.Client(host=host, timeout=30))
        return made[-1]

    yield make
    for c in made:
        c._client.close()


@pytest.fixture
def fake(fake_openai: tuple[FakeOpenAI, str]) -> FakeOpenAI:
    return fake_openai[0]


@pytest.fixture
def proxy(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> str:
    config = basic_config(fake_openai[1])
    config["models"]["tuned"] = {"backend": "fake", "upstream": "fake-model", "defaults": {"system": "From config."}}
    return start_proxy(config)


@pytest.fixture
def client(proxy: str, client_for: Callable[[str], ollama.Client]) -> ollama.Client:
    return client_for(proxy)


def tags(client: ollama.Client) -> dict[str, Any]:
    return {str(m.model): m for m in client.list().models}


def show(proxy: str, model: str) -> dict[str, Any]:
    r = httpx.post(proxy + "/api/show", json={"model": model})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# ----------------------------------------------------------------------------------------- listing
def test_aliases_listed_with_the_details_of_their_model(client: ollama.Client, proxy: str) -> None:
    listed = tags(client)
    assert {"fm:7b", "llama3.2:3b", "fake-model:latest", "llama3.2:latest"} <= set(listed)
    assert listed["llama3.2:3b"].details == listed["llama3.2:latest"].details
    assert listed["llama3.2:3b"].digest == listed["llama3.2:latest"].digest
    ids = {m["id"] for m in httpx.get(proxy + "/v1/models").json()["data"]}
    assert {"fm:7b", "llama3.2:3b", "fake-model", "llama3.2"} <= ids


def test_unknown_model_lists_names_that_exist_in_every_envelope(client: ollama.Client, proxy: str) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3.3", messages=HI)
    assert e.value.status_code == 404
    first, _, names = e.value.error.partition("; try one of: ")
    assert first == "model 'llama3.3' not found"
    suggested = names.split(", ")
    assert 1 <= len(suggested) <= 5 and suggested[0] in ("llama3.2:latest", "llama3.2:3b")
    with openai.OpenAI(base_url=proxy + "/v1", api_key="x", max_retries=0) as oai:
        with pytest.raises(openai.NotFoundError) as oe:
            oai.chat.completions.create(model="llama3.3", messages=[{"role": "user", "content": "hi"}])
    assert "model 'llama3.3' not found; try one of: llama3.2" in str(oe.value)
    with anthropic.Anthropic(base_url=proxy, api_key="x", max_retries=0) as claude:
        with pytest.raises(anthropic.NotFoundError) as ae:
            claude.messages.create(model="llama3.3", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert "model 'llama3.3' not found; try one of: llama3.2" in str(ae.value)


# -------------------------------------------------------------------------------------------- copy
def test_copy_serves_and_lists_the_new_name_then_delete_removes_it(
    client: ollama.Client, proxy: str, fake: FakeOpenAI
) -> None:
    assert client.copy("llama3.2", "my-llama").status == "success"
    r = httpx.post(proxy + "/api/copy", json={"source": "llama3.2", "destination": "other:v2"})
    assert r.status_code == 200 and r.content == b""  # Ollama's: 200, no body
    listed = tags(client)
    assert listed["my-llama:latest"].details == listed["llama3.2:latest"].details
    assert listed["my-llama:latest"].digest == listed["llama3.2:latest"].digest  # a copy is the same model
    assert "other:v2" in listed
    assert "my-llama:latest" in {m["id"] for m in httpx.get(proxy + "/v1/models").json()["data"]}
    r2 = client.chat(model="my-llama", messages=HI)
    assert r2.message.content == "Hello from the fake!" and r2.model == "my-llama"
    assert fake.last("/chat/completions").json["model"] == "fake-model"  # llama3.2's upstream
    assert client.show("my-llama").modelinfo is not None

    assert client.delete("my-llama").status == "success"
    assert "my-llama:latest" not in tags(client)
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="my-llama", messages=HI)
    assert e.value.status_code == 404
    r = httpx.request("DELETE", proxy + "/api/delete", json={"model": "other:v2"})
    assert r.status_code == 200 and r.content == b""


def test_copy_of_a_copy_outlives_its_source(client: ollama.Client, proxy: str) -> None:
    client.create(model="one", from_="fake-model", system="Be one.")
    client.copy("one", "two")
    client.delete("one")
    assert show(proxy, "two")["system"] == "Be one."


def test_copy_and_delete_errors(client: ollama.Client, proxy: str) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client.copy("nope", "x")
    assert e.value.status_code == 404 and e.value.error.startswith("model 'nope' not found; try one of: ")
    with pytest.raises(ollama.ResponseError) as e:
        client.copy("fake-model", "llama3.2")
    assert e.value.status_code == 400 and "is defined in the config file" in e.value.error
    for bad in ({"source": "fake-model", "destination": "bad name"}, {"source": "", "destination": "x"}):
        r = httpx.post(proxy + "/api/copy", json=bad)
        assert r.status_code == 400 and "is invalid" in r.json()["error"]
    assert httpx.post(proxy + "/api/copy").json() == {"error": "missing request body"}
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("nope")
    assert e.value.status_code == 404 and e.value.error.startswith("model 'nope' not found")
    for name in ("llama3.2", "llama3.2:3b", "x-wild"):  # a config model, its alias, a wildcard's name
        r = httpx.request("DELETE", proxy + "/api/delete", json={"model": name})
        assert r.status_code == 400
    assert "is defined in the config file" in r.json()["error"] or "served by backend" in r.json()["error"]
    r = httpx.request("DELETE", proxy + "/api/delete", json={"model": "llama3.2"})
    assert "model 'llama3.2' is defined in the config file" in r.json()["error"]


# ------------------------------------------------------------------------------------------ create
def test_create_streams_ollamas_statuses(client: ollama.Client) -> None:
    statuses = [p.status for p in client.create(model="pirate", from_="fake-model", system="Arr.", stream=True)]
    assert statuses[0] is not None and statuses[0].startswith("using existing layer sha256:")
    assert statuses[1] is not None and statuses[1].startswith("creating new layer sha256:")
    assert statuses[-2:] == ["writing manifest", "success"]
    assert client.create(model="pirate2", from_="pirate").status == "success"  # stream false: the last only


def test_created_model_system_and_parameters_reach_the_backend(
    client: ollama.Client, proxy: str, fake: FakeOpenAI
) -> None:
    client.create(
        model="pirate",
        from_="fake-model",
        system="You are a pirate.",
        parameters={"temperature": 0.3, "num_predict": 50, "stop": ["END"], "top_k": 9},
        messages=[{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A pirate."}],
    )
    client.chat(model="pirate", messages=HI)
    sent = fake.last("/chat/completions").json
    assert sent["model"] == "fake-model"
    assert [m["content"] for m in sent["messages"]] == ["You are a pirate.", "Who are you?", "A pirate.", "hi"]
    assert (sent["temperature"], sent["max_tokens"], sent["stop"], sent["top_k"]) == (0.3, 50, ["END"], 9)
    # the request's own options and system win
    client.chat(model="pirate", messages=[{"role": "system", "content": "Mine."}, *HI], options={"temperature": 0.9})
    sent = fake.last("/chat/completions").json
    assert sent["temperature"] == 0.9 and sent["max_tokens"] == 50 and sent["messages"][0]["content"] == "Mine."
    # the same model through the OpenAI API: the byte-exact pass-through re-serialised with the defaults
    with openai.OpenAI(base_url=proxy + "/v1", api_key="x", max_retries=0) as oai:
        oai.chat.completions.create(model="pirate:latest", messages=[{"role": "user", "content": "hi"}], top_p=0.2)
    sent = fake.last("/chat/completions").json
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.3, 0.2, 50)
    assert sent["messages"][0] == {"role": "system", "content": "You are a pirate."}


def test_create_on_a_configured_model_keeps_its_defaults_under_its_own(
    client: ollama.Client, proxy: str, fake: FakeOpenAI
) -> None:
    client.create(model="tuned-more", from_="tuned", parameters={"temperature": 0.1})
    client.generate(model="tuned-more", prompt="hi")
    sent = fake.last("/chat/completions").json
    assert sent["messages"][0] == {"role": "system", "content": "From config."} and sent["temperature"] == 0.1


def test_show_reports_a_created_models_modelfile(client: ollama.Client, proxy: str) -> None:
    client.create(
        model="pirate",
        from_="fake-model",
        system="You are a pirate.",
        template="{{ .Prompt }}",
        parameters={"temperature": 0.3, "stop": ["END", "STOP"]},
        license="MIT",
    )
    body = show(proxy, "pirate")
    assert body["system"] == "You are a pirate." and body["template"] == "{{ .Prompt }}" and body["license"] == "MIT"
    lines = body["parameters"].splitlines()
    assert f"{'temperature':<30} 0.3" in lines
    assert f'{"stop":<30} "END"' in lines and f'{"stop":<30} "STOP"' in lines
    modelfile = body["modelfile"]
    assert "\nFROM fake-model\n" in modelfile and "SYSTEM You are a pirate.\n" in modelfile
    assert "PARAMETER temperature 0.3\n" in modelfile and "PARAMETER stop END\nPARAMETER stop STOP\n" in modelfile
    assert "# FROM pirate:latest" in modelfile
    # the Modelfile reads back: creating from it gives the same model
    r = httpx.post(proxy + "/api/create", json={"model": "pirate-again", "modelfile": modelfile, "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}
    again = show(proxy, "pirate-again")
    assert (again["system"], again["parameters"], again["template"]) == (
        body["system"],
        body["parameters"],
        body["template"],
    )


def test_create_from_the_older_modelfile_form(client: ollama.Client, proxy: str, fake: FakeOpenAI) -> None:
    modelfile = 'FROM fake-model\nPARAMETER num_predict 12\nSYSTEM """Be\nbrief."""\n'
    r = httpx.post(proxy + "/api/create", json={"model": "brief", "modelfile": modelfile})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line)["status"] for line in r.content.splitlines()][-1] == "success"
    client.chat(model="brief", messages=HI)
    sent = fake.last("/chat/completions").json
    assert sent["max_tokens"] == 12 and sent["messages"][0]["content"] == "Be\nbrief."


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "x", "from": "fake-model", "quantize": "q4_K_M"}, 400, "does not quantize"),
        ({"model": "x", "from": "fake-model", "adapters": {"a.gguf": "sha256:" + "0" * 64}}, 400, "ADAPTER"),
        ({"model": "x"}, 400, "neither 'from' or 'files' was specified"),
        ({"model": "bad name", "from": "fake-model"}, 400, "invalid model name"),
        ({"model": "x", "from": "nope"}, 404, "model 'nope' not found"),
        ({"model": "x", "from": "fake-model", "parameters": {"temprature": 1}}, 400, "unknown parameter 'temprature'"),
        ({"model": "x", "from": "fake-model", "parameters": {"num_ctx": "big"}}, 400, "must be a number"),
        ({"model": "x", "from": "./model.gguf"}, 400, "upload the file first"),
        ({"model": "x", "modelfile": "FROM fake-model\nADAPTER ./l.gguf\n"}, 400, "ADAPTER is not supported"),
        ({"model": "x", "modelfile": "SYSTEM hi\n"}, 400, "no FROM line"),
        ({"model": "x", "files": {"m.gguf": "sha256:" + "a" * 64}}, 400, "not found: upload it first"),
        ({"model": "x", "files": {"../m.gguf": "sha256:" + "a" * 64}}, 400, "file path must be relative"),
        ({"model": "llama3.2", "from": "fake-model"}, 400, "defined in the config file"),
        ({"model": "x", "from": "fake-model", "messages": [{"role": "robot"}]}, 400, "message role must be one of"),
    ],
)
def test_create_errors(proxy: str, body: dict[str, Any], status: int, message: str) -> None:
    r = httpx.post(proxy + "/api/create", json=body)
    assert r.status_code == status and message in r.json()["error"], r.text


# ------------------------------------------------------------------------------------------- blobs
def test_blobs_upload_head_and_create_from_files(
    client: ollama.Client, proxy: str, tmp_path: Path, fake: FakeOpenAI
) -> None:
    gguf = tmp_path / "tiny.gguf"
    digest = write_gguf(gguf)
    assert httpx.head(f"{proxy}/api/blobs/{digest}").status_code == 404
    assert client.create_blob(gguf) == digest
    assert httpx.head(f"{proxy}/api/blobs/{digest}").status_code == 200
    stored = tmp_path / "models" / "blobs" / ("sha256-" + digest.removeprefix("sha256:"))
    assert stored.read_bytes() == gguf.read_bytes()  # beside the request log's folder: no models_dir configured
    r = httpx.post(f"{proxy}/api/blobs/sha256:{'0' * 64}", content=b"not that")
    assert r.status_code == 400 and r.json()["error"].startswith('digest mismatch, expected "sha256:000')
    assert httpx.head(f"{proxy}/api/blobs/sha256:nothex").status_code == 400
    assert httpx.post(f"{proxy}/api/blobs/{digest}", content=gguf.read_bytes()).status_code == 200  # already there

    statuses = [p.status for p in client.create(model="tiny", files={"tiny.gguf": digest}, stream=True)]
    assert statuses[:2] == ["parsing GGUF", f"using existing layer {digest}"] and statuses[-1] == "success"
    listed = tags(client)["tiny:latest"]
    assert listed.details is not None and listed.details.family == "qwen2"  # read from the GGUF header
    assert listed.digest is not None and len(listed.digest) == 64
    info = client.show("tiny")
    assert info.modelinfo is not None and info.modelinfo["qwen2.context_length"] == 32768
    assert str(stored) in (info.modelfile or "")
    # not a GGUF file
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    other = client.create_blob(text)
    r = httpx.post(proxy + "/api/create", json={"model": "notes", "files": {"notes.gguf": other}})
    assert r.status_code == 400 and r.json()["error"] == "supplied file was not in GGUF format"
    # deleting the model prunes the blob no other model names
    client.delete("tiny")
    assert not stored.exists() and "tiny:latest" not in tags(client)


def test_created_blob_survives_and_folder_model_deleted(
    loop_thread: LoopThread, tmp_path: Path, client_for: Callable[[str], ollama.Client]
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    write_gguf(folder / "local-one.Q4_0.gguf", arch="llama", ctx=2048)
    config = {"runtime": {"models_dir": str(folder), "log_dir": str(tmp_path / "logs")}}
    config["request_log"] = {"path": str(tmp_path / "requests.sqlite")}
    runner, url = loop_thread.start_app(create_app(parse_settings(config, dict(os.environ))))
    try:
        client = client_for(url)
        assert "local-one:q4_0" in tags(client)
        digest = client.create_blob(folder / "local-one.Q4_0.gguf")
        client.create(model="from-blob", files={"m.gguf": digest}, system="Blob.")
        assert (folder / "blobs" / ("sha256-" + digest.removeprefix("sha256:"))).is_file()
        client.delete("local-one:q4_0")  # a GGUF file of the models folder: the file goes, and the model
        assert not (folder / "local-one.Q4_0.gguf").exists()
        listed = tags(client)
        assert "local-one:q4_0" not in listed and "from-blob:latest" in listed
    finally:
        loop_thread.stop_app(runner)


# ------------------------------------------------------------------------------------------ restarts
def test_made_models_survive_a_restart(
    loop_thread: LoopThread, fake_openai: tuple[FakeOpenAI, str], tmp_path: Path, client_for: Callable[..., Any]
) -> None:
    config = basic_config(fake_openai[1])
    config["request_log"] = {"path": str(tmp_path / "requests.sqlite")}
    settings = parse_settings(config, dict(os.environ))
    runner, url = loop_thread.start_app(create_app(settings))
    client = client_for(url)
    client.copy("llama3.2", "kept")
    client.create(model="made", from_="fake-model", system="Still here.", parameters={"seed": 7})
    client.create(model="gone", from_="fake-model")
    client.delete("gone")
    loop_thread.stop_app(runner)

    con = sqlite3.connect(tmp_path / "requests.sqlite")
    assert {r[0] for r in con.execute("SELECT name FROM created_models")} == {"kept:latest", "made:latest"}
    con.close()

    runner, url = loop_thread.start_app(create_app(settings))
    try:
        client = client_for(url)
        listed = tags(client)
        assert {"kept:latest", "made:latest"} <= set(listed) and "gone:latest" not in listed
        assert show(url, "made")["system"] == "Still here."
        client.chat(model="made", messages=HI)
        assert fake_openai[0].last("/chat/completions").json["seed"] == 7
    finally:
        loop_thread.stop_app(runner)


def test_without_the_request_log_a_json_file_keeps_them(
    loop_thread: LoopThread, fake_openai: tuple[FakeOpenAI, str], tmp_path: Path, client_for: Callable[..., Any]
) -> None:
    config = basic_config(fake_openai[1])
    config["request_log"] = {"enabled": False, "path": str(tmp_path / "home" / "requests.sqlite")}
    settings = parse_settings(config, dict(os.environ))
    for _ in range(2):
        runner, url = loop_thread.start_app(create_app(settings))
        try:
            client = client_for(url)
            if not (tmp_path / "home" / "created_models.json").exists():
                client.copy("fake-model", "in-json")
            assert "in-json:latest" in tags(client)
        finally:
            loop_thread.stop_app(runner)
    assert not (tmp_path / "home" / "requests.sqlite").exists()


def test_keyed_callers_see_only_names_they_may_use(
    fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory
) -> None:
    config = basic_config(fake_openai[1])
    config["auth"] = {"keys": {"limited": {"key": "sk-limited-key-123456", "models": ["llama3.2"]}}}
    url = start_proxy(config)
    headers = {"Authorization": "Bearer sk-limited-key-123456"}
    r = httpx.post(url + "/api/chat", json={"model": "llama3.3", "messages": HI}, headers=headers)
    first, _, names = r.json()["error"].partition("; try one of: ")
    assert r.status_code == 404 and first == "model 'llama3.3' not found"
    assert set(names.split(", ")) == {"llama3.2:latest", "llama3.2:3b"}  # the model and its alias only
    r = httpx.post(url + "/api/copy", json={"source": "fake-model", "destination": "mine"}, headers=headers)
    assert r.status_code == 403
