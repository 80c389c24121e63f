"""`ollamux run MODEL [PROMPT]`: Ollama's `ollama run` against any Ollama-API server (the terminal side).

The session's state and slash commands are pure logic in run_session.py; this module reads lines (the stdlib
readline gives input() history and editing), streams /api/chat, and performs the commands' effects over HTTP.
Decorations (the spinner, dimmed thinking, word wrap) appear only on a terminal, so piped output is the
answer alone, as with `ollama run`.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
from typing import TYPE_CHECKING, Any, Protocol

from .client import ClientError, _guarded, _json, _stream, print_show
from .run_session import Effect, MultiLine, Session, find_image_paths, format_stats, handle_command, parse_think
from .wordwrap import StreamWrapper

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["register"]

DIM, RESET = "\x1b[2m", "\x1b[0m"


class Spinner(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


class Terminal:
    """Where the session writes, and what it may decorate: stdout's and stderr's TTY-ness decide."""

    def __init__(self) -> None:
        self.out = sys.stdout
        self.tty = sys.stdout.isatty()
        # imported here, not at the top: `ollamux serve` imports this module to register the command, and
        # rich costs it ~1.5 MB of RSS it never uses
        from rich.console import Console

        self.console: Console = Console(stderr=True)

    def spinner(self) -> Spinner:
        """A spinner on stderr until the first token (rich's status); nothing when stderr is no terminal."""
        if not self.console.is_terminal:
            return _NoSpinner()
        return self.console.status("", spinner="dots")

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class _NoSpinner:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _capabilities(model: str) -> list[str]:
    try:
        caps = _json("POST", "/api/show", {"model": model}).get("capabilities") or []
    except ClientError:
        return []
    return [str(c) for c in caps]


def _images(session: Session, prompt: str, caps: list[str]) -> tuple[str, list[str]]:
    """Image paths in the prompt, read and base64-encoded for a vision model; the prompt without them."""
    found = find_image_paths(prompt)
    if not found:
        return prompt, []
    if "vision" not in caps:
        names = ", ".join(f"'{p}'" for _, p in found)
        print(f"note: '{session.model}' cannot read images (no vision capability); {names} sent as text", flush=True)
        return prompt, []
    images: list[str] = []
    for word, path in found:
        try:
            images.append(base64.b64encode(path.read_bytes()).decode("ascii"))
        except OSError as exc:
            print(f"couldn't read image '{path}': {exc.strerror or exc}", flush=True)
            continue
        prompt = prompt.replace(word, "", 1)
        print(f"Added image '{path}'", flush=True)
    return " ".join(prompt.split()) if images else prompt, images


def _answer(session: Session, prompt: str, images: list[str], term: Terminal) -> None:
    """Stream one answer: spinner until the first chunk, thinking dimmed, content word-wrapped on a TTY."""
    body = session.chat_body(prompt, images)
    wrap = StreamWrapper(shutil.get_terminal_size().columns - 1) if session.wordwrap and term.tty else None
    content: list[str] = []
    thought: list[str] = []
    final: dict[str, Any] = {}
    thinking = False  # inside the dimmed thinking block
    shown_thinking = False
    spinner = term.spinner()
    spinner.start()
    try:
        for chunk in _stream("/api/chat", body):
            spinner.stop()
            message = chunk.get("message") or {}
            think = message.get("thinking") or ""
            if think:
                thought.append(think)
                if not session.hidethinking:
                    if not shown_thinking:
                        term.write((DIM if term.tty else "") + "Thinking...\n")
                        thinking = shown_thinking = True
                    term.write(think)
            text = message.get("content") or ""
            if text:
                if thinking:
                    term.write("\n...done thinking.\n\n" + (RESET if term.tty else ""))
                    thinking = False
                content.append(text)
                term.write(wrap.feed(text) if wrap else text)
            if chunk.get("done"):
                final = chunk
    finally:
        spinner.stop()
        if thinking:  # only thinking came (or Ctrl+C during it): close the block
            term.write("\n...done thinking.\n" + (RESET if term.tty else ""))
    term.write((wrap.flush() if wrap else "") + "\n")
    session.remember(body["messages"][-1], "".join(content), "".join(thought))
    if session.verbose and final:
        print("\n" + format_stats(final), file=sys.stderr, flush=True)


def _load(session: Session, term: Terminal) -> None:
    """An empty chat loads the model (ollama's own way), so load errors show before the first prompt."""
    body: dict[str, Any] = {"model": session.model, "messages": []}
    if session.keepalive is not None:
        body["keep_alive"] = session.keepalive
    spinner = term.spinner()
    spinner.start()
    try:
        _json("POST", "/api/chat", body)
    finally:
        spinner.stop()


_EMPTY = {
    "license": "No license was specified for this model.",
    "system": "No system message was specified for this model.",
    "template": "No prompt template was specified for this model.",
    "parameters": "No parameters were specified for this model.",
    "modelfile": "No Modelfile was found for this model.",
}


def _show(session: Session, field: str) -> None:
    info: dict[str, Any] = _json("POST", "/api/show", {"model": session.model})
    if field == "info":
        print_show(info, None)
        return
    if field == "system" and session.system:
        print(session.system)
        return
    if field == "parameters" and session.options:
        print("User defined parameters:")
        for name, value in session.options.items():
            for v in value if isinstance(value, list) else [value]:
                print(f"{name:<30} {v}")
        print()
    if not info.get(field):
        if field != "parameters" or not session.options:
            print(_EMPTY[field])
        return
    if field == "parameters" and session.options:
        print("Model defined parameters:")
    print_show(info, field)


def _perform(effect: Effect, session: Session, term: Terminal, previous: Session) -> list[str] | None:
    """A command's effect over HTTP; the model's capabilities when it changed the model, else None."""
    if effect.kind == "show":
        _show(session, effect.arg)
    elif effect.kind == "save":
        _json("POST", "/api/create", session.save_body(effect.arg))
        print(f"Created new model '{effect.arg}'")
    elif effect.kind == "load":
        try:
            _load(session, term)
        except ClientError:  # the model and its conversation stay as they were
            session.model, session.messages = previous.model, previous.messages
            raise
        return _capabilities(session.model)
    return None


def _interactive(session: Session, term: Terminal) -> int:
    try:
        import readline  # noqa: F401  # line editing and history for input()
    except ImportError:  # pragma: no cover - not on every platform
        pass
    caps = _capabilities(session.model)
    multi = MultiLine()
    print("Send a message (/? for help)", flush=True)
    while True:
        try:
            line = input("... " if multi.open else ">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            multi = MultiLine()
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        text = multi.feed(line)
        if text is None:
            continue
        if not text.strip():
            continue
        if text.startswith("/") and ("\n" not in text or text.startswith("/set system ")):
            previous = Session(session.model, messages=list(session.messages))
            said, effect = handle_command(session, text.strip())
            if said:
                print(said, flush=True)
            if effect.kind == "exit":
                return 0
            try:
                new_caps = _perform(effect, session, term, previous)
            except ClientError as exc:
                print(f"error: {exc}", flush=True)
                continue
            if new_caps is not None:
                caps = new_caps
            continue
        prompt, images = _images(session, text, caps)
        try:
            _answer(session, prompt, images, term)
        except KeyboardInterrupt:
            print()
            continue
        except ClientError as exc:
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            continue
        print()


def cmd_run(args: argparse.Namespace) -> int:
    session = Session(
        model=args.model,
        format=args.format,
        think=args.think,
        keepalive=args.keepalive,
        verbose=args.verbose,
        wordwrap=not args.nowordwrap,
        hidethinking=args.hidethinking,
    )
    term = Terminal()
    prompt = " ".join(args.prompt)
    if not sys.stdin.isatty():  # `echo text | ollamux run model [prompt]`: stdin first, as ollama joins them
        piped = sys.stdin.read()
        prompt = " ".join(p for p in (piped, prompt) if p)
        session.wordwrap = False
        if not prompt:
            _load(session, term)
            return 0
    if prompt:
        prompt, images = _images(session, prompt, _capabilities(session.model) if find_image_paths(prompt) else [])
        _answer(session, prompt, images, term)
        return 0
    _load(session, term)
    return _interactive(session, term)


def _parse_args_think(args: argparse.Namespace) -> None:
    """`--think` takes an optional value; a word that is not one was the prompt's first word."""
    if args.think is None:
        return
    try:
        args.think = parse_think(args.think)
    except ValueError:
        args.prompt.insert(0, args.think)
        args.think = True


def register(sub: Any) -> None:
    env = "the server is $OLLAMA_HOST (default 127.0.0.1:11434)"
    p = sub.add_parser("run", help="chat with a model (one prompt, or interactively)", description=env)
    p.add_argument("model")
    p.add_argument("prompt", nargs="*", help="answer this and exit (default: an interactive chat)")
    p.add_argument("--verbose", action="store_true", help="show timings and token counts after each answer")
    p.add_argument("--keepalive", metavar="DURATION", help="how long the model stays loaded (e.g. 5m, 1h, 0)")
    p.add_argument("--format", choices=("json",), help="the answer's format (json)")
    p.add_argument(
        "--think",
        nargs="?",
        const="true",
        metavar="true|false|high|medium|low",
        help="thinking on (default with the flag), off, or a level, for thinking models",
    )
    p.add_argument("--nowordwrap", action="store_true", help="do not wrap long lines at the terminal's width")
    p.add_argument("--hidethinking", action="store_true", help="do not show a thinking model's thinking")

    guarded = _guarded(cmd_run)

    def run(args: argparse.Namespace) -> int:
        _parse_args_think(args)
        result: int = guarded(args)
        return result

    p.set_defaults(func=run, extra_words="prompt")
