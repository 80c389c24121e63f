"""A backend's credentials never travel back: the redactor on its own (the relay tests cover the wiring)."""

from __future__ import annotations

from ollamux.backends.redact import MASK, Redactor


def test_masks_every_secret_in_text_and_bytes() -> None:
    r = Redactor(["sk-live-123456", "org-token-99"])
    text = "invalid key Bearer sk-live-123456 for org org-token-99 (sk-live-123456)"
    assert r.text(text) == f"invalid key Bearer {MASK} for org {MASK} ({MASK})"
    assert r.data(text.encode()) == r.text(text).encode()


def test_a_secret_inside_another_is_masked_whole() -> None:
    r = Redactor(["abcd", "abcd-efgh-ijkl"])
    assert r.text("key abcd-efgh-ijkl and abcd") == f"key {MASK} and {MASK}"


def test_short_or_empty_values_are_not_secrets() -> None:
    r = Redactor(["", "1", "yes"])  # a header value like "1" would mask every digit of every message
    assert not r
    assert r.text("HTTP 401: yes 1") == "HTTP 401: yes 1"


def test_text_without_secrets_comes_back_as_is() -> None:
    r = Redactor(["sk-live-123456"])
    msg = "model 'x' not found"
    assert r.text(msg) is msg and r.data(msg.encode()) == msg.encode()


def test_mask_url_hides_a_urls_password_wherever_it_appears() -> None:
    from ollamux.backends.redact import mask_url

    assert mask_url("http://ops:s3cret-pw@10.0.0.2:8080/v1") == f"http://ops:{MASK}@10.0.0.2:8080/v1"
    assert mask_url("https://:tok-123@h/v1") == f"https://:{MASK}@h/v1"
    msg = "cannot connect to http://a:b-secret@c:1/v1/models: refused (mail admin@example.com)"
    assert mask_url(msg) == f"cannot connect to http://a:{MASK}@c:1/v1/models: refused (mail admin@example.com)"
    # a userinfo without ':' is often a token put there (https://TOKEN@host): masked whole
    assert mask_url("https://ghp_tok3n@host/v1") == f"https://{MASK}@host/v1"
    plain = "http://host/v1 (mail admin@example.com)"  # no credentials: the very same text
    assert mask_url(plain) is plain
