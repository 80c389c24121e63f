"""The operator log keeps third-party chatter out at the usual levels: the hub library's HTTP client logs a
line per request at info, which a pull of a model would fill the log with; `--log-level debug` shows it."""

from __future__ import annotations

import io
import logging

from ollamux import oplog


def test_hub_http_client_lines_only_at_debug() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        for level, shown in (("info", False), ("debug", True)):
            out = io.StringIO()
            oplog.configure("text", level, out)
            logging.getLogger("httpx2").info("HTTP Request: GET https://huggingface.co/api/models/x")
            logging.getLogger("ollamux.pull").info("pulling x")
            text = out.getvalue()
            assert "pulling x" in text
            assert ("HTTP Request" in text) is shown, (level, text)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        for name in ("httpx", "httpx2", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.NOTSET)
