"""The `ollamux` command line: `serve` and `check` here; each further command lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import serve

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollamux", description="One server, two APIs (Ollama and OpenAI), many model backends."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve.register(sub)
    for name in ("client", "logs"):
        try:
            module = __import__(f"{__name__}.{name}", fromlist=["register"])
        except ImportError:
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    result: int = args.func(args)
    return result
