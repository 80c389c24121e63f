"""The models made with /api/copy and /api/create (pure): their record, how a create derives one, and the
registry entry each becomes.

A record stands on a served model (`base`: a config, models-folder or discovered name) or on a GGUF blob
(`gguf`), and holds what a Modelfile adds: a system prompt, a template, options (PARAMETER), a conversation
(MESSAGE) and licenses. Records never stand on one another: a copy or a create FROM a made model takes that
model's record whole and changes it (Ollama's layers are shared the same way), so deleting the first leaves
the second as it was. The entry a record becomes routes to its base's backend and upstream with the base's
settings, its own values on top of the base's defaults (its options over the base's, the request's over
both); a GGUF record gets a backend of its own, run by the built-in engine like a models-folder file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from .config import ModelParams, ModelSettings, RuntimeSpec
from .registry import CREATED_SOURCE, ModelEntry

__all__ = ["Changes", "CreatedModel", "derive", "entry_for", "gguf_spec", "layer_digest", "runtime_backend"]


@dataclass(frozen=True)
class CreatedModel:
    name: str  # the display form, with its tag
    base: str | None = None  # the served model it stands on
    gguf: str | None = None  # or the GGUF blob it runs from (its path)
    blob: str | None = None  # that blob's sha256 hex
    system: str | None = None
    template: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # Ollama option names and types
    messages: tuple[Mapping[str, str], ...] = ()
    licenses: tuple[str, ...] = ()
    created_at: float = 0.0
    digest: str = ""  # what /api/tags shows; "" for a copy of a served model: the base's

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "gguf": self.gguf,
            "blob": self.blob,
            "system": self.system,
            "template": self.template,
            "options": dict(self.options),
            "messages": [dict(m) for m in self.messages],
            "licenses": list(self.licenses),
            "created_at": self.created_at,
            "digest": self.digest,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CreatedModel:
        def opt_str(key: str) -> str | None:
            v = data.get(key)
            return v if isinstance(v, str) else None

        options = data.get("options")
        messages = data.get("messages")
        licenses = data.get("licenses")
        return cls(
            name=str(data["name"]),
            base=opt_str("base"),
            gguf=opt_str("gguf"),
            blob=opt_str("blob"),
            system=opt_str("system"),
            template=opt_str("template"),
            options=dict(options) if isinstance(options, dict) else {},
            messages=tuple(dict(m) for m in messages if isinstance(m, dict)) if isinstance(messages, list) else (),
            licenses=tuple(s for s in licenses if isinstance(s, str)) if isinstance(licenses, list) else (),
            created_at=float(data.get("created_at") or 0.0),
            digest=str(data.get("digest") or ""),
        )


@dataclass(frozen=True)
class Changes:
    """What a create request says about the new model; None (or empty): keep the base's."""

    system: str | None = None
    template: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    messages: tuple[Mapping[str, str], ...] | None = None
    licenses: tuple[str, ...] = ()

    def layers(self) -> list[tuple[str, Any]]:
        """The parts a create writes anew, as (kind, content): each is one "creating new layer" status."""
        out: list[tuple[str, Any]] = []
        if self.template is not None:
            out.append(("template", self.template))
        if self.system is not None:
            out.append(("system", self.system))
        if self.options:
            out.append(("params", dict(self.options)))
        if self.messages is not None:
            out.append(("messages", [dict(m) for m in self.messages]))
        for text in self.licenses:
            out.append(("license", text))
        return out


def layer_digest(kind: str, content: Any) -> str:
    return hashlib.sha256(kind.encode() + b"\0" + orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def derive(
    name: str,
    parent: CreatedModel,
    changes: Changes,
    *,
    now: float,
) -> CreatedModel:
    """A new record from `parent` (a made model's record, or a bare one standing on a served model or a
    blob) and a create's changes: new values replace the parent's, options are merged (Ollama's
    setParameters keeps the base's parameters a create does not name), licenses add up."""
    model = CreatedModel(
        name=name,
        base=parent.base,
        gguf=parent.gguf,
        blob=parent.blob,
        system=changes.system if changes.system is not None else parent.system,
        template=changes.template if changes.template is not None else parent.template,
        options={**parent.options, **changes.options},
        messages=tuple(changes.messages) if changes.messages is not None else parent.messages,
        licenses=(*parent.licenses, *changes.licenses),
        created_at=now,
    )
    return replace(model, digest=_digest(model))


def _digest(model: CreatedModel) -> str:
    body = model.to_json()
    for key in ("name", "created_at", "digest", "gguf"):
        body.pop(key)  # the same content under another name, at another time, is the same model
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def runtime_backend(name: str) -> str:
    """The backend of a model made from a GGUF blob: named as a models-folder file's would be."""
    return f"runtime:{name}"


def _params(params: ModelParams, model: CreatedModel) -> ModelParams:
    d = params.defaults
    defaults = replace(
        d,
        options={**d.options, **model.options},
        system=model.system if model.system is not None else d.system,
        messages=model.messages or d.messages,
    )
    return replace(params, defaults=defaults)


def entry_for(model: CreatedModel, base: ModelEntry | None, spec: RuntimeSpec | None) -> ModelEntry | None:
    """The registry entry of a record: on its base's entry, or (a GGUF record, `spec` given) on a backend
    of its own. None when its base is not served (any more): the record waits for it to come back."""
    meta: dict[str, Any] = {"modified_at": model.created_at}
    if model.digest:
        meta["digest"] = model.digest
    if model.licenses:
        meta["licenses"] = list(model.licenses)  # for /api/show (not a ModelMeta field)
    if model.gguf is not None:
        if spec is None:
            return None
        backend = runtime_backend(model.name)
        # no `runtime` here: like a models-folder file, it reports the context its GGUF file was trained
        # for (the runtime holds how it runs: `spec`)
        settings = ModelSettings(
            name=model.name, backend=backend, template=model.template, params=_params(ModelParams(), model)
        )
        return ModelEntry(
            name=model.name, backend=backend, upstream=model.name, source=CREATED_SOURCE, settings=settings, meta=meta
        )
    if base is None:
        return None
    bs = base.settings or ModelSettings(name=base.name, backend=base.backend)
    settings = replace(
        bs,
        name=model.name,
        upstream=base.upstream,
        aliases=(),
        template=model.template if model.template is not None else bs.template,
        params=_params(bs.params, model),
    )
    return ModelEntry(
        name=model.name,
        backend=base.backend,
        upstream=base.upstream,
        source=CREATED_SOURCE,
        settings=settings,
        meta={**base.meta, **meta},
    )


def gguf_spec(path: str, ctx: int, ttl: float, threads: int | None) -> RuntimeSpec:
    """How a GGUF record runs: as the models folder's files do (runtime.ctx, ttl, threads)."""
    return RuntimeSpec(gguf=Path(path), ctx=ctx, ttl=ttl, threads=threads)
