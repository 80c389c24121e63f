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

Models pulled from a hub (`ollamux pull hf.co/{user}/{repo}:{quant}`) live in `hf.co/{user}/{repo}/` (the
repo as the hub spells it), one folder per repo, each file under its name in the repo (flattened):

- each `.gguf` file there is `hf.co/{user}/{repo}:{TAG}`, TAG its quantization label upper-cased (rule 2,
  else `latest`), and resolves as `huggingface.co/{user}/{repo}:{TAG}` too;
- the file `preferred` picks among them (the default choice of a pull without a tag) also answers to
  `hf.co/{user}/{repo}` (`:latest`);
- `mmproj*.gguf` in that folder is the vision projector of the models beside it (one per repo);
- split files keep their `-0000k-of-0000N` names side by side, the first part is the model;
- `*.partial` files are downloads under way (or interrupted: the next pull resumes them).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..hub.ref import HUB_HOST, hub_names

__all__ = [
    "QUANT_PREFERENCE",
    "ModelFile",
    "hub_model_name",
    "model_name",
    "preferred",
    "quant_label",
    "repo_folder",
    "scan",
    "split_part",
    "stamp",
]

log = logging.getLogger("ollamux.runtime")

_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})$", re.IGNORECASE)
_QUANT = re.compile(
    r"^(?P<name>.+?)[._-](?P<tag>(?:I?Q\d(?:_[0-9A-Z]+)*|F16|F32|BF16|FP16|FP32|TQ\d_\d|MXFP4)(?:_[A-Z0-9]+)*)$",
    re.IGNORECASE,
)
_BAD = re.compile(r"[^a-z0-9._-]+")
_REPO_PART = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")

# The default choice among a repo's quantizations: Ollama's default (Q4_K_M), then the others closest to
# it in size and quality, 4-bit first, then 5, 6 and 8-bit; a repo with none of these gets its smallest file.
QUANT_PREFERENCE = (
    "Q4_K_M",
    "Q4_K_S",
    "Q4_0",
    "Q4_1",
    "IQ4_XS",
    "IQ4_NL",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_0",
    "Q5_1",
    "Q6_K",
    "Q8_0",
)


def _stem(filename: str) -> str:
    return filename[: -len(".gguf")] if filename.lower().endswith(".gguf") else filename


def split_part(filename: str) -> tuple[int, int] | None:
    """(k, N) for the k-th part of a split GGUF file (`-0000k-of-0000N.gguf`), else None."""
    m = _SPLIT.search(_stem(filename))
    return (int(m.group(1)), int(m.group(2))) if m else None


def quant_label(filename: str) -> str | None:
    """The quantization label at the end of a GGUF file's name (a split suffix aside), upper-cased, or None."""
    stem = _SPLIT.sub("", _stem(filename))
    m = _QUANT.match(stem)
    return m.group("tag").upper() if m else None


def preferred(choices: Sequence[tuple[str | None, int]]) -> int:
    """The index of the default choice among (quantization label, size) pairs: see QUANT_PREFERENCE."""
    rank = {q: i for i, q in enumerate(QUANT_PREFERENCE)}
    return min(range(len(choices)), key=lambda i: (rank.get(choices[i][0] or "", len(rank)), choices[i][1], i))


def repo_folder(folder: Path, repo_id: str) -> Path:
    """Where the files of a hub repo go in the models folder."""
    return folder.joinpath(HUB_HOST, *repo_id.split("/"))


def hub_model_name(repo_id: str, filename: str) -> str | None:
    """The name of a file of a pulled repo's folder, or None when it is not a model of its own."""
    if model_name(filename) is None:  # the same files are models in both layouts
        return None
    return f"{HUB_HOST}/{repo_id}:{quant_label(filename) or 'latest'}"


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
    aliases: tuple[str, ...] = ()  # more names it answers to (a pulled model's other spellings)


def scan(folder: Path) -> list[ModelFile]:
    """The model files of a folder and of its pulled repos' folders, by name; a missing folder has none."""
    found: dict[str, ModelFile] = {}
    _scan_into(found, folder, model_name)
    for repo_id, path in _repo_folders(folder):
        files: dict[str, ModelFile] = {}
        _scan_into(files, path, functools.partial(hub_model_name, repo_id))
        if not files:
            continue
        listed = list(files.values())
        best = listed[preferred([(quant_label(f.path.name), f.size) for f in listed])]
        for f in listed:
            tag = f.name.rsplit(":", 1)[1]
            aliases = hub_names(repo_id, tag)[1:]
            if f is best and tag != "latest":
                aliases += hub_names(repo_id, "latest")
            _add(found, ModelFile(f.name, f.path, f.size, f.mtime, f.mtime_ns, aliases))
    return list(found.values())


def stamp(folder: Path) -> int:
    """Changes whenever a model file may have come or gone: from the modification times of the folder and of
    the pulled repos' folders (a file added to `hf.co/u/r/` changes only that folder's time); -1: missing."""
    try:
        times = [folder.stat().st_mtime_ns]
    except OSError:
        return -1
    hub = folder / HUB_HOST
    for p in (hub, *(hub / u for u in _subdirs(hub)), *(path for _, path in _repo_folders(folder))):
        try:
            times.append(p.stat().st_mtime_ns)
        except OSError:
            times.append(-1)
    return hash(tuple(times))


def _subdirs(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if _REPO_PART.match(p.name) and p.is_dir())
    except OSError:
        return []


def _repo_folders(folder: Path) -> list[tuple[str, Path]]:
    """(repo id, folder) of each pulled repo: `hf.co/{user}/{repo}/`."""
    hub = folder / HUB_HOST
    return [(f"{u}/{r}", hub / u / r) for u in _subdirs(hub) for r in _subdirs(hub / u)]


def _scan_into(found: dict[str, ModelFile], folder: Path, name_of: Callable[[str], str | None]) -> None:
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return
    for p in children:
        name = name_of(p.name)
        if name is None:
            continue
        try:
            if not p.is_file():
                continue
            st = p.stat()
        except OSError:
            continue
        _add(found, ModelFile(name=name, path=p, size=st.st_size, mtime=st.st_mtime, mtime_ns=st.st_mtime_ns))


def _add(found: dict[str, ModelFile], f: ModelFile) -> None:
    if f.name in found:
        first = found[f.name].path
        log.warning("models folder: %s and %s are both named '%s'; serving the first", first, f.path, f.name)
        return
    found[f.name] = f
