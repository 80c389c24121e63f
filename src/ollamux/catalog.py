"""Model metadata as Ollama clients want it: /api/tags, /api/show and /api/ps entries (pure).

Metadata is merged from, in rising priority: documented defaults, what the backend told us (discovery
or llama-server's /props), and the config. Clients depend on its shape more than its truth (Copilot skips
a model without `capabilities`; ollama-python fails without `model_info`), so every key is always there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .config import NO_PARAMS, ModelParams
from .jsonutil import rfc3339
from .modelfile import parameters_text
from .modelfile import render as render_modelfile
from .registry import ModelEntry

__all__ = ["DEFAULT_CONTEXT", "ModelMeta", "format_parameter_size", "meta_for", "ps_item", "show_body", "tag_item"]

DEFAULT_CONTEXT = 4096  # Ollama's own default num_ctx


@dataclass(frozen=True)
class ModelMeta:
    family: str = "llama"
    parameter_size: str = ""
    parameter_count: int = 0
    quantization_level: str = ""
    context_length: int = DEFAULT_CONTEXT
    embedding_length: int = 0
    capabilities: tuple[str, ...] = ("completion", "tools")
    template: str = "{{ .Prompt }}"
    system: str = ""
    size: int = 0
    digest: str = ""
    modified_at: float = 0.0
    format: str = "gguf"
    extra_info: Mapping[str, Any] | None = None  # more model_info keys (a GGUF file's own)
    context_known: bool = False  # context_length was told (GGUF, /props, config), not the default


def format_parameter_size(n: int) -> str:
    """135000000 -> '135M', 3212749824 -> '3.2B', as Ollama prints parameter sizes."""
    if n <= 0:
        return ""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            v = n / div
            return f"{v:.1f}{unit}" if v < 10 and not v.is_integer() else f"{round(v)}{unit}"
    return str(n)


def meta_for(entry: ModelEntry, probed: Mapping[str, Any] | None, started_at: float) -> ModelMeta:
    meta = ModelMeta(
        digest=hashlib.sha256(f"{entry.backend}/{entry.upstream}".encode()).hexdigest(),
        modified_at=started_at,
    )
    for source in (probed or {}, entry.meta):
        meta = _apply(meta, source)
    s = entry.settings
    if s is not None:
        changes: dict[str, Any] = {}
        if s.context_length:
            changes["context_length"], changes["context_known"] = s.context_length, True
        if s.capabilities is not None:
            changes["capabilities"] = tuple(s.capabilities)
        if s.family:
            changes["family"] = s.family
        if s.parameter_size:
            changes["parameter_size"] = s.parameter_size
        if s.quantization_level:
            changes["quantization_level"] = s.quantization_level
        if s.template:
            changes["template"] = s.template
        if s.system:
            changes["system"] = s.system
        if s.runtime is not None and not s.context_length:
            changes["context_length"], changes["context_known"] = s.runtime.ctx, True
        meta = replace(meta, **changes)
    return meta


_META_KEYS = {f for f in ModelMeta.__dataclass_fields__}


def _apply(meta: ModelMeta, src: Mapping[str, Any]) -> ModelMeta:
    changes = {k: v for k, v in src.items() if k in _META_KEYS and v not in (None, "", 0)}
    if "capabilities" in changes:
        changes["capabilities"] = tuple(changes["capabilities"])
    if "context_length" in changes:
        changes["context_known"] = True
    if changes.get("parameter_count") and not changes.get("parameter_size"):
        changes["parameter_size"] = format_parameter_size(int(changes["parameter_count"]))
    return replace(meta, **changes) if changes else meta


def details(meta: ModelMeta) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": meta.format,
        "family": meta.family,
        "families": [meta.family],
        "parameter_size": meta.parameter_size,
        "quantization_level": meta.quantization_level,
    }


def tag_item(entry: ModelEntry, meta: ModelMeta) -> dict[str, Any]:
    """/api/tags' entry; its `details` also carry `context_length` (the context the model runs with) and
    `embedding_length` when they are known (a GGUF header, llama-server's /props and /v1/models, the config).
    Ollama's api.ModelDetails (api/types.go) has neither, but clients of Ollama-like servers read
    `details.context_length`; Go's and Python's decoders skip the keys they do not know (issue 22 row 18)."""
    extra: dict[str, Any] = {}
    if meta.context_known and meta.context_length:
        extra["context_length"] = meta.context_length
    if meta.embedding_length:
        extra["embedding_length"] = meta.embedding_length
    return {
        "name": entry.name,
        "model": entry.name,
        "modified_at": rfc3339(meta.modified_at),
        "size": meta.size,
        "digest": meta.digest,
        "details": {**details(meta), **extra},
        "capabilities": list(meta.capabilities),
    }


def model_info(entry: ModelEntry, meta: ModelMeta, basename: str) -> dict[str, Any]:
    arch = meta.family
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": basename,
        "general.parameter_count": meta.parameter_count,
        f"{arch}.context_length": meta.context_length,
    }
    if meta.embedding_length:
        info[f"{arch}.embedding_length"] = meta.embedding_length
    if meta.extra_info:
        for k, v in meta.extra_info.items():
            info.setdefault(k, v)
    return info


def show_body(
    entry: ModelEntry,
    meta: ModelMeta,
    *,
    requested: str,
    user_agent: str = "",
    params: ModelParams = NO_PARAMS,
    licenses: Sequence[str] = (),
    model_file: str | None = None,
) -> dict[str, Any]:
    """Ollama's ShowResponse. `parameters`, `system` and `modelfile` say what a request to the model gets
    (`params`: its defaults with what is forced on top, the context it runs with), as Ollama reports a
    Modelfile's PARAMETER and SYSTEM lines; the Modelfile reads back with `ollamux create -f`. `model_file`:
    the GGUF file of a model ollamux runs."""
    # Copilot shows general.basename as the model's name; real Ollama echoes the asked name for it
    basename = requested if user_agent.startswith("GitHubCopilotChat/") else entry.name.rsplit(":", 1)[0]
    options = {"num_ctx": meta.context_length, **params.defaults.options, **params.force}
    options = {k: v for k, v in options.items() if k not in params.strip or k in params.force}
    system = params.defaults.system or meta.system or None
    modelfile = render_modelfile(
        from_=model_file or entry.upstream,  # a model ollamux runs: its GGUF file, as Ollama shows its blob
        template=meta.template,
        system=system,
        options=options,
        licenses=licenses,
        messages=params.defaults.messages,
        header=(
            'Modelfile generated by "ollamux show"',
            "To build a new Modelfile based on this, replace FROM with:",
            f"FROM {entry.name}",
            f"served by ollamux from backend '{entry.backend}' as '{entry.upstream}'",
        ),
    )
    body: dict[str, Any] = {
        "license": "\n\n".join(licenses),
        "modelfile": modelfile,
        "parameters": parameters_text(options),
        "template": meta.template,
        "details": details(meta),
        "model_info": model_info(entry, meta, basename),
        "capabilities": list(meta.capabilities),
        "modified_at": rfc3339(meta.modified_at),
    }
    if system:
        body["system"] = system
    if params.defaults.messages:
        body["messages"] = [dict(m) for m in params.defaults.messages]
    return body


def ps_item(
    entry: ModelEntry, meta: ModelMeta, *, expires_at: float, context_length: int, size: int, size_vram: int = 0
) -> dict[str, Any]:
    return {
        "name": entry.name,
        "model": entry.name,
        "size": size,
        "digest": meta.digest,
        "details": details(meta),
        "expires_at": rfc3339(expires_at),
        "size_vram": size_vram,  # offloaded to a GPU (runtime/vram.py); 0 on a CPU build
        "context_length": context_length,
    }
