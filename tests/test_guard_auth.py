"""Inbound API keys on both APIs: 401 without a valid key, 403 for a model the key may not use,
each in the client's own envelope, with the official `ollama` and `openai` clients as the oracle."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from ollamux.config import ConfigError, parse_settings

from .conftest import ProxyFactory, basic_config
from .fakes.openai_upstream import FakeOpenAI

ALICE = "sk-alice-0123456789abcdef"
BOB = "sk-bob-fedcba9876543210"
CAROL = "carol-key-given-as-a-hash"
HI = [{"role": "user", "content": "hi"}]


def keyed_config(upstream: str, **limits: Any) -> dict[str, Any]:
    cfg = basic_config(upstream)
    cfg["auth"] = {
        "keys": {
            "alice": {"key": ALICE, "models": ["fake-model"]},  # one model (and its alias fm:7b)
            "bob": {"key": BOB},  # every model
            "carol": {"key_sha256": hashlib.sha256(CAROL.encode()).hexdigest(), "models": ["x-*"]},
        }
    }
    if limits:
        cfg["limits"] = limits
    return cfg


@pytest.fixture
def keyed(fake_openai: tuple[FakeOpenAI, str], start_proxy: ProxyFactory) -> str:
    return start_proxy(keyed_config(fake_openai[1]))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _ollama(url: str, key: str | None) -> ollama.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return ollama.Client(host=url, headers=headers)


def _openai(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_no_keys_means_open(proxy: str, http: httpx.Client) -> None:
    r = http.post(proxy + "/api/chat", json={"model": "tools", "messages": HI, "stream": False})
    assert r.status_code == 200
    r = http.post(proxy + "/v1/chat/completions", json={"model": "fake-model", "messages": HI})
    assert r.status_code == 200


def test_missing_and_wrong_key_are_401_in_each_envelope(keyed: str, http: httpx.Client) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer sk-wrong-key-000000"},
        {"x-api-key": "nope"},
        {"Authorization": "Basic YWxpY2U6eA=="},
        {"Authorization": "Bearer"},
    ):
        r = http.post(keyed + "/api/chat", json={"model": "fake-model", "messages": HI}, headers=headers)
        assert r.status_code == 401, headers
        assert set(r.json()) == {"error"} and "API key" in r.json()["error"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = http.post(keyed + "/v1/chat/completions", json={"model": "fake-model", "messages": HI}, headers=headers)
        assert r.status_code == 401
        err = r.json()["error"]
        assert err["type"] == "authentication_error" and "API key" in err["message"]
        assert err["code"] in ("missing_api_key", "invalid_api_key")
    # nothing of a presented key is echoed back
    r = http.post(keyed + "/api/tags", headers={"Authorization": "Bearer sk-wrong-key-000000"})
    assert "sk-wrong" not in r.text
    # every non-public route needs a key, listing ones too; the banner, version and health do not
    assert http.get(keyed + "/api/tags").status_code == 401
    assert http.get(keyed + "/v1/models").status_code == 401
    assert http.get(keyed + "/").text == "Ollama is running"
    assert http.get(keyed + "/api/version").status_code == 200
    assert http.get(keyed + "/health").status_code == 200


def test_official_clients_401(keyed: str) -> None:
    c = _ollama(keyed, None)
    with pytest.raises(ollama.ResponseError) as ei:
        c.chat(model="fake-model", messages=HI)
    assert ei.value.status_code == 401 and "API key" in ei.value.error
    c._client.close()
    o = _openai(keyed, "sk-not-a-key-at-all")
    with pytest.raises(openai.AuthenticationError) as oe:
        o.chat.completions.create(model="fake-model", messages=HI)  # type: ignore[arg-type]
    assert "invalid API key" in str(oe.value)
    o.close()


def test_key_allowed_one_model_and_refused_another(keyed: str) -> None:
    c = _ollama(keyed, ALICE)
    try:
        assert c.chat(model="fake-model", messages=HI).message.content == "Hello from the fake!"
        assert c.chat(model="FM:7b", messages=HI).message.content  # an alias is the same model
        parts = list(c.chat(model="fake-model", messages=HI, stream=True))
        assert parts[-1].done
        for model in ("tools", "llama3.2", "x-anything"):
            with pytest.raises(ollama.ResponseError) as ei:
                c.chat(model=model, messages=HI)
            assert ei.value.status_code == 403
            assert ei.value.error == f"API key 'alice' may not use model '{model}'"
        with pytest.raises(ollama.ResponseError) as ei:
            c.generate(model="tools", prompt="hi")
        assert ei.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as ei:
            c.embed(model="embed-model", input="hi")
        assert ei.value.status_code == 403
    finally:
        c._client.close()
    o = _openai(keyed, ALICE)
    try:
        r = o.chat.completions.create(model="fake-model", messages=HI)  # type: ignore[arg-type]
        assert r.choices[0].message.content == "Hello from the fake!"
        with pytest.raises(openai.PermissionDeniedError) as pe:
            o.chat.completions.create(model="tools", messages=HI)  # type: ignore[arg-type]
        body: Any = pe.value.body
        assert body["type"] == "permission_error" and body["code"] == "model_not_allowed"
        with pytest.raises(openai.PermissionDeniedError):
            o.embeddings.create(model="embed-model", input="hi")
    finally:
        o.close()


def test_listings_show_only_the_models_a_key_may_use(keyed: str) -> None:
    c = _ollama(keyed, ALICE)
    o = _openai(keyed, ALICE)
    try:
        assert [m.model for m in c.list().models] == ["fake-model:latest"]
        assert [m.id for m in o.models.list()] == ["fake-model"]
        assert o.models.retrieve("fm:7b").id == "fm:7b"
        with pytest.raises(openai.PermissionDeniedError):
            o.models.retrieve("tools")
        assert c.pull("fake-model").status == "success"
        with pytest.raises(ollama.ResponseError) as ei:
            c.pull("tools")
        assert ei.value.status_code == 403
    finally:
        c._client.close()
        o.close()
    b = _ollama(keyed, BOB)  # every model
    try:
        assert {"fake-model:latest", "tools:latest", "llama3.2:latest"} <= {m.model for m in b.list().models}
    finally:
        b._client.close()


def test_x_api_key_hashed_key_and_wildcards(keyed: str, http: httpx.Client) -> None:
    # carol's key is configured only as its sha256; she may use x-* models and nothing else
    r = http.post(
        keyed + "/api/chat",
        json={"model": "x-fake-model", "messages": HI, "stream": False},
        headers={"x-api-key": CAROL},
    )
    assert r.status_code == 200, r.text
    r = http.post(
        keyed + "/v1/chat/completions", json={"model": "fake-model", "messages": HI}, headers={"x-api-key": CAROL}
    )
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    # bob may use everything
    for model in ("tools", "llama3.2", "x-other"):
        r = http.post(
            keyed + "/api/chat",
            json={"model": model, "messages": HI, "stream": False},
            headers={"Authorization": f"bearer {BOB}"},
        )
        assert r.status_code == 200, (model, r.text)


def test_client_key_is_not_forwarded_upstream(keyed: str, fake_openai: tuple[FakeOpenAI, str]) -> None:
    fake = fake_openai[0]
    c = _ollama(keyed, BOB)
    try:
        c.chat(model="fake-model", messages=HI)
    finally:
        c._client.close()
    assert fake.last("/chat/completions").headers.get("Authorization") == "Bearer sk-backend-secret"
    o = _openai(keyed, BOB)
    try:
        o.chat.completions.create(model="fake-model", messages=HI)  # type: ignore[arg-type]
    finally:
        o.close()
    sent = fake.last("/chat/completions").headers
    assert BOB not in str(sent)


def test_unknown_model_is_404_not_403_only_after_auth(keyed: str, http: httpx.Client) -> None:
    r = http.post(keyed + "/api/chat", json={"model": "nope", "messages": HI}, headers={"x-api-key": ALICE})
    assert r.status_code == 404  # the key is valid; the model does not exist
    r = http.post(keyed + "/api/chat", json={"model": "nope", "messages": HI})
    assert r.status_code == 401  # no key: nothing about models is revealed


@pytest.mark.parametrize(
    ("keys", "where", "what"),
    [
        ({"a": {"key": "short"}}, "auth.keys.a.key", "too short"),
        ({"a": {}}, "auth.keys.a", "exactly one"),
        ({"a": {"key": "x" * 20, "key_sha256": "0" * 64}}, "auth.keys.a", "exactly one"),
        ({"a": {"key_sha256": "xyz"}}, "auth.keys.a.key_sha256", "64 hex"),
        ({"a": {"key": "x" * 20}, "b": {"key": "x" * 20}}, "auth.keys.b", "same key as 'a'"),
        ({"a": {"key": "x" * 20, "rate": 3}}, "auth.keys.a.rate", "unknown key"),
        ({"a": {"key": "x" * 20, "requests_per_minute": "lots"}}, "auth.keys.a.requests_per_minute", "number"),
    ],
)
def test_config_errors_name_the_key(keys: dict[str, Any], where: str, what: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_settings({"auth": {"keys": keys}}, {})
    assert ei.value.key == where and what in ei.value.message


def test_key_from_environment_and_not_in_settings_repr() -> None:
    s = parse_settings({"auth": {"keys": {"k": {"key": "${MY_KEY}"}}}}, {"MY_KEY": "sk-from-env-123456"})
    assert s.auth.keys[0].sha256 == hashlib.sha256(b"sk-from-env-123456").digest()
    assert "sk-from-env" not in repr(s) and os.environ.get("MY_KEY") is None
