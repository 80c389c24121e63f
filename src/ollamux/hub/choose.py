"""Which files of a hub repo a pull downloads (pure): one GGUF model, all its parts, and a vision projector.

- The model is the GGUF file whose quantization label (the end of its name, as the models folder reads
  it: `...-Q4_K_M.gguf`) equals the asked tag, case-insensitively. Without a tag, the default choice of
  `models_dir.preferred`: Q4_K_M (Ollama's default), then Q4_K_S, Q4_0, ... Q8_0, else the smallest file.
- A split model (`...-00001-of-00003.gguf`) is all of its parts, in order; one with a part missing from
  the repo is not offered.
- A repo with `mmproj*.gguf` files pairs one with the model: F16 if there is one, else BF16, F32, Q8_0,
  else the smallest.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from ..runtime.models_dir import preferred, quant_label, split_part

__all__ = ["NoSuchFile", "RepoFile", "Selection", "select_files"]

PROJECTOR_PREFERENCE = ("F16", "BF16", "F32", "Q8_0")


@dataclass(frozen=True)
class RepoFile:
    path: str  # in the repo, maybe in a folder of it
    size: int | None
    sha256: str | None  # as the hub publishes it (the LFS object's); None for a file not stored in LFS

    @property
    def basename(self) -> str:
        return posixpath.basename(self.path)


@dataclass(frozen=True)
class Selection:
    quant: str | None  # the chosen model's quantization label; None: its name has none
    model: tuple[RepoFile, ...]  # one file, or every part of a split file in order
    projector: RepoFile | None = None

    @property
    def files(self) -> tuple[RepoFile, ...]:
        return self.model + ((self.projector,) if self.projector is not None else ())


class NoSuchFile(LookupError):
    """The repo has no GGUF file for the asked tag (the message says what it has)."""


def _is_gguf(f: RepoFile) -> bool:
    return f.basename.lower().endswith(".gguf")


def _is_projector(f: RepoFile) -> bool:
    return f.basename.lower().startswith("mmproj")


def _models(files: Sequence[RepoFile]) -> list[tuple[RepoFile, ...]]:
    """Each model of the repo as its files: single files, and split files whose parts are all there."""
    singles: list[tuple[RepoFile, ...]] = []
    splits: dict[tuple[str, int], dict[int, RepoFile]] = {}
    for f in files:
        if not _is_gguf(f) or _is_projector(f):
            continue
        part = split_part(f.basename)
        if part is None:
            singles.append((f,))
            continue
        stem = f.path[: -len(".gguf")][: -len("-00001-of-00003")]  # the suffix always has 5-digit numbers
        splits.setdefault((stem, part[1]), {})[part[0]] = f
    complete = [
        tuple(parts[k] for k in range(1, n + 1))
        for (_, n), parts in sorted(splits.items())
        if all(k in parts for k in range(1, n + 1))
    ]
    return singles + complete


def _size(files: Sequence[RepoFile]) -> int:
    return sum(f.size or 0 for f in files)


def select_files(files: Sequence[RepoFile], quant: str | None) -> Selection:
    """The files to download for `quant` (None: the default choice); NoSuchFile when the repo has none."""
    models = _models(files)
    if not models:
        raise NoSuchFile("it has no GGUF model file")
    labels = [quant_label(m[0].basename) for m in models]
    if quant is None:
        chosen = models[preferred([(label, _size(m)) for label, m in zip(labels, models, strict=True)])]
    else:
        matching = [m for label, m in zip(labels, models, strict=True) if label == quant.upper()]
        if not matching:
            have = sorted({label for label in labels if label})
            listed = f"its quantizations are {', '.join(have)}" if have else "its GGUF files name no quantization"
            raise NoSuchFile(f"it has no {quant.upper()} GGUF file ({listed})")
        chosen = min(matching, key=_size)
    projectors = [f for f in files if _is_gguf(f) and _is_projector(f)]
    projector = None
    if projectors:
        rank = {q: i for i, q in enumerate(PROJECTOR_PREFERENCE)}
        projector = min(
            projectors, key=lambda f: (rank.get(quant_label(f.basename) or "", len(rank)), f.size or 0, f.path)
        )
    return Selection(quant=quant_label(chosen[0].basename), model=chosen, projector=projector)
