"""Routes passed to the model's backend as they are: rerank, llama.cpp's /infill, /tokenize and /detokenize,
audio, images and /upstream/{model}/..., over real sockets against a fake that records what arrived.

The last test runs SmolLM2 through the built-in engine in rerank mode (marked e2e).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollamux import create_app
from ollamux.config import parse_settings
from ollamux.errors import BadRequest, ModelNotFound
from ollamux.registry import Registry
from ollamux.translate.model_ref import form_boundary, form_field, set_form_field, split_model_path

from .conftest import ProxyFactory
from .fakes.recording_upstream import AUDIO, LONG_AUDIO, RERANK_USAGE, RecordingUpstream, _parse_form
from .runtime_helpers import model_file
from .runtime_helpers import start_proxy as start_runtime_proxy
from .servers import LoopThread, log_row

BACKEND_KEY = "sk-upstream-secret-0123456789"
ALICE = "sk-alice-0123456789abcdef"
BOB = "sk-bob-fedcba9876543210"
RERANK = {
    "model": "reranker",
    "query": "what is a panda?",
    "documents": ["hi", {"text": "The giant panda is a bear species endemic to China."}],
    "top_n": 2,
    "return_documents": False,
}
CLIP = random.Random(7).randbytes(3000) + b"\r\n--\r\n\r\n" + AUDIO  # an upload with CRLFs and dashes
_rids = itertools.count()


def rid() -> str:
    return f"routed-{os.getpid()}-{next(_rids)}-{time.monotonic_ns()}"


def config(up: str) -> dict[str, Any]:
    return {
        "backends": {
            "llama": {"type": "openai", "url": f"{up}/v1", "api_key": BACKEND_KEY},
            "ollama": {"type": "ollama", "url": up},
        },
        "default_model": "reranker",
        "models": {
            "reranker": {"backend": "llama", "upstream": "bge-reranker-v2-m3"},
            "chat-only": {"backend": "llama", "upstream": "not-a-reranker"},
            "plain": {"backend": "llama", "upstream": "plain-404"},
            "org/rank:q8": {"backend": "llama"},
            "whisper-1": {"backend": "llama"},
            "whisper": {"backend": "llama", "upstream": "ggml-base.en"},
            "slow-whisper": {"backend": "llama"},
            "tts": {"backend": "llama"},
            "long-tts": {"backend": "llama", "upstream": "long-speech"},
            "sd": {"backend": "llama", "upstream": "sd-turbo"},
            "llama3.2": {"backend": "ollama"},
            "w-*": {"backend": "llama"},
        },
    }


@pytest.fixture(scope="module")
def upstream(loop_thread: LoopThread) -> Iterator[tuple[RecordingUpstream, str]]:
    fake = RecordingUpstream()
    runner, url = loop_thread.start_app(fake.app())
    yield fake, url
    loop_thread.stop_app(runner)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("routed") / "requests.sqlite"


@pytest.fixture(scope="module")
def proxy(loop_thread: LoopThread, upstream: tuple[RecordingUpstream, str], db: Path) -> Iterator[str]:
    cfg = {**config(upstream[1]), "request_log": {"path": str(db)}}
    runner, url = loop_thread.start_app(create_app(parse_settings(cfg, dict(os.environ))))
    yield url
    loop_thread.stop_app(runner)


@pytest.fixture
def fake(upstream: tuple[RecordingUpstream, str]) -> RecordingUpstream:
    return upstream[0]


@pytest.fixture
def up_url(upstream: tuple[RecordingUpstream, str]) -> str:
    return upstream[1]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def send(http: httpx.Client, method: str, url: str, request_id: str, **kw: Any) -> httpx.Response:
    headers = {"x-request-id": request_id, **kw.pop("headers", {})}
    return http.request(method, url, headers=headers, **kw)


def encoded_form(fields: dict[str, str], data: bytes = CLIP) -> tuple[bytes, str]:
    """A form as an OpenAI client (httpx) encodes it: the exact bytes and Content-Type sent."""
    req = httpx.Request("POST", "http://x/", data=fields, files={"file": ("clip.wav", data, "audio/wav")})
    return req.read(), req.headers["Content-Type"]


def openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return dict(err)


# ------------------------------------------------------------------------------------------ rerank
@pytest.mark.parametrize("path", ["/v1/rerank", "/v1/reranking", "/rerank"])
def test_rerank_body_reaches_the_backend_with_only_the_model_swapped(
    proxy: str, fake: RecordingUpstream, up_url: str, db: Path, http: httpx.Client, path: str
) -> None:
    raw = b'{"model": "reranker",  "query": "what is a panda?", "documents": ["hi", {"text": "pandas"}], "top_n": 2}'
    i = rid()
    r = send(http, "POST", proxy + path, i, content=raw, headers={"Authorization": "Bearer client-own"})
    assert r.status_code == 200, r.text
    seen = fake.one(i)
    assert (seen.method, seen.path) == ("POST", "/v1/rerank")
    assert seen.body == raw.replace(b'"reranker"', b'"bge-reranker-v2-m3"')  # every other byte as sent
    assert seen.headers["Authorization"] == f"Bearer {BACKEND_KEY}"  # the backend's key, not the client's
    assert seen.headers["X-Request-Id"] == i and r.headers["x-request-id"] == i
    assert r.json() == {
        "model": "bge-reranker-v2-m3",
        "object": "list",
        "usage": RERANK_USAGE,
        "results": [{"index": 0, "relevance_score": 1.0}, {"index": 1, "relevance_score": 0.5}],
    }
    row = log_row(db, i)
    assert (row["api"], row["method"], row["route"], row["status"]) == ("openai", "POST", path, 200)
    assert (row["model_requested"], row["model_served"], row["backend"]) == ("reranker", "bge-reranker-v2-m3", "llama")
    assert row["upstream_url"] == f"{up_url}/v1/rerank" and row["prompt_tokens"] == 21 and row["error"] is None


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": "reranker", "documents": ["a"]}, "query", "'query' is required"),
        ({"query": 5, "documents": ["a"]}, "query", "invalid type for 'query': expected a string, got an integer"),
        ({"query": "q"}, "documents", "non-empty array of strings (or of objects with a 'text' string), got nothing"),
        ({"query": "q", "documents": []}, "documents", "got an empty array"),
        ({"query": "q", "documents": "a b"}, "documents", "got a string"),
        ({"query": "q", "documents": ["a", 3]}, "documents[1]", "'documents[1]' must be a string or an object"),
        ({"query": "q", "documents": [{"txt": "a"}]}, "documents[0]", "with a 'text' string, got an object"),
        ({"query": "q", "documents": ["a"], "top_n": -1}, "top_n", "'top_n' must be a non-negative integer"),
        ({"query": "q", "documents": ["a"], "top_n": "2"}, "top_n", "got a string"),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents", "must be a boolean"),
        ({"model": 5, "query": "q", "documents": ["a"]}, "model", "invalid type for 'model' field: float64"),
    ],
)
def test_rerank_request_errors_are_400s_in_openai_envelope(
    proxy: str, fake: RecordingUpstream, http: httpx.Client, body: dict[str, Any], param: str, message: str
) -> None:
    i = rid()
    err = openai_error(send(http, "POST", proxy + "/v1/rerank", i, json=body), 400)
    assert message in err["message"] and err["param"] == param and err["type"] == "invalid_request_error"
    assert fake.by_rid(i) == []


def test_rerank_not_json_and_unknown_model(proxy: str, fake: RecordingUpstream, http: httpx.Client) -> None:
    i = rid()
    err = openai_error(send(http, "POST", proxy + "/rerank", i, content=b"query=q"), 400)
    assert err["message"].startswith("invalid JSON in request body")
    err = openai_error(send(http, "POST", proxy + "/rerank", i, json={**RERANK, "model": "nope"}), 404)
    assert err["message"].startswith("model 'nope' not found; try one of: ") and err["code"] == "model_not_found"
    assert fake.by_rid(i) == []


def test_an_ollama_backend_is_refused(proxy: str, fake: RecordingUpstream, db: Path, http: httpx.Client) -> None:
    i = rid()
    err = openai_error(send(http, "POST", proxy + "/v1/rerank", i, json={**RERANK, "model": "llama3.2"}), 400)
    assert err["message"] == ("model 'llama3.2' is served by backend 'ollama', an Ollama server without a rerank API")
    assert err["param"] == "model"
    row = log_row(db, i)
    assert (row["status"], row["backend"], row["error"]) == (400, "ollama", err["message"])
    j = rid()
    r = send(http, "POST", proxy + "/v1/audio/speech", j, json={"model": "llama3.2", "input": "hi"})
    assert "an Ollama server without a /v1/audio/speech API" in openai_error(r, 400)["message"]
    raw, ctype = encoded_form({"model": "llama3.2"})
    r = send(http, "POST", proxy + "/v1/audio/transcriptions", j, content=raw, headers={"Content-Type": ctype})
    assert "without a /v1/audio/transcriptions API" in openai_error(r, 400)["message"]
    assert fake.by_rid(i) == [] and fake.by_rid(j) == []


def test_a_backend_404_keeps_its_status_and_message(
    proxy: str, fake: RecordingUpstream, db: Path, http: httpx.Client
) -> None:
    i = rid()
    r = send(http, "POST", proxy + "/v1/rerank", i, json={**RERANK, "model": "chat-only"})
    assert r.status_code == 404  # llama.cpp's own envelope, as it came
    assert r.json() == {
        "error": {"code": 404, "message": "model 'not-a-reranker' is not a reranker", "type": "not_found_error"}
    }
    assert fake.one(i).json["model"] == "not-a-reranker"
    row = log_row(db, i)
    assert (row["status"], row["error"]) == (404, "model 'not-a-reranker' is not a reranker")
    # a body in no envelope at all still reaches the client in OpenAI's
    err = openai_error(send(http, "POST", proxy + "/v1/rerank", rid(), json={**RERANK, "model": "plain"}), 404)
    assert err["message"] == "no such route here"


# ------------------------------------------------------------------------------ llama.cpp's root routes
@pytest.mark.parametrize(
    ("path", "body", "answer"),
    [
        ("/infill", {"model": "org/rank:q8", "input_prefix": "def add(a, b):\n", "input_suffix": ""}, "content"),
        ("/tokenize", {"model": "org/rank:q8", "content": "hello world"}, "tokens"),
        ("/detokenize", {"model": "org/rank:q8", "tokens": [28120, 905]}, "content"),
    ],
)
def test_llama_routes_go_to_the_server_root_not_v1(
    proxy: str,
    fake: RecordingUpstream,
    up_url: str,
    db: Path,
    http: httpx.Client,
    path: str,
    body: dict[str, Any],
    answer: str,
) -> None:
    i = rid()
    r = send(http, "POST", proxy + path, i, json=body)
    assert r.status_code == 200 and answer in r.json()
    seen = fake.one(i)
    assert seen.path == path and seen.json == body  # same name upstream: the client's bytes
    row = log_row(db, i)
    assert row["upstream_url"] == up_url + path and row["route"] == path and row["model_served"] == "org/rank:q8"


def test_tokenize_without_a_model_uses_the_default(
    proxy: str, fake: RecordingUpstream, db: Path, http: httpx.Client
) -> None:
    i = rid()
    r = send(http, "POST", proxy + "/tokenize", i, json={"content": "hello world"})
    assert r.json() == {"tokens": [28120, 905]}
    assert fake.one(i).json == {"content": "hello world", "model": "bge-reranker-v2-m3"}
    assert log_row(db, i)["model_served"] == "bge-reranker-v2-m3"


# ------------------------------------------------------------------------------------------ audio
def test_speech_answer_bytes_are_relayed_identical(
    proxy: str, fake: RecordingUpstream, db: Path, http: httpx.Client
) -> None:
    i = rid()
    r = send(http, "POST", proxy + "/v1/audio/speech", i, json={"model": "tts", "input": "Hello!", "voice": "af"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/mpeg"
    assert r.content == AUDIO
    assert fake.one(i).path == "/v1/audio/speech"
    # long and chunked (no Content-Length): the streamed relay, still byte for byte
    j = rid()
    r = send(http, "POST", proxy + "/v1/audio/speech", j, json={"model": "long-tts", "input": "Hello!"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "audio/mpeg"
    assert len(r.content) == len(LONG_AUDIO) and r.content == LONG_AUDIO
    assert fake.one(j).json["model"] == "long-speech"
    row = log_row(db, j)
    assert (row["status"], row["streamed"], row["model_served"]) == (200, 1, "long-speech")


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
def test_transcription_form_is_routed_by_its_model_field(
    proxy: str, fake: RecordingUpstream, db: Path, http: httpx.Client, path: str
) -> None:
    raw, ctype = encoded_form({"model": "whisper-1", "language": "en", "response_format": "json"})
    i = rid()
    r = send(http, "POST", proxy + path, i, content=raw, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    seen = fake.one(i)
    assert seen.path == path and seen.body == raw and seen.headers["Content-Type"] == ctype  # untouched
    clip = {"filename": "clip.wav", "content_type": "audio/wav", "size": len(CLIP)}
    assert r.json()["files"]["file"] == {**clip, "sha256": hashlib.sha256(CLIP).hexdigest()}
    row = log_row(db, i)
    assert (row["model_requested"], row["model_served"], row["route"]) == ("whisper-1", "whisper-1", path)


def test_an_alias_rewrites_only_the_model_field(
    proxy: str, fake: RecordingUpstream, db: Path, http: httpx.Client
) -> None:
    raw, ctype = encoded_form({"model": "whisper", "language": "en"})
    i = rid()
    r = send(http, "POST", proxy + "/v1/audio/transcriptions", i, content=raw, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    seen = fake.one(i)
    assert seen.headers["Content-Type"] == ctype  # same boundary: the form was not rebuilt
    assert seen.body == raw.replace(b"\r\n\r\nwhisper\r\n", b"\r\n\r\nggml-base.en\r\n", 1)
    assert r.json()["fields"] == {"model": "ggml-base.en", "language": "en"}
    assert r.json()["files"]["file"]["sha256"] == hashlib.sha256(CLIP).hexdigest()
    row = log_row(db, i)
    assert (row["model_requested"], row["model_served"]) == ("whisper", "ggml-base.en")


def test_a_form_without_a_model_gets_the_default_models_name(
    proxy: str, fake: RecordingUpstream, http: httpx.Client
) -> None:
    raw, ctype = encoded_form({"language": "en"})
    r = send(http, "POST", proxy + "/v1/audio/transcriptions", rid(), content=raw, headers={"Content-Type": ctype})
    assert r.json()["fields"] == {"language": "en", "model": "bge-reranker-v2-m3"}


def test_form_mistakes_are_400s(proxy: str, fake: RecordingUpstream, http: httpx.Client) -> None:
    i = rid()
    r = send(http, "POST", proxy + "/v1/audio/transcriptions", i, json={"model": "whisper-1"})
    msg = openai_error(r, 400)["message"]
    assert msg == "/v1/audio/transcriptions takes a multipart/form-data body (the file and its fields); " + (
        "Content-Type was application/json"
    )
    raw, ctype = encoded_form({"model": "whisper-1"})
    boundary = ctype.partition("boundary=")[2].encode()
    twice = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n' + raw
    r = send(http, "POST", proxy + "/v1/audio/transcriptions", i, content=twice, headers={"Content-Type": ctype})
    assert openai_error(r, 400)["message"] == "multipart/form-data request has more than one 'model' field"
    r = send(http, "POST", proxy + "/v1/audio/transcriptions", i, content=raw[:-40], headers={"Content-Type": ctype})
    assert openai_error(r, 400)["message"] == "multipart/form-data body is not closed by its boundary"
    r = send(http, "POST", proxy + "/v1/audio/speech", i, content=raw, headers={"Content-Type": ctype})
    assert openai_error(r, 400)["message"] == "/v1/audio/speech takes a JSON body, not multipart/form-data"
    assert fake.by_rid(i) == []


# ------------------------------------------------------------------------------------------ images
def test_images_generations_and_edits(proxy: str, fake: RecordingUpstream, http: httpx.Client) -> None:
    i = rid()
    r = send(http, "POST", proxy + "/v1/images/generations", i, json={"model": "sd", "prompt": "a cat", "n": 1})
    assert r.json()["data"] == [{"b64_json": "iVBORw0KGgo="}]
    assert fake.one(i).path == "/v1/images/generations" and fake.one(i).json["model"] == "sd-turbo"
    raw, ctype = encoded_form({"model": "sd", "prompt": "add a hat"}, data=b"\x89PNG\r\n\x1a\n" + CLIP)
    j = rid()
    r = send(http, "POST", proxy + "/v1/images/edits", j, content=raw, headers={"Content-Type": ctype})
    assert r.json()["fields"] == {"model": "sd-turbo", "prompt": "add a hat"}
    assert fake.one(j).path == "/v1/images/edits"
    k = rid()  # edits by JSON (image URLs) are accepted too
    r = send(http, "POST", proxy + "/v1/images/edits", k, json={"model": "sd", "prompt": "p", "images": []})
    assert r.json() == {"path": "/v1/images/edits", "json": {"model": "sd-turbo", "prompt": "p", "images": []}}


# ------------------------------------------------------------------------------------ /upstream/...
def test_upstream_raw_route_with_a_slash_and_colon_model(
    proxy: str, fake: RecordingUpstream, up_url: str, db: Path, http: httpx.Client
) -> None:
    i = rid()
    r = send(http, "GET", proxy + "/upstream/org/rank:q8/v1/models?limit=2&q=a%2Bb", i)
    assert r.status_code == 200, r.text
    seen = fake.one(i)
    assert (seen.method, seen.path, seen.query) == ("GET", "/v1/models", "limit=2&q=a%2Bb")
    assert seen.headers["Authorization"] == f"Bearer {BACKEND_KEY}"
    row = log_row(db, i)
    assert (row["api"], row["method"], row["route"]) == ("openai", "GET", "/upstream/org/rank:q8/v1/models")
    assert (row["model_requested"], row["backend"], row["status"]) == ("org/rank:q8", "llama", 200)
    assert row["upstream_url"] == f"{up_url}/v1/models?limit=2&q=a%2Bb"
    # the server's own routes, not under /v1
    assert send(http, "GET", proxy + "/upstream/org/rank:q8/health", rid()).json() == {"status": "ok"}
    j = rid()
    assert send(http, "GET", proxy + "/upstream/org/rank:q8/", j).status_code == 200
    assert fake.one(j).path == "/"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_upstream_passes_method_body_and_content_type(
    proxy: str, fake: RecordingUpstream, http: httpx.Client, method: str
) -> None:
    body = b"\x00\xffraw bytes\r\n"
    i = rid()
    r = send(
        http,
        method,
        proxy + "/upstream/org%2Frank%3Aq8/slots/0?action=save",  # the name percent-encoded as one segment
        i,
        content=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    seen = fake.one(i)
    assert (seen.method, seen.path, seen.query, seen.body) == (method, "/slots/0", "action=save", body)
    assert seen.headers["Content-Type"] == "application/octet-stream"
    assert r.json()["method"] == method


def test_upstream_model_lookup(proxy: str, fake: RecordingUpstream, db: Path, http: httpx.Client) -> None:
    # a name only a wildcard knows is the first segment
    i = rid()
    assert send(http, "GET", proxy + "/upstream/w-thing/health", i).status_code == 200
    assert fake.one(i).path == "/health" and log_row(db, i)["model_requested"] == "w-thing"
    # an Ollama backend's root is its URL
    j = rid()
    assert send(http, "GET", proxy + "/upstream/llama3.2/api/tags", j).json()["path"] == "/api/tags"
    # an upstream error keeps its status, in OpenAI's envelope
    assert openai_error(send(http, "GET", proxy + "/upstream/whisper/status/418", rid()), 418)
    k = rid()
    err = openai_error(send(http, "GET", proxy + "/upstream/nope/v1/models", k), 404)
    assert err["message"] == "model 'nope' not found (no leading part of 'nope/v1/models' names a model)"
    assert err["type"] == "not_found_error" and err["code"] == "model_not_found"
    assert log_row(db, k)["status"] == 404
    err = openai_error(send(http, "GET", proxy + "/upstream/whisper/v1/%2e%2e/%2E%2E/etc", k), 400)
    assert err["message"] == "'.' and '..' path segments are not allowed after /upstream/{model}"
    # spelled plainly (HTTP clients resolve those, aiohttp's server does not): the same refusal
    status, body = raw_get(proxy, "/upstream/whisper/v1/../../etc", k)
    assert status == 400 and b"path segments are not allowed" in body
    assert fake.by_rid(k) == []


def raw_get(base: str, target: str, request_id: str) -> tuple[int, bytes]:
    """A GET of `target` exactly as written (httpx would resolve its dot segments first)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nx-request-id: {request_id}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b"".join(iter(lambda: s.recv(65536), b""))
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# ------------------------------------------------------------------------------------ keys and gates
def keyed(up: str) -> dict[str, Any]:
    cfg = config(up)
    cfg["auth"] = {"keys": {"alice": {"key": ALICE, "models": ["reranker", "whisper-1"]}, "bob": {"key": BOB}}}
    return cfg


def test_keys_are_required_and_their_model_policy_applies(
    upstream: tuple[RecordingUpstream, str], start_proxy: ProxyFactory, http: httpx.Client, tmp_path: Path
) -> None:
    fake, up = upstream
    url = start_proxy(keyed(up))
    raw, ctype = encoded_form({"model": "whisper-1"})
    form: dict[str, Any] = {"content": raw, "headers": {"Content-Type": ctype}}
    i = rid()
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/rerank", {"json": RERANK}),
        ("POST", "/tokenize", {"json": {"content": "x"}}),
        ("POST", "/v1/audio/transcriptions", form),
        ("GET", "/upstream/reranker/health", {}),
    ]
    for method, path, kw in calls:
        err = openai_error(send(http, method, url + path, i, **kw), 401)
        assert "API key" in err["message"], path
    assert fake.by_rid(i) == []
    alice = {"Authorization": f"Bearer {ALICE}"}
    j = rid()
    r = send(http, "POST", url + "/v1/rerank", j, json=RERANK, headers=alice)
    assert r.status_code == 200 and fake.one(j).headers["Authorization"] == f"Bearer {BACKEND_KEY}"
    k = rid()
    r = send(http, "POST", url + "/v1/audio/transcriptions", k, content=raw, headers={**alice, "Content-Type": ctype})
    assert r.status_code == 200 and fake.one(k).body == raw
    n = rid()
    err = openai_error(send(http, "GET", url + "/upstream/org/rank:q8/health", n, headers=alice), 403)
    assert err["type"] == "permission_error" and "org/rank:q8" in err["message"]
    raw2, ctype2 = encoded_form({"model": "whisper"})
    r = send(http, "POST", url + "/v1/audio/translations", n, content=raw2, headers={**alice, "Content-Type": ctype2})
    assert openai_error(r, 403)["type"] == "permission_error"
    assert fake.by_rid(n) == []
    row = log_row(tmp_path / "requests.sqlite", n)
    assert (row["key_name"], row["status"], row["api"]) == ("alice", 403, "openai")
    bob = {"Authorization": f"Bearer {BOB}"}
    assert send(http, "GET", url + "/upstream/org/rank:q8/health", rid(), headers=bob).json() == {"status": "ok"}


def test_the_concurrency_gate_reads_the_form_field(
    upstream: tuple[RecordingUpstream, str], start_proxy: ProxyFactory
) -> None:
    cfg = config(upstream[1])
    cfg["limits"] = {"concurrency": {"models": {"slow-whisper": {"max": 1, "queue": 0}}}}
    url = start_proxy(cfg)
    slow, ctype = encoded_form({"model": "slow-whisper"})

    def transcribe(body: bytes, content_type: str = ctype) -> httpx.Response:
        with httpx.Client(timeout=10) as c:
            return c.post(url + "/v1/audio/transcriptions", content=body, headers={"Content-Type": content_type})

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(transcribe, slow)
        time.sleep(0.2)
        err = openai_error(transcribe(slow), 503)  # the default model (no gate) would have let it through
        assert err["code"] == "overloaded" and "model 'slow-whisper:latest' is busy" in err["message"]
        assert transcribe(*encoded_form({"model": "whisper-1"})).status_code == 200  # another model: no gate
        assert first.result().status_code == 200
    assert transcribe(slow).status_code == 200  # the slot came back


def test_a_large_binary_upload_is_not_taken_for_json(proxy: str, http: httpx.Client) -> None:
    raw, ctype = encoded_form({"model": "whisper-1"}, data=random.Random(1).randbytes(5_000_000))
    r = send(http, "POST", proxy + "/v1/audio/transcriptions", rid(), content=raw, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------ the pure readers
def test_form_reader_and_writer_against_the_email_parser() -> None:
    raw, ctype = encoded_form({"language": "en"})
    b = form_boundary(ctype)
    assert b is not None and form_boundary("application/json") is None
    with_preamble = b"ignored preamble\r\n" + raw + b"epilogue --" + b + b"--\r\n"
    assert form_field(with_preamble, b, "model") is None
    added = set_form_field(with_preamble, b, "model", "m:1", None)
    assert _parse_form(ctype, added)["fields"] == {"language": "en", "model": "m:1"}
    found = form_field(added, b, "model")
    assert found is not None and found.value == "m:1"
    swapped = set_form_field(added, b, "model", "org/other:q4", found)
    assert _parse_form(ctype, swapped)["fields"] == {"language": "en", "model": "org/other:q4"}
    assert _parse_form(ctype, swapped)["files"]["file"]["sha256"] == hashlib.sha256(CLIP).hexdigest()
    with pytest.raises(BadRequest, match="no boundary"):
        form_boundary("multipart/form-data")


def test_the_longest_leading_name_wins() -> None:
    cfg = {
        "backends": {"b": {"type": "openai", "url": "http://127.0.0.1:9/v1"}},
        "default_model": "org",
        "models": {"org": {"backend": "b"}, "org/model:q8": {"backend": "b"}, "hf-*": {"backend": "b"}},
    }
    s = parse_settings(cfg, {})
    reg = Registry(s.models, s.default_model)
    route, rest = split_model_path(reg, "org/model:q8/v1/models")
    assert (route.upstream, rest) == ("org/model:q8", "/v1/models")
    route, rest = split_model_path(reg, "org/v1/models")
    assert (route.upstream, rest) == ("org", "/v1/models")
    route, rest = split_model_path(reg, "hf-x%2Fy/health")  # a wildcard name: one segment, '/' encoded
    assert (route.upstream, rest) == ("hf-x/y", "/health")
    assert split_model_path(reg, "org/model:q8")[1] == ""
    with pytest.raises(ModelNotFound):
        split_model_path(reg, "/v1/models")  # an empty name is never the default model


# ------------------------------------------------------------------------------------ rerank on SmolLM2
@pytest.mark.e2e
def test_a_managed_model_in_rerank_mode(loop_thread: LoopThread, tmp_path: Path) -> None:
    gguf = model_file()
    spec = {"gguf": str(gguf), "ctx": 512, "threads": 2, "ttl": 60}
    cfg = {
        "runtime": {"max_running": 2},
        "models": {"smol-rank": {"runtime": {**spec, "rerank": True}}, "smol": {"runtime": spec}},
    }
    p = start_runtime_proxy(loop_thread, cfg, tmp_path)
    try:
        docs = ["hi", "The giant panda is a bear species endemic to China.", "Paris is in France."]
        r = p.post("/v1/rerank", {"model": "smol-rank", "query": "What is a panda?", "documents": docs}, timeout=120)
        assert r.status_code == 200, r.text
        out = r.json()
        # llama.cpp's own answer: one score per document, best first (SmolLM2 has no classification head:
        # the score is its pooled output's first value, a number without meaning as relevance)
        assert sorted(x["index"] for x in out["results"]) == [0, 1, 2]
        scores = [x["relevance_score"] for x in out["results"]]
        assert all(math.isfinite(s) for s in scores) and scores == sorted(scores, reverse=True)
        assert out["usage"]["prompt_tokens"] > 0
        cmdline = Path(f"/proc/{p.pid('smol-rank:latest')}/cmdline").read_bytes().split(b"\0")
        assert b"--rerank" in cmdline
        # the same file without rerank mode: refused before it starts, naming the config key that does it
        # (llama.cpp's own refusal says "start it with --reranking", a flag an ollamux user never passes)
        r = p.post("/v1/rerank", {"model": "smol", "query": "q", "documents": docs}, timeout=120)
        assert r.status_code == 400 and "runtime: {rerank: true}" in r.json()["error"]["message"], r.text
        # llama.cpp's own routes at the engine's root, and /upstream/ to it
        tokens = p.post("/tokenize", {"model": "smol-rank", "content": "hello world"}).json()["tokens"]
        assert tokens and all(isinstance(t, int) for t in tokens)
        text = p.post("/detokenize", {"model": "smol-rank", "tokens": tokens}).json()["content"]
        assert text.strip() == "hello world"
        assert httpx.get(p.url + "/upstream/smol-rank/health", timeout=10).json() == {"status": "ok"}
        models = httpx.get(p.url + "/upstream/smol-rank/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["smol-rank:latest"]  # the engine's own list (its --alias)
        # Jina's {"text": ...} documents pass ollamux's check; this llama.cpp takes strings only, and says so
        body = {"model": "smol-rank", "query": "q", "documents": ["hi", {"text": "pandas"}]}
        r = p.post("/v1/rerank", body)
        assert r.status_code == 400
        assert r.json()["error"]["message"] == '"documents" must be a non-empty string array'
        # chat still works in rerank mode
        chat = {"model": "smol-rank", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        assert p.post("/v1/chat/completions", chat).json()["choices"][0]["message"]["content"]
    finally:
        p.close()
