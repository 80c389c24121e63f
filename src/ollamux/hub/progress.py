"""Ollama's pull progress objects, and how often a download reports (pure).

A pull streams `{"status": "pulling manifest"}`, then for each file `{"status": "pulling <digest12>",
"digest": "sha256:<digest>", "total": N, "completed": M}` as its bytes arrive, then `verifying sha256
digest`, `writing manifest` and `success` — what `ollama pull` and the ollama client libraries draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MANIFEST", "SUCCESS", "VERIFYING", "WRITING", "Throttle", "file_progress", "status"]

MANIFEST = "pulling manifest"
VERIFYING = "verifying sha256 digest"
WRITING = "writing manifest"
SUCCESS = "success"


def status(text: str) -> dict[str, Any]:
    return {"status": text}


def file_progress(digest: str | None, label: str, total: int, completed: int) -> dict[str, Any]:
    """One file's progress; `digest` is its sha256 when the hub publishes one (else `label` names it)."""
    out: dict[str, Any] = {"status": f"pulling {(digest or label)[:12]}"}
    if digest:
        out["digest"] = f"sha256:{digest}"
    out["total"] = total
    out["completed"] = completed
    return out


@dataclass
class Throttle:
    """Whether a download's progress is worth a line: the first and last always, else each `step` of the
    total (1%: at most about a hundred lines a file) or after `interval` seconds on a slow link."""

    total: int
    step: float = 0.01
    interval: float = 0.5
    _last_bytes: int = field(default=-1, init=False)
    _last_time: float = field(default=0.0, init=False)

    def due(self, completed: int, now: float) -> bool:
        first = self._last_bytes < 0
        done = completed >= self.total > 0
        grown = self.total > 0 and completed - max(self._last_bytes, 0) >= self.step * self.total
        slow = now - self._last_time >= self.interval and completed > self._last_bytes
        if first or (done and completed != self._last_bytes) or grown or slow:
            self._last_bytes, self._last_time = completed, now
            return True
        return False
