"""Credentials in URLs, masked for showing (pure): the one rule for every URL ollamux prints, logs or puts in
a span or an answer (backends, the request log's database, Redis, the OTLP collector).

A URL's password is masked and its user name kept (it says which account without opening it); a userinfo
without a ':' is masked whole, since a token is often put there (`https://TOKEN@host`, `redis://secret@h`).
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_url"]

MASK = "***"
# scheme://user:password@ -> the password; scheme://word@ -> the word (wherever a URL appears in a text)
_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]*@")
_LONE = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+@")


def mask_url(text: str) -> str:
    """A URL, or a message holding URLs, fit to show: each one's credentials masked."""
    if "@" not in text:
        return text
    return _LONE.sub(rf"\1{MASK}@", _PASSWORD.sub(rf"\1{MASK}@", text))
