"""Child process I/O of a managed model: spawn on a free port, log to a file, poll health, stop.

Children never outlive ollamux: each runs in its own process group (stopping it stops whatever it spawned)
and, on Linux, asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), which covers ollamux
itself being SIGKILLed, when no cleanup code can run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import aiohttp

__all__ = ["ChildProcess", "free_port", "tail"]

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the child binds it a moment later; a clash makes the start fail)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    # looked up in the parent: between fork and exec the child should not load libraries. ctypes is imported
    # here, when a model process is first started, not by every server at start (~0.3 MB of RSS)
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # the parent may have died before prctl took effect: then nobody would ever kill us
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def tail(path: Path, lines: int = 20, max_bytes: int = 16384) -> str:
    """The last lines of a log file (what a failed start printed)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class ChildProcess:
    """One running server process; `exited` completes when it is gone, for whatever reason."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path, argv: Sequence[str]) -> None:
        self.proc = proc
        self.log_path = log_path
        self.argv = tuple(argv)
        self.exited: asyncio.Task[int] = asyncio.ensure_future(proc.wait())

    @classmethod
    async def spawn(cls, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> ChildProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # a local append-only file, opened in microseconds; the child inherits the descriptor
        with open(log_path, "ab") as log:  # noqa: ASYNC230
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} ollamux starts: {' '.join(argv)}\n".encode())
            log.flush()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        return cls(proc, log_path, argv)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def wait_healthy(self, client: aiohttp.ClientSession, url: str, deadline: float) -> bool:
        """Poll `url` until it answers 200 (True), the process exits or the deadline passes (False)."""
        delay = 0.05
        while not self.exited.done():
            if time.monotonic() >= deadline:
                return False
            try:
                async with client.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    await resp.read()
                    if resp.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            # sleep, but wake at once when the child dies
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited), timeout=delay)
            delay = min(delay * 1.5, 0.5)
        return False

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self, grace: float = 5.0) -> int:
        """SIGTERM to the process group, SIGKILL after `grace` seconds; returns the exit code."""
        if not self.exited.done():
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), timeout=grace)
            except TimeoutError:
                self._signal_group(signal.SIGKILL)
                await self.exited
        else:
            self._signal_group(signal.SIGKILL)  # whatever it left behind in its group
        return self.exited.result()

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): SIGKILL the whole group."""
        self._signal_group(signal.SIGKILL)
