"""What every fake backend shares: each request recorded (path, headers, raw body) for capture assertions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Captured:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Recorder:
    requests: list[Captured] = field(default_factory=list)

    def last(self, path: str | None = None) -> Captured:
        for c in reversed(self.requests):
            if path is None or c.path.endswith(path):
                return c
        raise AssertionError(f"no request to {path}")

    async def _capture(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        self.requests.append(Captured(request.path, dict(request.headers), raw))
        return json.loads(raw) if raw else {}
