"""The `ollamux` command line: each group of commands lives in its own module (serve, run, client, logs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..version import __version__
from . import client, logs, models, pull, run, serve

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollamux", description="One server for the Ollama, OpenAI and Anthropic APIs, many model backends."
    )
    parser.add_argument("-v", "--version", action="version", version=f"ollamux version {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (serve, run, client, models, pull, logs):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # a command's words may come after its flags (`run MODEL --verbose why is the sky blue`, as cobra allows):
    # argparse leaves those unparsed, and a command that takes them names the list they extend
    args, extra = parser.parse_known_args(argv)
    words = getattr(args, "extra_words", None)
    if extra:
        if words is None or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, words).extend(extra)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    result: int = args.func(args)
    return result
