"""Parallel slots: how many requests a managed model serves at once, the context the engine gets for them,
and the config that sets it (runtime.parallel, a model's own, OLLAMA_NUM_PARALLEL)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from ollamux.backends.http import Clients, new_clients
from ollamux.config import ConfigError, RuntimeSpec, parse_settings
from ollamux.registry import Registry
from ollamux.runtime import engine
from ollamux.runtime.gguf_meta import DigestCache
from ollamux.runtime.manager import ModelManager
from ollamux.runtime.slots import DEFAULT_SLOTS, slots_for

from .runtime_helpers import link_into, model_file

xllamacpp = pytest.importorskip("xllamacpp")

BASE_ENV = {k: v for k, v in os.environ.items() if k != "OLLAMA_NUM_PARALLEL"}


def settings_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    return parse_settings(raw, {**BASE_ENV, **(env or {})})


def write_bert_gguf(path: Path) -> None:
    """The header of an embedding model (a BERT): what makes the catalogue call it embedding-only."""

    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<Q", len(b)) + b

    kv = s("general.architecture") + struct.pack("<I", 8) + s("bert")
    kv += s("bert.context_length") + struct.pack("<II", 4, 512)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + kv)


def manager_for(settings: Any, client: Clients, tmp: Path) -> ModelManager:
    registry = Registry(settings.models, settings.default_model)
    return ModelManager(settings, client, registry, {}, digest_cache=DigestCache(tmp / "digests.json"))


def engine_params(argv: list[str]) -> Any:
    i = argv.index("ollamux.runtime.engine")
    return engine.build_params(engine.build_parser().parse_args(argv[i + 1 :]))


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# ------------------------------------------------------------------------------------------- the rule
def test_chat_models_get_four_slots_embedding_rerank_and_cmd_one() -> None:
    chat = RuntimeSpec(gguf=Path("m.gguf"))
    assert slots_for(chat, None, embedding_only=False) == DEFAULT_SLOTS == 4
    assert slots_for(chat, 2, embedding_only=False) == 2  # runtime.parallel
    assert slots_for(chat, None, embedding_only=True) == 1
    assert slots_for(chat, 8, embedding_only=True) == 1  # the global default is for chat models only
    assert slots_for(RuntimeSpec(gguf=Path("m.gguf"), rerank=True), 8, embedding_only=False) == 1
    assert slots_for(RuntimeSpec(cmd=("srv",)), 8, embedding_only=False) == 1  # its command sets its slots
    # a model's own value wins over everything, either way
    assert slots_for(RuntimeSpec(gguf=Path("m.gguf"), parallel=1), 8, embedding_only=False) == 1
    assert slots_for(RuntimeSpec(gguf=Path("m.gguf"), parallel=3), None, embedding_only=True) == 3
    assert slots_for(RuntimeSpec(cmd=("srv",), parallel=2), None, embedding_only=False) == 2


# -------------------------------------------------------------------------------------------- config
def test_parallel_config_global_per_model_and_ollama_env() -> None:
    raw = {"runtime": {"parallel": 2}, "models": {"a": {"runtime": {"gguf": "a.gguf", "parallel": 1}}}}
    s = settings_of(raw)
    assert s.runtime.parallel == 2 and s.models[0].runtime is not None and s.models[0].runtime.parallel == 1
    plain = settings_of({"models": {"a": {"runtime": {"gguf": "a.gguf"}}}})
    assert plain.runtime.parallel is None and plain.models[0].runtime is not None
    assert plain.models[0].runtime.parallel is None  # unset: the rule decides when the model's file is known
    # Ollama's variable is the default when the config says nothing; the config wins over it
    assert settings_of({}, {"OLLAMA_NUM_PARALLEL": "3"}).runtime.parallel == 3
    assert settings_of({"runtime": {"parallel": 1}}, {"OLLAMA_NUM_PARALLEL": "3"}).runtime.parallel == 1
    for unset in ("0", "", " "):  # Ollama's 0 and empty mean its default
        assert settings_of({}, {"OLLAMA_NUM_PARALLEL": unset}).runtime.parallel is None


@pytest.mark.parametrize(
    ("raw", "env", "key"),
    [
        ({"runtime": {"parallel": 0}}, {}, "runtime.parallel"),
        ({"runtime": {"parallel": "four"}}, {}, "runtime.parallel"),
        ({"models": {"a": {"runtime": {"gguf": "a.gguf", "parallel": 0}}}}, {}, "models.a.runtime.parallel"),
        ({}, {"OLLAMA_NUM_PARALLEL": "four"}, "OLLAMA_NUM_PARALLEL"),
        ({}, {"OLLAMA_NUM_PARALLEL": "-1"}, "OLLAMA_NUM_PARALLEL"),
    ],
)
def test_bad_parallel_values_name_their_key(raw: dict[str, Any], env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_of(raw, env)
    assert err.value.key == key


# ------------------------------------------------------------------------------------ manager, engine
async def test_the_engine_gets_ctx_for_every_slot_in_one_unified_cache(tmp_path: Path) -> None:
    smol = link_into(tmp_path / "m", model_file(), "smol.gguf")
    bert = tmp_path / "m" / "bert.gguf"
    write_bert_gguf(bert)
    settings = settings_of(
        {
            "runtime": {"log_dir": str(tmp_path / "logs")},
            "models": {
                "chat": {"runtime": {"gguf": str(smol), "ctx": 512}},
                "one": {"runtime": {"gguf": str(smol), "ctx": 512, "parallel": 1}},
                "split": {"runtime": {"gguf": str(smol), "ctx": 512, "options": {"kv_unified": False}}},
                "embed": {"runtime": {"gguf": str(bert), "ctx": 512}},
                "rerank": {"runtime": {"gguf": str(smol), "ctx": 512, "rerank": True}},
            },
        }
    )
    async with new_clients() as client:
        m = manager_for(settings, client, tmp_path)
        await m.rescan()
        chat = m.models["runtime:chat"]
        argv = m._argv(chat, 1, 512)
        assert (flag(argv, "--ctx"), flag(argv, "--parallel")) == ("2048", "4")
        params = engine_params(argv)
        # one cache of 4 x 512 cells, each slot capped at the 512 a request is promised
        assert (params.n_ctx, params.n_parallel, params.kv_unified, params.kv_unified_per_slot) == (2048, 4, True, 512)
        one = engine_params(m._argv(m.models["runtime:one"], 1, 512))
        assert (one.n_ctx, one.n_parallel, one.kv_unified) == (512, 1, False)  # today's engine, unchanged
        split = engine_params(m._argv(m.models["runtime:split"], 1, 512))
        assert (split.n_ctx, split.n_parallel, split.kv_unified) == (2048, 4, False)  # the model's option wins
        embed = m.models["runtime:embed"]
        assert embed.embedding_only and m.slots_of(embed) == 1 and flag(m._argv(embed, 1, 512), "--parallel") == "1"
        assert m.slots_of(m.models["runtime:rerank"]) == 1
        await m.close()


async def test_a_models_folder_follows_runtime_parallel(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    link_into(folder, model_file(), "smol-Q4_1.gguf")
    write_bert_gguf(folder / "bert-F16.gguf")
    settings = settings_of(
        {"runtime": {"log_dir": str(tmp_path / "logs"), "models_dir": str(folder), "parallel": 2, "ctx": 1024}}
    )
    async with new_clients() as client:
        m = manager_for(settings, client, tmp_path)
        await m.rescan()
        by_name = {mm.name: mm for mm in m.models.values()}
        smol = next(v for k, v in by_name.items() if k.startswith("smol"))
        bert = next(v for k, v in by_name.items() if k.startswith("bert"))
        assert m.slots_of(smol) == 2 and flag(m._argv(smol, 1, 1024), "--ctx") == "2048"
        assert m.slots_of(bert) == 1  # runtime.parallel is the chat models' default
        await m.close()
