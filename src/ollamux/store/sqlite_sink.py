"""The request log's SQLite sink: batches handed to a writer process (`writer_process.py`, which says why a
process), one framed command and answer each way over its stdin and stdout."""

from __future__ import annotations

import logging
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .sink import SinkDown
from .writer_process import frame, read_message

__all__ = ["SQLiteSink"]

log = logging.getLogger("ollamux.store")

_CHILD_SCRIPT = str(Path(__file__).with_name("writer_process.py"))
# a batch takes milliseconds; a reader's lock can hold it up to 3 x 5 s busy timeout: past this the child
# is taken for hung (a dead network mount) and replaced
_REPLY_TIMEOUT = 60.0


def _plain(v: Any) -> Any:
    """A row value as one of the types marshal carries (an instance of a subclass as its base type)."""
    if v is None or type(v) in (bool, int, float, str, bytes):
        return v
    if isinstance(v, float):
        return float(v)
    if isinstance(v, int):  # an IntEnum, say
        return int(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, bytes):
        return bytes(v)
    return repr(v)


class SQLiteSink:
    """A SQLite file written by a child process: a storage fault (SIGBUS on the WAL index) ends the child,
    never the server. A death mid-batch loses that batch (it may or may not be in the file)."""

    def __init__(self, path: Path, retention_days: float | None, retention_rows: int | None) -> None:
        self.path = path
        self.retention_days = retention_days
        self.retention_rows = retention_rows
        self.schema_version = 0
        self._child: subprocess.Popen[bytes] | None = None

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def open(self) -> None:
        self._reap()
        try:
            child = subprocess.Popen(
                # -I -S: the standard library only (no site-packages, no PYTHON* variables), ~0.3 MB less RSS
                [sys.executable, "-I", "-S", _CHILD_SCRIPT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                # its own session: a Ctrl-C in the terminal reaches the server, which then stops the child
                # after handing over the last rows, never the child first
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise SinkDown(f"cannot start the writer process: {exc}", transient=False) from None
        self._child = child
        reply = self._call(("open", str(self.path), self.retention_days, self.retention_rows))
        if reply[0] != "ok":
            self.close()
            raise SinkDown(str(reply[1]), transient=False)
        self.schema_version = int(reply[1])

    def check(self) -> str | None:
        child = self._child
        if child is None:
            return "the writer process is not running"
        if child.poll() is None:
            return None
        # died between batches (killed, say): nothing was in its hands, so nothing is lost
        reason = self._death_reason(child, None)
        self._reap()
        return reason

    def write(self, rows: list[tuple[Any, ...]]) -> tuple[int, int, str | None]:
        try:
            message = frame(("write", rows))
        except ValueError:  # a value marshal cannot carry (a str or int subclass, say): as its plain type
            message = frame(("write", [tuple(_plain(v) for v in row) for row in rows]))
        reply = self._send(message)
        if reply[0] != "ok":  # pragma: no cover - the protocol's own error: this batch is lost
            return 0, len(rows), str(reply[1])
        _, written, dropped, error, lines = reply
        if error is not None and not written and dropped == len(rows):
            # the whole batch refused (a dropped table, a read-only file): every batch would be, so the sink
            # is down, said once by the writer, which backs off and reopens (and migrates: a dropped table is
            # made again) it; the batch waits in the queue meanwhile, as with PostgreSQL
            raise SinkDown(str(error), transient=True)
        for line in lines:
            log.error("%s", line)
        return int(written), int(dropped), error

    def retain(self) -> str | None:
        if self._child is None:
            return None
        reply = self._call(("retain",))
        return None if reply[1] is None else str(reply[1])

    def close(self) -> None:
        """Ask the writer process to close the database and exit; kill it if it will not."""
        child = self._child
        if child is None:
            return
        try:
            if child.stdin is not None:
                child.stdin.write(frame(("close",)))
                child.stdin.close()
            child.wait(10.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self._reap()

    def abort(self) -> None:
        # stuck on the file at shutdown: the process must not outlive the server
        child = self._child
        if child is not None:
            child.kill()

    # ------------------------------------------------------------------------------ the writer process
    def _call(self, msg: tuple[Any, ...], timeout: float = _REPLY_TIMEOUT) -> tuple[Any, ...]:
        return self._send(frame(msg), timeout)

    def _send(self, message: bytes, timeout: float = _REPLY_TIMEOUT) -> tuple[Any, ...]:
        """Send one framed command to the writer process and read its answer; `SinkDown` when it cannot."""
        child = self._child
        if child is None or child.stdin is None or child.stdout is None:
            raise SinkDown("the writer process is not running", transient=False)
        try:
            child.stdin.write(message)
            child.stdin.flush()
            # each answer is read whole, so nothing is left buffered between calls and select sees it all
            ready, _, _ = select.select([child.stdout], [], [], timeout)
            if not ready:
                self._reap()
                raise SinkDown(f"the writer process did not answer within {timeout:.0f} s", transient=False)
            reply: tuple[Any, ...] = read_message(child.stdout)
        except (OSError, EOFError, ValueError) as exc:
            self._reap()
            raise SinkDown(self._death_reason(child, exc), transient=False) from None
        if reply[0] == "gone":
            self._reap()
            raise SinkDown(str(reply[1]), transient=False)
        return reply

    @staticmethod
    def _death_reason(child: subprocess.Popen[bytes], exc: BaseException | None) -> str:
        try:
            code = child.wait(2.0)
        except subprocess.TimeoutExpired:
            return f"the writer process stopped answering ({exc!r})"
        if code < 0:
            try:
                return f"the writer process died of {signal.Signals(-code).name}"
            except ValueError:
                return f"the writer process died of signal {-code}"
        return f"the writer process exited with status {code}"

    def _reap(self) -> None:
        """Forget the current writer process, killing it if it still runs (a hung one, say)."""
        child, self._child = self._child, None
        if child is None:
            return
        for f in (child.stdin, child.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        if child.poll() is None:
            child.kill()
        try:
            child.wait(5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel (a dead NFS mount)
            log.error("request log writer process %d did not exit after SIGKILL", child.pid)
