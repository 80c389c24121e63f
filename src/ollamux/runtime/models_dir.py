"""The models folder: every `.gguf` file in it is a model served by the built-in engine.

Naming rule (documented in the README), Ollama-like `name:tag` from the file name:

1. drop the `.gguf` extension and a split suffix (`-00001-of-00003`: only the first part is listed);
2. if the stem ends in a quantization label, after a `.`, `-` or `_` (`Q4_1`, `Q4_K_M`, `IQ2_XS`, `F16`,
   `BF16`, `Q8_0`...), that label is the tag; otherwise the tag is `latest`;
3. lower-case both, and turn every character other than `a-z 0-9 . _ -` into `-`.

So `SmolLM2-135M-Instruct.Q4_1.gguf` is `smollm2-135m-instruct:q4_1`, `qwen2.5-0.5b-instruct-q4_k_m.gguf`
is `qwen2.5-0.5b-instruct:q4_k_m`, `nomic-embed-text.gguf` is `nomic-embed-text:latest`. Files in
subfolders, vision projectors (`mmproj*`) and later parts of split files are not models of their own.
Two files that map to one name: the first in sorted order wins (the other is logged).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelFile", "model_name", "scan"]

log = logging.getLogger("ollamux.runtime")

_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})$", re.IGNORECASE)
_QUANT = re.compile(
    r"^(?P<name>.+?)[._-](?P<tag>(?:I?Q\d(?:_[0-9A-Z]+)*|F16|F32|BF16|FP16|FP32|TQ\d_\d|MXFP4)(?:_[A-Z0-9]+)*)$",
    re.IGNORECASE,
)
_BAD = re.compile(r"[^a-z0-9._-]+")


def model_name(filename: str) -> str | None:
    """The model name for a file in the models folder, or None when the file is not a model of its own."""
    if not filename.lower().endswith(".gguf") or filename.startswith("."):
        return None
    stem = filename[: -len(".gguf")]
    if stem.lower().startswith("mmproj"):
        return None
    split = _SPLIT.search(stem)
    if split:
        if int(split.group(1)) != 1:
            return None
        stem = stem[: split.start()]
    m = _QUANT.match(stem)
    name, tag = (m.group("name"), m.group("tag")) if m else (stem, "latest")
    name = _BAD.sub("-", name.lower()).strip("-.") or "model"
    tag = _BAD.sub("-", tag.lower()).strip("-.") or "latest"
    return f"{name}:{tag}"


@dataclass(frozen=True)
class ModelFile:
    name: str
    path: Path
    size: int
    mtime: float
    mtime_ns: int = 0  # exact, for caches keyed by (path, size, mtime)


def scan(folder: Path) -> list[ModelFile]:
    """The model files of a folder, by name; a missing folder has none."""
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    found: dict[str, ModelFile] = {}
    for p in children:
        name = model_name(p.name)
        if name is None:
            continue
        try:
            if not p.is_file():
                continue
            st = p.stat()
        except OSError:
            continue
        if name in found:
            log.warning("models folder: %s and %s are both named '%s'; serving the first", found[name].path, p, name)
            continue
        found[name] = ModelFile(name=name, path=p, size=st.st_size, mtime=st.st_mtime, mtime_ns=st.st_mtime_ns)
    return list(found.values())
