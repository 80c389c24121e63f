"""The memory budget: the resident-memory estimate and the eviction policy under a budget (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollamux.config import ConfigError
from ollamux.config.parse import parse_settings
from ollamux.runtime.gguf_meta import read_gguf
from ollamux.runtime.memory import OVERHEAD, KVShape, bytes_per_element, estimate, kv_cache_bytes, kv_shape
from ollamux.runtime.policy import Candidate, Decision, Shortfall, plan_start
from ollamux.runtime.state import Phase

from .runtime_helpers import model_file

MiB = 1024 * 1024
GiB = 1024 * MiB

# a llama-like 8B header: 32 layers, 4096 wide, 32 heads of 128, 8 KV heads
LLAMA8B = {
    "llama.block_count": 32,
    "llama.embedding_length": 4096,
    "llama.attention.head_count": 32,
    "llama.attention.head_count_kv": 8,
}


def test_kv_shape_from_a_synthetic_header() -> None:
    assert kv_shape(LLAMA8B, "llama") == KVShape(n_layer=32, n_embd_k=1024, n_embd_v=1024)
    # explicit key/value lengths win over embedding_length / head_count (gemma-like)
    kv = {**LLAMA8B, "llama.attention.key_length": 256, "llama.attention.value_length": 128}
    assert kv_shape(kv, "llama") == KVShape(n_layer=32, n_embd_k=2048, n_embd_v=1024)
    # no head_count_kv: every head has its own K and V
    assert kv_shape({k: v for k, v in LLAMA8B.items() if "kv" not in k}, "llama") == KVShape(32, 4096, 4096)
    assert kv_shape({"llama.block_count": 32}, "llama") is None  # not enough to say
    assert kv_shape(LLAMA8B, "qwen2") is None  # the keys are the architecture's


def test_kv_cache_bytes_f16_and_quantized() -> None:
    shape = kv_shape(LLAMA8B, "llama")
    assert shape is not None
    # 2 (K and V) * 32 layers * 8192 positions * 1024 * 2 bytes = 1 GiB, llama.cpp's figure for Llama 3 8B
    assert kv_cache_bytes(shape, 8192) == 1 * GiB
    q8 = {"cache_type_k": "GGML_TYPE_Q8_0", "cache_type_v": "GGML_TYPE_Q8_0"}
    assert kv_cache_bytes(shape, 8192, q8) == int(GiB * 1.0625 / 2)
    assert kv_cache_bytes(shape, 8192, {"cache_type_k": "q4_0"}) == int(32 * 8192 * 1024 * (0.5625 + 2))
    assert bytes_per_element("GGML_TYPE_F32") == 4.0 and bytes_per_element(None) == 2.0
    assert bytes_per_element("something-new") == 2.0  # unknown: f16, the default


def test_estimate_adds_file_kv_and_overhead() -> None:
    shape = KVShape(n_layer=2, n_embd_k=10, n_embd_v=10)
    assert estimate(1000, shape, 100) == 1000 + 2 * 100 * 20 * 2 + OVERHEAD
    assert estimate(1000, None, 100) == 1000 + OVERHEAD  # header unknown: the file and the overhead


def test_estimate_of_the_real_smollm2_matches_the_measured_rss() -> None:
    info = read_gguf(model_file())
    shape = kv_shape(info.kv, info.architecture)
    assert shape == KVShape(n_layer=30, n_embd_k=192, n_embd_v=192)
    assert kv_cache_bytes(shape, 4096) == 30 * 4096 * 192 * 2 * 2  # 90 MiB
    # VmRSS measured (memory.py's docstring): 198,416 kB at ctx 512, 278,832 kB at ctx 4096; the estimate
    # is never below it and not far above it
    for ctx, rss_kb in ((512, 198_416), (4096, 278_832)):
        est = estimate(info.size, shape, ctx)
        assert rss_kb * 1024 <= est <= rss_kb * 1024 + 128 * MiB


def test_memory_budget_config() -> None:
    assert parse_settings({}, {}).runtime.memory_budget is None
    assert parse_settings({"runtime": {"memory_budget": "12GiB"}}, {}).runtime.memory_budget == 12 * GiB
    assert parse_settings({"runtime": {"memory_budget": "1.5 GB"}}, {}).runtime.memory_budget == 1_500_000_000
    assert parse_settings({"runtime": {"memory_budget": "512MiB"}}, {}).runtime.memory_budget == 512 * MiB
    assert parse_settings({"runtime": {"memory_budget": 2 * GiB}}, {}).runtime.memory_budget == 2 * GiB
    with pytest.raises(ConfigError, match=r"runtime\.memory_budget: must be at least"):
        parse_settings({"runtime": {"memory_budget": "12"}}, {})  # 12 bytes: surely meant GiB
    with pytest.raises(ConfigError, match="size like 12GiB"):
        parse_settings({"runtime": {"memory_budget": "twelve gigs"}}, {})


# ---------------------------------------------------------------------------------------------- policy
def c(name: str, mem: int, *, last_used: float = 0.0, busy: bool = False, pinned: bool = False,
      phase: Phase = Phase.READY) -> Candidate:  # fmt: skip
    return Candidate(name=name, phase=phase, busy=busy, last_used=last_used, pinned=pinned, memory=mem * GiB)


def plan(models: list[Candidate], need: int, budget: int = 12, max_running: int = 8) -> Decision:
    return plan_start(models, max_running, "new", budget=budget * GiB, need=need * GiB)


def test_it_starts_when_it_fits() -> None:
    assert plan([c("a", 4), c("b", 4)], 4) == Decision(start=True)
    assert plan_start([c("a", 40)], 8, "new", need=40 * GiB) == Decision(start=True)  # no budget: slots only


def test_idle_models_are_evicted_least_recently_used_first_until_it_fits() -> None:
    models = [c("a", 4, last_used=5), c("b", 4, last_used=1), c("c", 4, last_used=3)]
    assert plan(models, 4) == Decision(start=False, evict="b")
    # the manager stops b and asks again: then c, the next least recently used
    rest = [models[0], models[2]]
    assert plan([*rest, c("b", 4, phase=Phase.STOPPING)], 8) == Decision(start=False, evict="c")
    assert plan([models[0]], 8) == Decision(start=True)


def test_pinned_and_busy_models_are_never_evicted() -> None:
    models = [c("p", 4, pinned=True), c("busy", 4, busy=True, last_used=0), c("idle", 4, last_used=9)]
    assert plan(models, 4) == Decision(start=False, evict="idle")
    assert plan(models[:2], 4) == Decision(start=True)  # 8 + 4 fits 12


def test_a_stopping_model_is_waited_for() -> None:
    assert plan([c("a", 10, phase=Phase.STOPPING)], 4) == Decision(start=False)


def test_refused_when_busy_or_pinned_models_hold_the_memory() -> None:
    models = [c("p", 6, pinned=True), c("busy", 4, busy=True), c("idle", 1, last_used=1)]
    d = plan(models, 4)
    # evicting idle (1 GiB) would not make room: nothing is stopped for nothing
    assert d.start is False and d.evict is None
    assert d.short == Shortfall(
        need=4 * GiB,
        budget=12 * GiB,
        in_use=(("p", 6 * GiB, "pinned"), ("busy", 4 * GiB, "busy"), ("idle", GiB, "idle")),
    )
    starting = plan([c("s", 10, phase=Phase.STARTING)], 4)
    assert starting.short is not None and starting.short.in_use == (("s", 10 * GiB, "starting"),)


def test_one_model_bigger_than_the_budget_runs_alone() -> None:
    assert plan([], 20) == Decision(start=True, over_budget=True)
    # idle models go first, then it starts alone
    assert plan([c("a", 2, last_used=1), c("b", 2, last_used=2)], 20) == Decision(start=False, evict="a")
    assert plan([c("a", 2, phase=Phase.STOPPING)], 20) == Decision(start=False)  # wait until it is gone
    # but not beside a busy model
    d = plan([c("busy", 1, busy=True)], 20)
    assert d.short is not None and not d.start


def test_max_running_still_applies_under_a_budget() -> None:
    models = [c("a", 1, last_used=2), c("b", 1, last_used=1)]
    assert plan(models, 1, max_running=2) == Decision(start=False, evict="b")
    assert plan([c("a", 1, busy=True), c("b", 1, busy=True)], 1, max_running=2) == Decision(start=False)


async def test_the_estimate_counts_every_slot_and_the_budget_plans_with_it(tmp_path: Path) -> None:
    from ollamux.backends.http import new_clients
    from ollamux.registry import Registry
    from ollamux.runtime.gguf_meta import DigestCache
    from ollamux.runtime.manager import ModelManager

    smol = model_file()
    raw = {
        "runtime": {"log_dir": str(tmp_path / "logs"), "memory_budget": "512MiB"},
        "models": {
            "four": {"runtime": {"gguf": str(smol), "ctx": 4096}},  # the default: 4 slots
            "one": {"runtime": {"gguf": str(smol), "ctx": 4096, "parallel": 1}},
        },
    }
    settings = parse_settings(raw, {})
    async with new_clients() as client:
        m = ModelManager(
            settings, client, Registry(settings.models, None), {}, digest_cache=DigestCache(tmp_path / "d")
        )
        await m.rescan()
        four, one = m.models["runtime:four"], m.models["runtime:one"]
        size, kv = four.size, four.kv
        assert kv is not None and size > 0
        # the engine runs ctx x slots positions: the KV term is four requests' worth, the rest is unchanged
        assert m.memory_of(four) == estimate(size, kv, 4 * 4096) == m.memory_of(one) + kv_cache_bytes(kv, 3 * 4096)
        assert m.memory_of(one) == estimate(size, kv, 4096)
        assert m.memory_of(four, 8192) == estimate(size, kv, 4 * 8192)  # a request's larger num_ctx, every slot
        # 512 MiB holds SmolLM2 with one slot of 4096 (~376 MiB) but not with four (~646 MiB): the budget sees it
        assert m.memory_of(one) < 512 * MiB < m.memory_of(four)
        assert m._plan("runtime:one") == Decision(start=True)
        assert m._plan("runtime:four") == Decision(start=True, over_budget=True)  # alone it runs, with a warning
        await m.close()
