"""Images between the APIs: Ollama sends bare base64, OpenAI a `data:` URL with a MIME type."""

from __future__ import annotations

import base64
import binascii

from ..errors import BadRequest

__all__ = ["sniff_mime", "to_bare_base64", "to_data_url"]

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def sniff_mime(head: bytes) -> str:
    """The image type from its magic bytes; JPEG when unknown (what most backends accept best)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for sig, mime in _SIGNATURES:
        if head.startswith(sig):
            return mime
    return "image/jpeg"


def to_bare_base64(value: object, where: str) -> str:
    """Accept bare base64 or a data: URL (some clients send one); return bare base64, validated."""
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a base64-encoded string")
    text = value.strip()
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise BadRequest(f"{where} is a data: URL without data")
    if not text:
        raise BadRequest(f"{where} is empty")
    try:
        # validate the head only: decoding megabytes just to check is a waste on the hot path
        base64.b64decode(text[:64] + "=" * (-len(text[:64]) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64") from None
    return text


def to_data_url(b64: str) -> str:
    head = base64.b64decode(b64[:32] + "=" * (-len(b64[:32]) % 4))
    return f"data:{sniff_mime(head)};base64,{b64}"
