"""The managed-model state machine and the pure helpers of the runtime (no processes, no sockets)."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest

from ollamux.runtime.gguf_meta import DigestCache, read_gguf
from ollamux.runtime.models_dir import model_name, scan
from ollamux.runtime.state import Event, InvalidTransition, ModelState, Phase, RestartPolicy, next_phase

LEGAL = {
    (Phase.STOPPED, Event.START): Phase.STARTING,
    (Phase.FAILED, Event.START): Phase.STARTING,
    (Phase.STARTING, Event.READY): Phase.READY,
    (Phase.STARTING, Event.DIED): Phase.FAILED,
    (Phase.STARTING, Event.TIMEOUT): Phase.FAILED,
    (Phase.STARTING, Event.STOP): Phase.STOPPING,
    (Phase.READY, Event.DIED): Phase.FAILED,
    (Phase.READY, Event.STOP): Phase.STOPPING,
    (Phase.STOPPING, Event.EXITED): Phase.STOPPED,
    (Phase.STOPPING, Event.DIED): Phase.STOPPED,
    (Phase.FAILED, Event.STOP): Phase.STOPPED,
}


@pytest.mark.parametrize(("phase", "event"), list(itertools.product(Phase, Event)))
def test_every_transition_is_in_the_table_or_refused(phase: Phase, event: Event) -> None:
    if (phase, event) in LEGAL:
        assert next_phase(phase, event) is LEGAL[(phase, event)]
    else:
        with pytest.raises(InvalidTransition):
            next_phase(phase, event)


def test_a_ready_model_cannot_start_twice() -> None:
    s = ModelState()
    s.apply(Event.START)
    with pytest.raises(InvalidTransition):
        s.apply(Event.START)  # a second process for one model is a bug, not a race to win
    s.apply(Event.READY)
    with pytest.raises(InvalidTransition):
        s.apply(Event.START)


def test_full_life_and_generations() -> None:
    s = ModelState()
    assert s.apply(Event.START) is Phase.STARTING and s.generation == 1
    assert s.holds_slot
    assert s.apply(Event.READY) is Phase.READY
    assert s.apply(Event.DIED) is Phase.FAILED and not s.holds_slot
    assert s.apply(Event.START) is Phase.STARTING and s.generation == 2  # the next request restarts it
    s.apply(Event.READY)
    assert s.apply(Event.STOP) is Phase.STOPPING and s.holds_slot  # its memory is not free yet
    assert s.apply(Event.EXITED) is Phase.STOPPED and not s.holds_slot


def test_request_counts() -> None:
    s = ModelState()
    assert not s.busy
    s.waiting += 1
    assert s.busy
    s.waiting -= 1
    s.begin(10.0)
    s.begin(11.0)
    assert s.busy and s.active == 2 and s.last_used == 11.0
    s.end(12.0)
    s.end(13.0)
    assert not s.busy and s.last_used == 13.0
    with pytest.raises(RuntimeError):
        s.end(14.0)


def test_restart_backoff_doubles_up_to_the_cap() -> None:
    p = RestartPolicy()
    assert [p.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert p.delay(10_000) == 60  # no overflow however long it keeps failing


def _crashed(s: ModelState, now: float, p: RestartPolicy) -> float:
    s.apply(Event.DIED)
    return s.crashed(now, p)


def test_recovery_status_and_backoff_bookkeeping() -> None:
    p = RestartPolicy(first=1, cap=60, healthy=60, fail_after=3)
    s = ModelState()
    s.apply(Event.START)
    s.apply(Event.READY)
    s.ready_at = 0.0
    assert s.status(p) == "ready"
    assert _crashed(s, 5.0, p) == 1 and s.status(p) == "restarting"
    assert s.apply(Event.START) is Phase.STARTING and s.restarts == 1 and s.status(p) == "restarting"
    for n in (1, 2):  # restarts that die while loading: still restarting, each wait twice as long
        s.apply(Event.DIED)
        assert s.failed_restarts == n and s.status(p) == "restarting" and p.delay(s.restarts) == 2**n
        s.apply(Event.START)
    s.apply(Event.TIMEOUT)  # the third in a row: it keeps failing
    assert s.failed_restarts == 3 and s.status(p) == "failed"
    s.apply(Event.START)
    assert s.status(p) == "failed"  # no flapping to "restarting" while it tries again
    s.apply(Event.READY)
    s.ready_at = 100.0
    assert s.status(p) == "ready" and not s.recovering and s.failed_restarts == 0 and s.restarts == 4
    assert _crashed(s, 110.0, p) == 16  # it did not last: the backoff goes on where it was
    s.apply(Event.START)
    s.apply(Event.READY)
    s.ready_at = 200.0
    assert _crashed(s, 260.0, p) == 1  # it ran healthily for a minute: the series starts over


def test_only_a_crash_with_restarts_recovers() -> None:
    p = RestartPolicy()
    s = ModelState()
    s.apply(Event.START)
    s.apply(Event.DIED)  # a start that failed is reported to its request, and not retried
    assert s.status(p) == "failed" and not s.recovering
    with pytest.raises(RuntimeError):
        ModelState().crashed(0.0, p)  # a crash is recorded after ready --died--> failed, never before
    s.apply(Event.START)
    s.apply(Event.READY)
    _crashed(s, 0.0, p)
    s.apply(Event.START)
    s.apply(Event.DIED)
    assert s.recovering and s.restarts == 1 and s.failed_restarts == 1
    s.apply(Event.STOP)  # stopped on purpose (unload, shutdown, no slot): the recovery is over, for good
    assert s.phase is Phase.STOPPED and s.status(p) == "stopped"
    assert (s.recovering, s.restarts, s.failed_restarts) == (False, 0, 0)


@pytest.mark.parametrize(
    ("filename", "name"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct:q4_1"),
        ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "qwen2.5-0.5b-instruct:q4_k_m"),
        ("Meta-Llama-3-8B.Q4_K_M.gguf", "meta-llama-3-8b:q4_k_m"),
        ("Llama-3.2-3B-Instruct-IQ2_XS.gguf", "llama-3.2-3b-instruct:iq2_xs"),
        ("phi-3_Q8_0.gguf", "phi-3:q8_0"),
        ("gemma-2b.f16.gguf", "gemma-2b:f16"),
        ("model-BF16.gguf", "model:bf16"),
        ("nomic-embed-text.gguf", "nomic-embed-text:latest"),
        ("llama 3 (chat).gguf", "llama-3-chat:latest"),
        ("big-Q4_K_M-00001-of-00003.gguf", "big:q4_k_m"),
        ("big-Q4_K_M-00002-of-00003.gguf", None),
        ("mmproj-model-f16.gguf", None),
        ("notes.txt", None),
        (".hidden.gguf", None),
    ],
)
def test_models_dir_naming_rule(filename: str, name: str | None) -> None:
    assert model_name(filename) == name


def _write_gguf(path: Path, kv: dict[str, object], tensors: list[list[int]]) -> None:
    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for k, v in kv.items():
        out += s(k)
        if isinstance(v, str):
            out += struct.pack("<I", 8) + s(v)
        elif isinstance(v, list):
            out += struct.pack("<IIQ", 9, 8, len(v)) + b"".join(s(x) for x in v)
        else:
            out += struct.pack("<II", 4, v)
    for i, dims in enumerate(tensors):
        out += s(f"t{i}") + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 0, 0)
    path.write_bytes(out)


def test_gguf_header_and_capabilities(tmp_path: Path) -> None:
    chat = tmp_path / "Chat-1B.Q8_0.gguf"
    vocab = [f"tok{i}" for i in range(1000)]  # long arrays are skipped, not kept
    _write_gguf(
        chat,
        {
            "general.architecture": "qwen2",
            "general.file_type": 7,
            "qwen2.context_length": 32768,
            "qwen2.embedding_length": 896,
            "tokenizer.ggml.tokens": vocab,
            "tokenizer.chat_template": "{% if tools %}...{% endif %}",
        },
        [[896, 1000], [896]],
    )
    info = read_gguf(chat)
    assert (info.architecture, info.quantization, info.context_length) == ("qwen2", "Q8_0", 32768)
    assert info.parameter_count == 896 * 1000 + 896 and info.pooling_type is None
    assert info.capabilities == ("completion", "tools")
    assert "tokenizer.ggml.tokens" not in info.kv
    meta = info.meta()
    assert meta["family"] == "qwen2" and meta["embedding_length"] == 896 and meta["size"] == chat.stat().st_size

    emb = tmp_path / "embed.gguf"
    _write_gguf(emb, {"general.architecture": "nomic-bert", "nomic-bert.pooling_type": 1}, [[8]])
    assert read_gguf(emb).capabilities == ("embedding",)

    (tmp_path / "bad.gguf").write_bytes(b"nope")
    with pytest.raises(ValueError):
        read_gguf(tmp_path / "bad.gguf")
    assert sorted(f.name for f in scan(tmp_path)) == ["bad:latest", "chat-1b:q8_0", "embed:latest"]


def test_digest_cache_computes_once(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x" * 1000)
    cache = DigestCache(tmp_path / "cache" / "digests.json")
    assert cache.cached(f) is None
    d = cache.get(f)
    assert len(d) == 64
    again = DigestCache(tmp_path / "cache" / "digests.json")  # from disk, without reading the model
    assert again.cached(f) == d
    f.write_bytes(b"y" * 1000)  # changed: the old digest no longer applies
    assert again.cached(f) is None and again.get(f) != d
