"""Hub model names as Ollama accepts them: `hf.co/{user}/{repo}[:{quant}]` (pure).

`huggingface.co/...` is the same name, and either may start with `https://` or `http://` (a link copied
from the hub's web page). A pulled model is stored under `hf.co/` and listed as `hf.co/{user}/{repo}:{QUANT}`
(the tag upper-cased); the other spellings of that name resolve to it too (`hub_names`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["HOST_ALIASES", "HUB_HOST", "BadHubName", "HubRef", "hub_names", "parse_hub_ref"]

HUB_HOST = "hf.co"
HOST_ALIASES = ("huggingface.co",)
LATEST = "latest"

# the hub's own rule for user and repo names (huggingface_hub's validate_repo_id): word characters, `.`
# and `-`, at most 96, neither `--` nor `..`, not starting or ending with `.` or `-`
_PART = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_SCHEMES = ("https://", "http://")
_FILE_LINK = ("blob", "resolve")  # https://huggingface.co/{user}/{repo}/blob/{revision}/{file}


class BadHubName(ValueError):
    """A name that starts like a hub name (`hf.co/`) but is not one."""


@dataclass(frozen=True)
class HubRef:
    repo_id: str  # user/repo, as the client spelt it (the hub's own spelling comes with the listing)
    quant: str | None  # the asked tag, upper-cased; None: no tag or `latest`, the default choice

    @property
    def name(self) -> str:
        """The name the model is served as, once pulled (`hf.co/user/repo:Q4_K_M`, or `:latest`)."""
        return f"{HUB_HOST}/{self.repo_id}:{self.quant or LATEST}"


def parse_hub_ref(name: str) -> HubRef | None:
    """The hub reference a model name spells; None when it is no hub name; BadHubName when it is a broken one."""
    text = name.strip()
    for scheme in _SCHEMES:
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
            break
    host, slash, rest = text.partition("/")
    if not slash or host.lower() not in (HUB_HOST, *HOST_ALIASES):
        return None
    path, colon, tag = rest.partition(":")
    parts = path.rstrip("/").split("/")
    usage = f"'{name}' is not a hub model name: hf.co/{{user}}/{{repo}}[:{{quantization}}]"
    if not colon and len(parts) >= 5 and parts[2] in _FILE_LINK and parts[-1].lower().endswith(".gguf"):
        # a file's link copied from the hub's page (.../blob/main/X-Q8_0.gguf): the model its label names
        from ..runtime.models_dir import quant_label  # here: models_dir imports this module

        label = quant_label(parts[-1])
        if label is None:
            raise BadHubName(f"{usage}; {parts[-1]} has no quantization label to pull it by")
        parts, colon, tag = parts[:2], ":", label
    if len(parts) != 2 or not all(_PART.match(p) and "--" not in p and ".." not in p for p in parts):
        raise BadHubName(usage)
    if colon and not _TAG.match(tag):
        raise BadHubName(usage)
    quant = tag.upper() if tag and tag.lower() != LATEST else None
    return HubRef(repo_id="/".join(parts), quant=quant)


def hub_names(repo_id: str, tag: str) -> tuple[str, ...]:
    """Every spelling of one pulled model's name: `hf.co/...` first (the listed one), then `huggingface.co/...`."""
    return tuple(f"{host}/{repo_id}:{tag}" for host in (HUB_HOST, *HOST_ALIASES))
