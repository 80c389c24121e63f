"""A backend's credentials, masked out of anything that travels back from it (pure).

Upstreams echo what they were sent ("invalid key Bearer sk-..."), so an error message, an error body or a
relayed stream may hold the backend's key or a configured header value. Every text that leaves the
backend boundary towards a client, the operator log or the request log goes through `redact`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..masks import MASK, mask_url

__all__ = ["MASK", "Redactor", "mask_url"]

_MIN_SECRET = 4  # shorter values ("1", "yes") would mask innocent text and hide nothing worth hiding


class Redactor:
    """Masks each of a backend's secrets; costs one substring test per secret when none is present."""

    __slots__ = ("_bytes", "_texts")

    def __init__(self, secrets: Iterable[str]) -> None:
        # longest first: a secret that contains another is masked whole
        unique = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True)
        self._texts = tuple(unique)
        self._bytes = tuple(s.encode() for s in unique)

    def __bool__(self) -> bool:
        return bool(self._texts)

    def text(self, value: str) -> str:
        for s in self._texts:
            if s in value:
                value = value.replace(s, MASK)
        return value

    def data(self, value: bytes) -> bytes:
        for s in self._bytes:
            if s in value:
                value = value.replace(s, MASK.encode())
        return value
