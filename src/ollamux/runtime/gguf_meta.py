"""What a GGUF file says about its model, for /api/tags, /api/show and the engine's pooling choice.

The header is read here following the `gguf` package's format tables, but not with its `GGUFReader`: that reader turns
every vocabulary entry into numpy views (2.5 s for SmolLM2-135M on the reference machine), while walking
the header and skipping the arrays takes milliseconds. The sha256 digest, the only slow part, is computed
once per file and cached on disk, keyed by path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["DigestCache", "GGUFInfo", "HeaderCache", "default_cache_dir", "file_digest", "read_gguf", "read_show"]

log = logging.getLogger("ollamux.runtime")

_MAGIC = b"GGUF"
# GGUF value types (gguf.GGUFValueType), with struct formats for the fixed-size ones
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# small arrays are kept (languages, ...); vocabularies are skipped
_ARRAY_KEEP = 64

# llama_ftype (general.file_type) -> Ollama's quantization_level spelling
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}
# architectures whose models only embed (no chat): their GGUF also names a pooling type
_EMBEDDING_ARCHS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder", "modern-bert", "neo-bert"}


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    name: str
    context_length: int
    embedding_length: int
    parameter_count: int
    quantization: str
    chat_template: str
    pooling_type: int | None  # None: the file names none (chat models); the engine then uses mean pooling
    size: int
    kv: Mapping[str, Any]  # every scalar key/value of the header (for model_info)

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What the model can do, read from its chat template as Ollama reads a GGUF's Jinja template
        (server/images.go `chatTemplateCapabilities`): tools when it mentions `tools` or `tool_call`,
        thinking when it writes `<think>...</think>` (or splits earlier answers at `</think>`). No
        "insert" (only Ollama's own Go templates declare a suffix) and no "vision": that comes from a projector
        file beside the model, not from its header (the catalogue adds it, vision.py); these capabilities are
        what requests to the model are checked against."""
        if self.architecture in _EMBEDDING_ARCHS or (self.pooling_type not in (None, 0) and not self.chat_template):
            return ("embedding",)
        # as Ollama: a chat model lists no "embedding" (clients would take it for an embedding model),
        # although the engine serves embeddings of it too
        caps = ["completion"]
        tmpl = self.chat_template
        if "tools" in tmpl or "tool_call" in tmpl:
            caps.append("tools")
        if _thinks(tmpl):
            caps.append("thinking")
        return tuple(caps)

    def meta(self) -> dict[str, Any]:
        """The keys `catalog.ModelMeta` understands."""
        extra = {k: v for k, v in self.kv.items() if k.startswith(("general.", f"{self.architecture}."))}
        out: dict[str, Any] = {
            "family": self.architecture,
            "parameter_count": self.parameter_count,
            "quantization_level": self.quantization,
            "context_length": self.context_length,
            "embedding_length": self.embedding_length,
            "capabilities": list(self.capabilities),
            "size": self.size,
            "extra_info": extra,
        }
        if self.chat_template:
            out["template"] = self.chat_template
        return out


def _thinks(tmpl: str) -> bool:
    """Ollama's `chatTemplateHasThinkingSupport` (server/images.go)."""
    if "<think>" in tmpl and "</think>" in tmpl:
        return True
    splits = "content.split('</think>')" in tmpl or 'content.split("</think>")' in tmpl
    return splits and "reasoning_content" not in tmpl and "<SPECIAL_12>" not in tmpl


class _Reader:
    def __init__(self, f: IO[bytes], keep: int = _ARRAY_KEEP) -> None:
        self.f = f
        self.keep = keep  # arrays up to this long are read, longer ones skipped (None); -1: all are read

    def take(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack("<" + fmt, data)[0]

    def string(self) -> str:
        n = self.take("Q")
        if n > 1 << 26:
            raise ValueError("implausible string length in GGUF header")
        return self.f.read(n).decode("utf-8", "replace")

    def skip_string(self) -> None:
        n = self.take("Q")
        self.f.seek(n, os.SEEK_CUR)

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.take("I"), self.take("Q")
            if self.keep < 0 or count <= self.keep:
                if itype == 6:  # float32: the shortest decimal that reads back, as Go prints a float32
                    return [_f32(self.take("f")) for _ in range(count)]
                return [self.value(itype) for _ in range(count)]
            if itype in _FIXED:
                self.f.seek(struct.calcsize("<" + _FIXED[itype]) * count, os.SEEK_CUR)
            elif itype == _STRING:
                for _ in range(count):
                    self.skip_string()
            else:
                for _ in range(count):
                    self.value(itype)
            return None
        fmt = _FIXED.get(vtype)
        if fmt is None:
            raise ValueError(f"unknown GGUF value type {vtype}")
        return self.take(fmt)


def _f32(x: float) -> float:
    """A float32 as Go's encoding/json writes it (its shortest decimal), not as the double it widens to."""
    for digits in range(1, 10):
        short = float(f"{x:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == x:
            return short
    return x


# ggml_type -> its name, as Ollama's show names a tensor's type (fs/ggml/type.go TensorType.String)
_GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
    11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS",
    19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
    27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
_SHOW_ARRAY_MAX = 1024  # Ollama's ggml.Decode keeps arrays up to 1024 long when not verbose


def read_show(path: Path, *, verbose: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every key of a GGUF header and its tensors, as Ollama's /api/show has them (server/routes.go
    GetModelInfo and getModelData, fs/ggml/gguf.go): an array longer than 1024 (a vocabulary, its merges)
    is null unless `verbose`, where it is listed whole; `general.parameter_count` is added (the tensors'
    elements, as ggml.Decode adds it); `general.name` and `tokenizer.chat_template` are left out. Each
    tensor is `{name, type, shape}` (api/types.go Tensor). Raises ValueError when the file is no GGUF."""
    with open(path, "rb") as f:
        r = _Reader(f, keep=-1 if verbose else _SHOW_ARRAY_MAX)
        if f.read(4) != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        if r.take("I") < 2:
            raise ValueError(f"{path}: GGUF version is too old")
        n_tensors, n_kv = r.take("Q"), r.take("Q")
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.take("I")
            kv[key] = _f32(r.take("f")) if vtype == 6 else r.value(vtype)
        tensors: list[dict[str, Any]] = []
        params = 0
        for _ in range(n_tensors):
            name = r.string()
            shape = [r.take("Q") for _ in range(r.take("I"))]
            gtype = r.take("I")
            r.take("Q")  # offset
            n = 1
            for d in shape:
                n *= d
            params += n
            tensors.append({"name": name, "type": _GGML_TYPES.get(gtype, f"type {gtype}"), "shape": shape})
    kv.pop("general.name", None)
    kv.pop("tokenizer.chat_template", None)
    kv["general.parameter_count"] = params
    return kv, tensors


def read_gguf(path: Path) -> GGUFInfo:
    """Parse the header of a GGUF file; raises ValueError when it is not one."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        r = _Reader(f)
        if f.read(4) != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        version = r.take("I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old")
        n_tensors, n_kv = r.take("Q"), r.take("Q")
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            val = r.value(r.take("I"))
            if val is not None:
                kv[key] = val
        params = 0
        for _ in range(n_tensors):
            r.skip_string()
            dims = [r.take("Q") for _ in range(r.take("I"))]
            r.take("I")  # ggml type
            r.take("Q")  # offset
            n = 1
            for d in dims:
                n *= d
            params += n
    arch = str(kv.get("general.architecture") or "llama")
    ftype = kv.get("general.file_type")
    quant = _FILE_TYPES.get(ftype, f"ftype {ftype}") if isinstance(ftype, int) else ""
    pooling = kv.get(f"{arch}.pooling_type")
    return GGUFInfo(
        architecture=arch,
        name=str(kv.get("general.name") or ""),
        context_length=int(kv.get(f"{arch}.context_length") or 0),
        embedding_length=int(kv.get(f"{arch}.embedding_length") or 0),
        parameter_count=params,
        quantization=quant,
        chat_template=str(kv.get("tokenizer.chat_template") or ""),
        pooling_type=int(pooling) if isinstance(pooling, int) else None,
        size=size,
        kv={k: v for k, v in kv.items() if k != "tokenizer.chat_template"},
    )


class HeaderCache:
    """Parsed GGUF headers, kept while a file keeps its size and modification time.

    A rescan of the models folder then reads only the files that are new or changed. One entry per path,
    so the cache is as large as the set of files ever seen. Not locked: the manager's scans run one at a
    time (in a worker thread), and nothing else uses it.
    """

    def __init__(self) -> None:
        # path -> (size, mtime_ns, the header or why it could not be read)
        self._entries: dict[Path, tuple[int, int, GGUFInfo | str]] = {}

    def read(self, path: Path) -> GGUFInfo:
        """`read_gguf(path)`, from the cache when the file did not change; raises OSError or ValueError."""
        st = path.stat()
        hit = self._entries.get(path)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            result = hit[2]
        else:
            try:
                result = read_gguf(path)
            except ValueError as exc:
                result = str(exc)  # a broken file stays broken until it changes: not parsed again
            self._entries[path] = (st.st_size, st.st_mtime_ns, result)
        if isinstance(result, str):
            raise ValueError(result)
        return result


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "ollamux"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class DigestCache:
    """sha256 of model files, computed once: a JSON file maps path -> (size, mtime_ns, digest)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, list[Any]] | None = None

    def _load(self) -> dict[str, list[Any]]:
        if self._data is None:
            try:
                raw = json.loads(self.path.read_text())
                self._data = raw if isinstance(raw, dict) else {}
            except (OSError, ValueError):
                self._data = {}
        return self._data

    @staticmethod
    def _stamp(p: Path) -> tuple[str, int, int]:
        st = p.stat()
        return str(p.resolve()), st.st_size, st.st_mtime_ns

    def cached(self, p: Path) -> str | None:
        """The digest if known for the file as it is now; never reads the file."""
        try:
            key, size, mtime = self._stamp(p)
        except OSError:
            return None
        with self._lock:
            hit = self._load().get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == size and hit[1] == mtime:
            return str(hit[2])
        return None

    def get(self, p: Path) -> str:
        """The digest, computing and storing it when the file is new or changed (slow: call off the loop)."""
        hit = self.cached(p)
        if hit is not None:
            return hit
        stamp = self._stamp(p)  # before reading: a file changed meanwhile does not match the entry
        digest = file_digest(p)
        self._store(stamp, digest)
        return digest

    def put(self, p: Path, digest: str) -> None:
        """Store a digest known otherwise (a download hashed as it arrived, and checked); writes the cache file."""
        self._store(self._stamp(p), digest)

    def _store(self, stamp: tuple[str, int, int], digest: str) -> None:
        key, size, mtime = stamp
        with self._lock:
            data = self._load()
            data[key] = [size, mtime, digest]
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(data))
                tmp.replace(self.path)
            except OSError as exc:  # a read-only cache only costs a recomputation next time
                log.warning("cannot write digest cache %s: %s", self.path, exc)
