"""llama.cpp server options, vision projectors and GPU offload: pure checks, and the engine's params built from them.

No small vision GGUF is available offline, so the projector is a stand-in file: what is tested is that the
manager pairs it with the model, lists "vision", and hands it to the engine, whose `CommonParams` then name
it (`build_params`, the function the engine process runs before llama.cpp loads anything).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ollamux.backends.http import Clients, new_clients
from ollamux.config import ConfigError, parse_settings
from ollamux.registry import Registry
from ollamux.runtime import engine
from ollamux.runtime.engine_options import OptionError, apply_options, check_options, flatten, load_params
from ollamux.runtime.gguf_meta import DigestCache
from ollamux.runtime.manager import ModelManager
from ollamux.runtime.vision import is_mmproj, pair_mmproj
from ollamux.runtime.vram import offloaded_bytes

from .runtime_helpers import link_into, model_file

xllamacpp = pytest.importorskip("xllamacpp")


# ------------------------------------------------------------------------------------------- options
def test_options_are_checked_and_normalized_against_the_installed_binding() -> None:
    opts = {
        "n_gpu_layers": 99,
        "flash_attn": True,
        "cache_type_k": "q8_0",
        "cache_type_v": "Q4_0",
        "n_batch": 512,
        "reasoning_format": "deepseek",
        "rope_freq_scale": 1,  # an int is a fine float
        "sampling": {"top_k": 20},
        "speculative.draft.n_max": 4,
        "threads": 2,
    }
    got = check_options(opts, load_params())
    assert got == {
        "n_gpu_layers": 99,
        "flash_attn_type": "LLAMA_FLASH_ATTN_TYPE_ENABLED",
        "cache_type_k": "GGML_TYPE_Q8_0",
        "cache_type_v": "GGML_TYPE_Q4_0",
        "n_batch": 512,
        "reasoning_format": "COMMON_REASONING_FORMAT_DEEPSEEK",
        "rope_freq_scale": 1.0,
        "sampling.top_k": 20,
        "speculative.draft.n_max": 4,
        "cpuparams.n_threads": 2,
    }
    p = xllamacpp.CommonParams()
    apply_options(p, got)
    assert p.flash_attn_type == xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED
    assert p.cache_type_k == xllamacpp.ggml_type.GGML_TYPE_Q8_0
    assert (p.n_batch, p.n_gpu_layers, p.sampling.top_k, p.speculative.draft.n_max) == (512, 99, 20, 4)
    assert p.cpuparams.n_threads == 2 and p.rope_freq_scale == 1.0


@pytest.mark.parametrize(
    ("opts", "key", "message"),
    [
        ({"n_batchh": 1}, "n_batchh", "not an option"),
        ({"n_batch": "big"}, "n_batch", "must be an integer"),
        ({"n_batch": True}, "n_batch", "must be an integer"),
        ({"cont_batching": 1}, "cont_batching", "true or false"),
        ({"cache_type_k": "q9_9"}, "cache_type_k", "must be one of f32, f16, q4_0"),
        ({"flash_attn": "sometimes"}, "flash_attn", "auto, disabled, enabled"),
        ({"n_ctx": 8192}, "n_ctx", "use runtime.ctx"),
        ({"model": {"path": "x"}}, "model.path", "use runtime.gguf"),
        ({"sampling": 3}, "sampling", "set its fields"),
        ({"cpuparams.nope": 3}, "cpuparams.nope", "not an option"),
        ({"n_batch.x": 3}, "n_batch.x", "not a group"),
        ({"tensor_split": 0.5}, "tensor_split", "list option"),
    ],
)
def test_bad_options_name_the_option(opts: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(OptionError) as e:
        check_options(opts, load_params())
    assert e.value.key == key and message in e.value.message


def test_flatten_nested_and_dotted_alike() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e.f": 3}) == {"a.b": 1, "a.c.d": 2, "e.f": 3}


def test_options_without_the_binding_pass_unchecked_but_reserved_ones_fail() -> None:
    assert check_options({"n_batch": 3}, None) == {"n_batch": 3}
    with pytest.raises(OptionError, match=r"runtime\.parallel"):
        check_options({"n_parallel": 2}, None)


def config(runtime: dict[str, Any], top: dict[str, Any] | None = None) -> Any:
    return parse_settings({"models": {"m": {"runtime": runtime}}, "runtime": top or {}}, {})


def test_config_error_has_the_key_path() -> None:
    with pytest.raises(ConfigError) as e:
        config({"gguf": "/x.gguf", "options": {"sampling": {"top_kk": 1}}})
    assert e.value.key == "models.m.runtime.options.sampling.top_kk"
    with pytest.raises(ConfigError) as e:
        config({"gguf": "/x.gguf"}, {"options": {"flash_attn": "maybe"}})
    assert e.value.key == "runtime.options.flash_attn"
    with pytest.raises(ConfigError, match="a 'cmd' takes its own flags"):
        config({"cmd": ["srv"], "options": {"n_batch": 1}})
    with pytest.raises(ConfigError, match=r"models\.m\.runtime\.options: must be a mapping"):
        config({"gguf": "/x.gguf", "options": [1]})
    with pytest.raises(ConfigError, match=r"models\.m\.runtime\.mmproj"):
        config({"gguf": "/x.gguf", "mmproj": True})


def test_config_keeps_normalized_options_and_residency_keys() -> None:
    s = config(
        {"gguf": "/x.gguf", "options": {"n_batch": 256, "flash_attn": False}, "pin": True, "mmproj": "/p.gguf"},
        {"preload": ["m"], "pin": ["other:q4"], "groups": {"pair": {"members": ["m", "n"], "exclusive": True}}},
    )
    spec = s.models[0].runtime
    assert spec.options == (("flash_attn_type", "LLAMA_FLASH_ATTN_TYPE_DISABLED"), ("n_batch", 256))
    assert spec.pin and spec.mmproj == Path("/p.gguf") and not spec.no_mmproj
    assert s.runtime.preload == ("m",) and s.runtime.pin == ("other:q4",)
    (g,) = s.runtime.groups
    assert (g.name, g.members, g.exclusive) == ("pair", ("m", "n"), True)
    assert config({"gguf": "/x.gguf", "mmproj": False}).models[0].runtime.no_mmproj
    with pytest.raises(ConfigError, match=r"runtime\.groups\.pair\.members"):
        config({"gguf": "/x.gguf"}, {"groups": {"pair": {"members": []}}})


# -------------------------------------------------------------------------------------------- vision
def test_mmproj_pairing_rules() -> None:
    gemma = "gemma-3-4b-it-Q4_K_M.gguf"
    # the stem in the projector's name pairs them, even in a shared folder
    assert pair_mmproj(gemma, [gemma, "mmproj-gemma-3-4b-it-f16.gguf", "other.gguf"], shared=True) == (
        "mmproj-gemma-3-4b-it-f16.gguf"
    )
    # a shared folder of several models: an unnamed projector belongs to none of them
    assert pair_mmproj("a.gguf", ["a.gguf", "mmproj-x.gguf", "b.gguf"], shared=True) is None
    # a folder of one model: its projector, the first by name, whatever the quantizations beside it
    files = ["a-Q4_K_M.gguf", "a-Q8_0.gguf", "mmproj-F32.gguf", "mmproj-F16.gguf"]
    assert pair_mmproj("a-Q8_0.gguf", files, shared=False) == "mmproj-F16.gguf"
    assert pair_mmproj("a.gguf", ["a.gguf", "mmproj.gguf"], shared=True) == "mmproj.gguf"  # alone: it is its
    assert pair_mmproj("a.gguf", ["a.gguf", "b.gguf"], shared=False) is None
    assert pair_mmproj("mmproj-a.gguf", ["mmproj-a.gguf"], shared=False) is None  # a projector has none
    assert is_mmproj("model.mmproj-f16.gguf") and is_mmproj("MMPROJ.gguf") and not is_mmproj("mmproj.bin")


@pytest.fixture
def smol() -> Path:
    return model_file()


def manager_for(settings: Any, client: Clients, tmp: Path) -> ModelManager:
    registry = Registry(settings.models, settings.default_model)
    return ModelManager(settings, client, registry, {}, digest_cache=DigestCache(tmp / "digests.json"))


def engine_params(argv: list[str]) -> Any:
    """What the engine process would hand llama.cpp for this argv (its own parser and `build_params`)."""
    i = argv.index("ollamux.runtime.engine")
    return engine.build_params(engine.build_parser().parse_args(argv[i + 1 :]))


async def test_a_configured_model_with_a_projector_beside_it_loads_it(smol: Path, tmp_path: Path) -> None:
    gguf = link_into(tmp_path / "vis", smol)
    proj = tmp_path / "vis" / "mmproj-SmolLM2-135M-Instruct-f16.gguf"
    proj.write_bytes(b"GGUF stand-in")
    settings = parse_settings(
        {
            "runtime": {"log_dir": str(tmp_path / "logs")},
            "models": {
                "vis": {"runtime": {"gguf": str(gguf), "options": {"n_batch": 256, "cache_type_k": "q8_0"}}},
                "blind": {"runtime": {"gguf": str(gguf), "mmproj": False}},
                "two": {"runtime": {"gguf": str(gguf), "parallel": 2}},
            },
        },
        dict(os.environ),
    )
    async with new_clients() as client:
        m = manager_for(settings, client, tmp_path)
        await m.rescan()
        model = m.models["runtime:vis"]
        assert model.mmproj == proj
        assert "vision" in m.probed[("runtime:vis", "vis")]["capabilities"]
        argv = m._argv(model, 12345, 512)
        assert argv[argv.index("--mmproj") + 1] == str(proj)
        params = engine_params(argv)
        assert params.mmproj.path == str(proj) and params.model.path == str(gguf)
        assert params.n_batch == 256 and params.cache_type_k == xllamacpp.ggml_type.GGML_TYPE_Q8_0
        # ollamux's own stay: 512 for each of the 4 default slots, and the embedding batch
        assert params.n_ctx == 4 * 512 and params.n_ubatch == engine.EMBED_BATCH
        blind = m.models["runtime:blind"]
        assert blind.mmproj is None and "--mmproj" not in m._argv(blind, 1, 512)
        assert "vision" not in m.probed[("runtime:blind", "blind")]["capabilities"]
        assert engine_params(m._argv(blind, 1, 512)).mmproj.path == ""
        # every slot gets the whole context: llama.cpp divides n_ctx among them
        two = m.models["runtime:two"]
        params = engine_params(m._argv(two, 1, 512))
        assert (params.n_ctx, params.n_parallel) == (1024, 2)
        await m.close()


async def test_a_pulled_repo_folder_pairs_its_projector(smol: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models" / "hf.co" / "user" / "Vis-GGUF"
    link_into(repo, smol, "vis-Q4_1.gguf")
    (repo / "mmproj-model-f16.gguf").write_bytes(b"stand-in")
    link_into(tmp_path / "models", smol, "plain-Q4_1.gguf")
    (tmp_path / "models" / "mmproj-unrelated.gguf").write_bytes(b"stand-in")
    link_into(tmp_path / "models", smol, "other-Q4_1.gguf")
    settings = parse_settings(
        {"runtime": {"log_dir": str(tmp_path / "logs"), "models_dir": str(tmp_path / "models")}}, dict(os.environ)
    )
    async with new_clients() as client:
        m = manager_for(settings, client, tmp_path)
        await m.rescan()
        vis = m.models["runtime:hf.co/user/Vis-GGUF:Q4_1"]
        assert vis.mmproj == repo / "mmproj-model-f16.gguf" and "vision" in vis.entry.meta["capabilities"]
        plain = m.models["runtime:plain:q4_1"]  # the shared folder's unnamed projector is nobody's
        assert plain.mmproj is None and "vision" not in plain.entry.meta["capabilities"]
        await m.close()


# --------------------------------------------------------------------------------------------- GPU
def test_offloaded_bytes_estimate() -> None:
    assert offloaded_bytes(1000, 29, 99, gpu=False) == 0  # a CPU build offloads nothing
    assert offloaded_bytes(1000, 29, 0, gpu=True) == 0
    assert offloaded_bytes(1000, 29, -1, gpu=True) == 1000  # llama.cpp's default: all that fit
    assert offloaded_bytes(1000, 29, 99, gpu=True) == 1000
    assert offloaded_bytes(1000, 29, 15, gpu=True) == 500  # 15 of 29 blocks + the output layer
    assert offloaded_bytes(1000, None, 15, gpu=True) == 0  # layer count unknown: claim nothing


def test_this_cpu_build_has_no_gpu() -> None:
    from ollamux.runtime.vram import gpu_available

    devices = xllamacpp.get_device_info()
    assert gpu_available() == any(int(d["type"]) in (1, 2) for d in devices)
