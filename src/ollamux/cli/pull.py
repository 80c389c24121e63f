"""`ollamux pull NAME`: ask the server to pull a model, drawing its progress as `ollama pull` does.

Each status line of the stream is printed once; each file's `pulling <digest>` objects move a progress
bar (rich), which is finished and left on screen when the next status comes, so the output reads like
ollama's: `pulling manifest`, a bar per file, `verifying sha256 digest`, `writing manifest`, `success`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .client import _guarded, _stream

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["PullView", "register"]


class PullView:
    """Renders the pull objects of one stream on a rich console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.bars: dict[str, TaskID] = {}

    def show(self, obj: dict[str, Any]) -> None:
        text = str(obj.get("status") or "")
        if "total" in obj and "completed" in obj:
            self._bar(text, int(obj.get("total") or 0), int(obj.get("completed") or 0))
        elif text:
            self.close()
            self.console.print(text, highlight=False)

    def _bar(self, text: str, total: int, completed: int) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TimeRemainingColumn

        if self.progress is None:
            self.progress = Progress(
                "{task.description}",
                TaskProgressColumn(),
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
        task = self.bars.get(text)
        if task is None:
            task = self.bars[text] = self.progress.add_task(text, total=total or None)
        self.progress.update(task, total=total or None, completed=completed)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()  # the bars stay as they were last drawn
            self.progress = None
            self.bars.clear()


def cmd_pull(args: argparse.Namespace) -> int:
    from rich.console import Console

    view = PullView(Console(stderr=True))  # as ollama: progress on stderr, stdout stays clean
    try:
        for obj in _stream("/api/pull", {"model": args.model, "stream": True}):
            view.show(obj)
    except KeyboardInterrupt:
        view.close()
        # the server keeps what it downloaded (`<file>.partial`): say so, or the user starts over elsewhere
        print(f"pull interrupted: `ollamux pull {args.model}` again continues where it stopped", file=sys.stderr)
        return 130
    finally:
        view.close()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pull",
        help="download a model from a hub (hf.co/{user}/{repo}[:{quant}]) into the server's models folder",
        description="the server is $OLLAMA_HOST (default 127.0.0.1:11434)",
    )
    p.add_argument("model")
    p.set_defaults(func=_guarded(cmd_pull))
