"""Running an app on a socket: uvloop, the open-files limit, handler cancellation on disconnect, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .config import Settings
from .tls import server_context

__all__ = ["DescriptorAlarm", "ListenError", "listen", "open_files_limit", "raise_open_files_limit", "run"]

log = logging.getLogger("ollamux")


# Collect young objects every 50,000 allocations instead of CPython's 700. A request allocates a few hundred
# container objects that die by reference counting; with the default, a collection runs every few requests
# and promotes the objects of the ~32 requests in flight to older generations, whose collections then walk
# the whole heap. Measured with bench/: ~7% more requests/s on the OpenAI pass-through at 32 connections.
# Only cyclic garbage waits longer (a few MB at most).
GC_THRESHOLDS = (50_000, 20, 100)

# macOS rejects a soft RLIMIT_NOFILE above kern.maxfilesperproc even when the hard limit is "unlimited";
# OPEN_MAX (<sys/syslimits.h>) is always accepted there (Go asks sysctl instead, which Python cannot cheaply).
_OPEN_MAX = 10240
# An unlimited hard limit elsewhere (BSDs): Linux's default fs.nr_open, more than a proxy ever holds.
_UNLIMITED_CAP = 1 << 20
# Below this many descriptors a proxy runs out under ordinary load: each client connection holds one and so
# does each upstream connection it makes. Worth a warning with the way out.
_LOW_LIMIT = 4096


def tune_gc() -> None:
    """Fewer, cheaper collections for a long-running server (see GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()  # what start-up built (modules, config, app) lives for good: later collections skip it
    gc.set_threshold(*GC_THRESHOLDS)


def open_files_limit() -> tuple[int, int] | None:
    """The (soft, hard) RLIMIT_NOFILE, -1 for unlimited; None where the platform has no rlimits (Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    return (-1 if soft == inf else soft), (-1 if hard == inf else hard)


def raise_open_files_limit() -> tuple[int, str] | None:
    """Raise the soft open-files limit to the hard one, as Go programs (Ollama among them) do at start.

    The common default soft limit is 1024 while the hard one is far higher: a thousand idle connections would
    otherwise exhaust the process, and every later connection is dropped. Never fails: if the kernel refuses,
    the limit stays as it was. Returns the level and text of the operator line that says what is in force.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows has no rlimits; its handle limit is far higher anyway
        return None
    inf = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == inf or soft == hard:
        return _limit_line(soft, hard, inf)
    want = _UNLIMITED_CAP if hard == inf else hard
    if sys.platform == "darwin":
        want = min(want, _OPEN_MAX)
    failure: OSError | ValueError | None = None
    # the second try is for kernels that cap the soft limit below the hard one (macOS, some BSDs)
    for target in dict.fromkeys((want, min(want, _OPEN_MAX))):
        if target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            failure = exc
            continue
        return _limit_line(target, hard, inf, raised_from=soft)
    return _limit_line(soft, hard, inf, failure=failure)


def _limit_line(
    soft: int, hard: int, inf: int, *, raised_from: int | None = None, failure: OSError | ValueError | None = None
) -> tuple[int, str]:
    def show(n: int) -> str:
        return "unlimited" if n == inf else str(n)

    level = logging.INFO
    line = f"open-files limit {show(soft)}"
    if raised_from is not None:
        line += f" (raised from {raised_from}; hard limit {show(hard)})"
    elif failure is not None:
        level = logging.WARNING
        line += f" (could not raise it toward the hard limit {show(hard)}: {failure})"
    else:
        line += " (the hard limit)" if soft == hard else f" (hard limit {show(hard)})"
    if soft != inf and soft < _LOW_LIMIT:
        level = logging.WARNING
        line += "; each connection uses one descriptor: raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)"
    return level, line


class DescriptorAlarm:
    """One operator line, at most every `interval` seconds, while the process is out of file descriptors.

    Out of descriptors, a server cannot accept. Under uvloop, libuv then accepts each waiting connection
    with a descriptor it keeps in reserve and closes it at once, telling no one: clients see resets and the
    log stays silent. asyncio's own loop instead calls the exception handler for every failed accept, once a
    second, with a traceback. So the alarm both serves as the loop's exception handler (for asyncio's
    reports) and probes once a second whether a descriptor can still be opened (for uvloop's silence).
    """

    def __init__(self, interval: float = 5.0, probe_every: float = 1.0) -> None:
        self.interval = interval
        self.probe_every = probe_every
        self._logged = -float("inf")  # when the last line was written
        self._seen = -float("inf")  # when the last report came, logged or not
        self._since = 0.0  # when this spell of exhaustion began

    def report(self, err: int) -> None:
        now = time.monotonic()
        if now - self._seen > self.interval + 2 * self.probe_every:  # reports stopped for a while: a new spell
            self._since = now
        self._seen = now
        if now - self._logged < self.interval:
            return
        self._logged = now
        lasting = f" for {now - self._since:.0f} s now" if now > self._since else ""
        if err == errno.ENFILE:
            log.error(
                "the system's file table is full (ENFILE)%s: new connections are being dropped; "
                "raise fs.file-max or find what holds the descriptors",
                lasting,
            )
            return
        limits = open_files_limit()
        limit = "unknown" if limits is None else ("unlimited" if limits[0] == -1 else str(limits[0]))
        log.error(
            "out of file descriptors (EMFILE)%s: the open-files limit %s is reached and new connections are "
            "being dropped; raise it (ulimit -n, systemd LimitNOFILE=) or hold fewer connections open",
            lasting,
            limit,
            extra={"open_files_limit": limit},
        )

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: descriptor exhaustion (asyncio's "socket.accept() out of system
        resource") becomes the rate-limited line; everything else goes to the default handler as before."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            self.report(exc.errno)
            return
        loop.default_exception_handler(context)

    def probe(self) -> None:
        try:
            fd = os.open(os.devnull, os.O_RDONLY)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.report(exc.errno)
            return
        os.close(fd)

    async def watch(self, app: web.Application) -> AsyncIterator[None]:
        """A cleanup context: the probe runs while the app serves."""

        async def probe_forever() -> None:
            while True:
                await asyncio.sleep(self.probe_every)
                self.probe()

        task = asyncio.create_task(probe_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class ListenError(Exception):
    """The server cannot listen on its address; the message is one line that says what to do."""

    def __init__(self, address: str, reason: str, hint: str = "") -> None:
        super().__init__(f"cannot listen on {address}: {reason}" + (f" ({hint})" if hint else ""))
        self.address = address
        self.reason = reason


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _hint(exc: OSError, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "is another ollamux or ollama running? use --port or OLLAMA_HOST"
    if exc.errno in (errno.EACCES, errno.EPERM):
        if 0 < port < 1024:
            return "ports below 1024 need root or CAP_NET_BIND_SERVICE; use a higher one with --port or OLLAMA_HOST"
        return "use another address or port with --host, --port or OLLAMA_HOST"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "that address is not one of this machine's; use 127.0.0.1, 0.0.0.0 or one of its own addresses"
    return ""


def listen(host: str, port: int, backlog: int = 128) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to, as asyncio's create_server would make them.

    Bound here rather than inside aiohttp's run_app so a busy or forbidden address is one ListenError,
    before any start-up work, instead of an OSError traceback out of the middle of run_app.
    """
    address = _show(host, port)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        reason = f"unknown host: {(exc.strerror or str(exc)).lower()}"
        raise ListenError(address, reason, "use an IP address, or a name this machine resolves") from None
    socks: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            if os.name == "posix" and sys.platform != "cygwin":
                # asyncio's default: a restart binds at once despite connections in TIME_WAIT (on Windows
                # the option would let another process steal the port)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                # as asyncio does: "::" must not also claim the IPv4 port that "0.0.0.0" binds separately
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        for s in socks:
            s.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ListenError(address, reason, _hint(exc, port)) from None
    return socks


def run(app: web.Application, settings: Settings) -> None:
    """Serve `app` until SIGINT or SIGTERM; raise ListenError if its address cannot be listened on (and
    ConfigError if its TLS files cannot be loaded)."""
    ssl_context = server_context(settings.server)  # before listening: a bad file is one line, no traceback
    tune_gc()
    limit = raise_open_files_limit()  # first: every socket and file from here on counts against it
    host = settings.server.host
    backlog = 128
    socks = listen(host, settings.server.port, backlog)
    if limit is not None:  # logged once listening, so a busy port is the one line on stderr
        log.log(limit[0], "%s", limit[1])
    port = int(socks[0].getsockname()[1])  # the port bound, should the config say 0
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is optional on platforms without it
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    alarm = DescriptorAlarm()
    loop.set_exception_handler(alarm.exception_handler)
    app.cleanup_ctx.append(alarm.watch)
    url = f"{'https' if ssl_context is not None else 'http'}://{_show(host, port)}"

    def listening(*_: Any) -> None:
        print(f"ollamux listening on {url}", file=sys.stderr, flush=True)

    web.run_app(
        app,
        sock=socks,
        backlog=backlog,
        ssl_context=ssl_context,
        loop=loop,
        access_log=None,  # the request log and operator log cover this, off the hot path
        shutdown_timeout=settings.server.shutdown_grace,  # SIGTERM: streams in flight get this long
        handler_cancellation=True,  # a client that goes away cancels its upstream request
        print=listening,
    )
