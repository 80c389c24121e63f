"""`ollamux run`'s interactive session as pure logic: its state, the slash commands, request bodies, stats.

Nothing here reads the terminal or the network: `run.py` feeds it lines and performs the effects it asks for
(show, load, save, exit), so every command's wording and effect is testable without a server. The wording
follows Ollama's `cmd/interactive.go`, so a user of `ollama run` finds the same words.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..ollama_options import OptionError, parse_text

__all__ = [
    "HELP",
    "IMAGE_SUFFIXES",
    "Effect",
    "MultiLine",
    "Session",
    "find_image_paths",
    "format_stats",
    "go_duration",
    "handle_command",
    "parse_think",
]

Think = bool | str | None

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
Add an image's file path to a prompt to send it to a vision model."""

HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set think             Enable thinking
  /set nothink           Disable thinking
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /unset format          Disable formatting"""

HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template"""

HELP_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor
  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit ollamux (/bye)"""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SHOW_FIELDS = ("info", "license", "modelfile", "parameters", "system", "template")


def parse_think(value: str | None) -> Think:
    """`--think[=true|false|high|medium|low]` as the request's `think`: a bool, a level, or None (unset)."""
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("", "true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    if v in ("high", "medium", "low"):
        return v
    raise ValueError(f"invalid value for --think: '{value}' (true, false, high, medium or low)")


@dataclass
class Session:
    """What one `ollamux run` keeps between prompts; each request is built from it."""

    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    format: str | None = None
    think: Think = None
    keepalive: str | None = None
    verbose: bool = False
    wordwrap: bool = True
    hidethinking: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)

    def chat_body(self, prompt: str, images: list[str] | None = None) -> dict[str, Any]:
        """The /api/chat request for `prompt` after the conversation so far (the prompt is not kept yet)."""
        user: dict[str, Any] = {"role": "user", "content": prompt}
        if images:
            user["images"] = images
        head = [{"role": "system", "content": self.system}] if self.system else []
        body: dict[str, Any] = {"model": self.model, "messages": [*head, *self.messages, user], "stream": True}
        if self.options:
            body["options"] = dict(self.options)
        if self.format:
            body["format"] = self.format
        if self.think is not None:
            body["think"] = self.think
        if self.keepalive is not None:
            body["keep_alive"] = self.keepalive
        return body

    def remember(self, user: dict[str, Any], answer: str, thinking: str = "") -> None:
        self.messages.append(user)
        reply: dict[str, Any] = {"role": "assistant", "content": answer}
        if thinking:
            reply["thinking"] = thinking
        self.messages.append(reply)

    def save_body(self, name: str) -> dict[str, Any]:
        """The /api/create request `/save NAME` sends: this model with the session's system, options, turns."""
        body: dict[str, Any] = {"model": name, "from": self.model, "stream": False}
        if self.system:
            body["system"] = self.system
        if self.options:
            body["parameters"] = dict(self.options)
        turns = [{"role": m["role"], "content": m["content"]} for m in self.messages]
        if turns:
            body["messages"] = turns
        return body


@dataclass(frozen=True)
class Effect:
    """What a slash command asks of the I/O side, besides the text it prints."""

    kind: Literal["none", "exit", "show", "load", "save"] = "none"
    arg: str = ""


def handle_command(session: Session, line: str) -> tuple[str, Effect]:
    """A line starting with `/`: the text to print, and the effect to perform. Never reaches the model."""
    words = line.split()
    cmd = words[0]
    if cmd in ("/bye", "/exit"):
        return "", Effect("exit")
    if cmd in ("/?", "/help"):
        topic = words[1] if len(words) > 1 else ""
        topics = {"set": HELP_SET, "/set": HELP_SET, "show": HELP_SHOW, "/show": HELP_SHOW}
        return topics.get(topic, HELP_SHORTCUTS if topic in ("shortcut", "shortcuts") else HELP), Effect()
    if cmd == "/clear":
        session.messages.clear()
        return "Cleared session context", Effect()
    if cmd == "/set":
        return _set(session, line, words), Effect()
    if cmd == "/unset":
        return _unset(session, words), Effect()
    if cmd == "/show":
        if len(words) != 2 or words[1] not in SHOW_FIELDS:
            return HELP_SHOW, Effect()
        return "", Effect("show", words[1])
    if cmd == "/load":
        if len(words) != 2:
            return "Usage:\n  /load <modelname>", Effect()
        session.model = words[1]
        session.messages.clear()
        return f"Loading model '{words[1]}'", Effect("load", words[1])
    if cmd == "/save":
        if len(words) != 2:
            return "Usage:\n  /save <modelname>", Effect()
        return "", Effect("save", words[1])
    return f"Unknown command '{cmd}'. Type /? for help", Effect()


_FLAGS: dict[str, tuple[str, Any, str]] = {
    "verbose": ("verbose", True, "Set 'verbose' mode."),
    "quiet": ("verbose", False, "Set 'quiet' mode."),
    "wordwrap": ("wordwrap", True, "Set 'wordwrap' mode."),
    "nowordwrap": ("wordwrap", False, "Set 'nowordwrap' mode."),
    "think": ("think", True, "Set 'think' mode."),
    "nothink": ("think", False, "Set 'nothink' mode."),
    "noformat": ("format", None, "Disabled format."),
}


def _set(session: Session, line: str, words: list[str]) -> str:
    if len(words) < 2:
        return HELP_SET
    what = words[1]
    if what in _FLAGS:
        attr, value, said = _FLAGS[what]
        if what == "think" and len(words) > 2:  # `/set think high`
            try:
                value = parse_think(words[2])
            except ValueError as exc:
                return str(exc).replace("--think", "/set think")
            said = f"Set 'think' mode to '{words[2]}'."
        setattr(session, attr, value)
        return said
    if what == "format":
        if len(words) != 3 or words[2] != "json":
            return "Invalid or missing format. For 'json' mode use '/set format json'"
        session.format = "json"
        return "Set format to 'json' mode."
    if what == "system":
        text = line.split(None, 2)[2] if len(words) > 2 else ""
        text = text.strip().removeprefix('"""').removesuffix('"""').strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1]
        session.system = text or None
        return "Set system message." if text else "Cleared system message."
    if what == "parameter":
        if len(words) < 4:
            return "Usage:\n  /set parameter <name> <value>"
        name, values = words[2], words[3:]
        try:
            session.options[name] = parse_text(name, values)
        except OptionError as exc:
            return f"Couldn't set parameter: {exc}"
        shown = str(values) if len(values) > 1 else values[0]
        return f"Set parameter '{name}' to '{shown}'"
    return f"Unknown command '/set {what}'. Type /? for help"


def _unset(session: Session, words: list[str]) -> str:
    what = words[1] if len(words) > 1 else ""
    if what == "format":
        session.format = None
        return "Disabled format."
    if what == "system":
        session.system = None
        return "Cleared system message."
    if what == "parameter" and len(words) == 3:
        session.options.pop(words[2], None)
        return f"Unset parameter '{words[2]}'"
    shown = f"/unset {what}" if what else "/unset"
    return f"Unknown command '{shown}'. Type /? for help"


class MultiLine:
    '''`"""` input: a line starting with `"""` opens a message, a line ending with `"""` closes it.

    `/set system """` opens one too: the lines up to the closing `"""` are the system message.'''

    SYSTEM = '/set system """'

    def __init__(self) -> None:
        self.lines: list[str] | None = None
        self.prefix = ""

    @property
    def open(self) -> bool:
        return self.lines is not None

    def feed(self, line: str) -> str | None:
        """The whole message once it is complete (a plain line is complete at once), else None."""
        if self.lines is None:
            stripped = line.lstrip()
            self.prefix = "/set system " if stripped.startswith(self.SYSTEM) else ""
            opener = self.SYSTEM if self.prefix else '"""'
            if not stripped.startswith(opener):
                return line
            rest = stripped[len(opener) :]
            if rest.endswith('"""') and rest:  # `"""one line"""`
                return self.prefix + rest[:-3]
            self.lines = [rest] if rest else []
            return None
        if line.rstrip().endswith('"""'):
            self.lines.append(line.rstrip()[:-3])
            text, self.lines = "\n".join(self.lines), None
            return self.prefix + text
        self.lines.append(line)
        return None


_PATH = re.compile(r"""(?:'[^']+'|"[^"]+"|(?:\\ |[^\s'"])+)""")


def find_image_paths(prompt: str) -> list[tuple[str, Path]]:
    """Words of `prompt` that name an existing image file (quoted, `\\ `-escaped or `~` paths too): (word, path)."""
    found: list[tuple[str, Path]] = []
    for m in _PATH.finditer(prompt):
        word = m.group(0)
        try:
            raw = shlex.split(word)[0] if word[0] in "'\"" or "\\" in word else word
        except (ValueError, IndexError):
            continue
        if not raw.lower().endswith(IMAGE_SUFFIXES):
            continue
        path = Path(raw).expanduser()
        if path.is_file():
            found.append((word, path))
    return found


def go_duration(ns: int) -> str:
    """Nanoseconds as Go's time.Duration prints them (`1.5s`, `250ms`, `12.5µs`), as Ollama's stats do."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(ns / 1e3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(ns / 1e6)}ms"
    secs = ns / 1e9
    hours, rest = divmod(secs, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{_trim(round(seconds, 9))}s"
    if hours or minutes:
        text = f"{int(minutes)}m{text}"
    if hours:
        text = f"{int(hours)}h{text}"
    return sign + text


def _trim(x: float) -> str:
    return f"{x:.9f}".rstrip("0").rstrip(".")


def format_stats(final: dict[str, Any]) -> str:
    """Ollama's stats block (api.Metrics.Summary) from a final chunk's metrics; lines for what it carries."""
    lines: list[str] = []

    def dur(key: str) -> int | None:
        v = final.get(key)
        return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    def add(label: str, value: str) -> None:
        lines.append(f"{label + ':':<22}{value}")

    for key, label in (("total_duration", "total duration"), ("load_duration", "load duration")):
        d = dur(key)
        if d is not None:
            add(label, go_duration(d))
    for prefix, label in (("prompt_eval", "prompt eval"), ("eval", "eval")):
        count, took = dur(f"{prefix}_count"), dur(f"{prefix}_duration")
        if count is not None:
            add(f"{label} count", f"{count} token(s)")
        if took is not None:
            add(f"{label} duration", go_duration(took))
            if count is not None and took > 0:
                add(f"{label} rate", f"{count / took * 1e9:.2f} tokens/s")
    return "\n".join(lines)
