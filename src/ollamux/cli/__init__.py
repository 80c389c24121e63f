"""The `ollamux` command line: each group of commands lives in its own module (serve, client, logs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..version import __version__
from . import client, logs, models, pull, serve

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollamux", description="One server, two APIs (Ollama and OpenAI), many model backends."
    )
    parser.add_argument("-v", "--version", action="version", version=f"ollamux version {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (serve, client, models, pull, logs):
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
