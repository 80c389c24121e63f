"""What `ollamux serve` says at start-up (pure): the models it serves and where they come from.

Printed once the app's lifespan has registered every model (config, the models folder's scan, discovery,
created models), so the list is what /api/tags will answer; a server with nothing to serve says how to
give it something instead of listening silently.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Settings
from ..registry import CREATED_SOURCE, ModelEntry

__all__ = ["SHOWN", "dashboard_line", "served_lines"]

SHOWN = 25  # models listed by name; a larger catalogue is summed up after these


def _origin(entry: ModelEntry) -> str:
    if entry.source == "models_dir":
        return "models folder"
    if entry.source == CREATED_SOURCE:
        return "created"
    if entry.source.startswith("backend:") or entry.source == "config":
        return f"backend {entry.backend}" if entry.backend else entry.source
    return entry.source


def served_lines(settings: Settings, entries: Sequence[ModelEntry]) -> list[str]:
    lines: list[str] = []
    folder = settings.runtime.models_dir
    if folder is not None:
        state = "" if folder.is_dir() else " (does not exist yet)"
        lines.append(f"models folder: {folder}{state}")
    for name, b in settings.backends.items():
        lines.append(f"backend {name}: {b.type} {', '.join(b.urls)}{' (models discovered)' if b.discover else ''}")
    if not entries:
        lines.append(f"warning: no models to serve; {_how_to_get_models(settings)}")
        return lines
    lines.append(f"serving {len(entries)} model{'s' if len(entries) != 1 else ''}:")
    width = min(max(len(e.name) for e in entries), 60)
    for e in entries[:SHOWN]:
        lines.append(f"  {e.name:<{width}}  {_origin(e)}")
    if len(entries) > SHOWN:
        lines.append(f"  ... and {len(entries) - SHOWN} more (`ollamux list`)")
    return lines


def _how_to_get_models(settings: Settings) -> str:
    # only advice that fits this server: a pull needs a models folder, and a named backend that lists
    # nothing is most likely down (discovery serves its models as soon as it answers)
    folder = settings.runtime.models_dir
    hints = [f"put GGUF files in {folder} or run `ollamux pull hf.co/OWNER/REPO`"] if folder is not None else []
    discovering = [name for name, b in settings.backends.items() if b.discover]
    if discovering:
        named = ", ".join(f"'{n}'" for n in discovering)
        hints.append(
            f"backend {named} listed none (see the warning above: is it running, and is its URL the API's root,"
            " such as http://host:8080/v1? its models are served once it answers)"
        )
    else:
        hints.append(f"{'or ' if hints else ''}name a backend (--backend URL or a config file)")
    return "; ".join(hints)


def dashboard_line(settings: Settings) -> str:
    """Where the dashboard is: a URL to open on this machine (a wildcard bind is reached on loopback)."""
    server = settings.server
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(server.host, server.host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if server.tls_cert is not None else "http"
    needs = " (needs an admin key)" if settings.auth.keys else ""
    return f"dashboard: {scheme}://{host}:{server.port}/ui{needs}"
