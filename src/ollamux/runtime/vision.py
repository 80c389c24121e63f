"""Which vision projector (`mmproj*.gguf`) goes with a model file: pure pairing rules, and the folder read.

llama.cpp's server loads a multimodal model as two files, the language model and its projector (`--mmproj`).
Its router pairs them by folder (a model folder's `mmproj*.gguf` is its projector); ollamux does the same,
with one guard for a folder many unrelated models share (the models folder itself, or any folder of a
configured model holding more than one model):

1. a projector whose name holds the model's stem (`mmproj-<stem>.gguf`, `<stem>.mmproj-f16.gguf`, compared
   case-insensitively, quantization label dropped) is the model's, wherever it is;
2. otherwise, in a folder of one model's files (a pulled repo's `hf.co/{user}/{repo}/`, a model subfolder,
   a folder of quantizations of one model), its only projector, or the first by name (f16 before f32...);
   in a shared folder, none: pairing an unrelated projector would fail the model's start.

A projector is a `.gguf` file whose name starts with `mmproj` or holds `.mmproj` / `-mmproj`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["find_mmproj", "is_mmproj", "pair_mmproj"]

_QUANT_TAIL = re.compile(r"[._-](?:i?q\d\w*|[bf]f?16|f32|f64)$", re.IGNORECASE)


def is_mmproj(filename: str) -> bool:
    low = filename.lower()
    return low.endswith(".gguf") and (low.startswith("mmproj") or ".mmproj" in low or "-mmproj" in low)


def _core(filename: str) -> str:
    """The model's stem: no extension, no quantization label, lower case."""
    stem = filename[: -len(".gguf")] if filename.lower().endswith(".gguf") else filename
    return _QUANT_TAIL.sub("", stem).lower()


def pair_mmproj(model: str, siblings: Sequence[str], *, shared: bool) -> str | None:
    """The projector of the file named `model` among the file names of its folder (rules in the docstring)."""
    projectors = sorted(n for n in siblings if is_mmproj(n) and n != model)
    if not projectors or is_mmproj(model):
        return None
    core = _core(model)
    for p in projectors:
        if core and core in p.lower():
            return p
    models = [n for n in siblings if n.lower().endswith(".gguf") and not is_mmproj(n)]
    if shared and len(models) > 1:
        return None
    return projectors[0]


def find_mmproj(gguf: Path, *, shared: bool) -> Path | None:
    """`pair_mmproj` over the files beside `gguf` (reads the folder; None when it cannot)."""
    try:
        names = [p.name for p in gguf.parent.iterdir() if p.is_file()]
    except OSError:
        return None
    found = pair_mmproj(gguf.name, names, shared=shared)
    return gguf.parent / found if found else None
