"""The Supervisor: the processes of the managed models, started, watched, timed out, restarted and stopped.

It holds each process's lifecycle only; which model starts for which request, and whom a start evicts, the
manager decides (`manager.py`, with `placement.py`). Everything here runs on the app's event loop, so the
bookkeeping needs no locks: a model's state (`state.ModelState`) changes only between awaits, and a start
checks the generation it was begun with before it counts, so a stop while loading wins.

A model that crashes while ready (`restart: on-failure`, the default) is started again in the background
(`_recover`), after a backoff (`restart_policy`), so readiness recovers without waiting for a request. That
restart is the same start a request makes (`begin_start`): a request arriving meanwhile starts it at once or
joins the start under way. It only takes a free slot (it never evicts; without room the model starts on
demand), it gives way to a request that needs its slot, and `shut()` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..backends.http import Clients
from ..config import RuntimeSettings
from ..errors import ServiceUnavailable
from . import launch
from .launch import RETRY_AFTER, ModelStartError
from .model import ManagedModel
from .placement import Placement
from .process import ChildProcess, free_port, tail
from .state import Event, Phase, RestartPolicy
from .views import FOREVER
from .vram import gpu_available

__all__ = ["Supervisor"]

log = logging.getLogger("ollamux.runtime")


class Supervisor:
    """The processes of one app's managed models (`models`, the dict the catalogue and manager share)."""

    def __init__(
        self,
        models: dict[str, ManagedModel],
        settings: RuntimeSettings,
        client: Clients,
        placement: Placement,
        *,
        python: str = sys.executable,
    ) -> None:
        self.models = models
        self.settings = settings
        self.client = client
        self.placement = placement
        self.python = python  # the interpreter the built-in engine runs on
        self.restart_policy = RestartPolicy()  # when a crashed model is restarted (tests make it quicker)
        # told (model, seconds) each time a model becomes ready: the metrics' load-time histogram
        self.on_loaded: Callable[[str, float], None] | None = None
        self.closing = False
        self.gpu: bool | None = None  # whether the xllamacpp build offloads to a GPU (asked once, off the loop)
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------------------------------------- start
    def argv(self, m: ManagedModel, port: int, ctx: int) -> list[str]:
        return launch.argv(m, port, ctx, python=self.python, slots=self.placement.slots_of(m))

    def begin_start(self, m: ManagedModel, ctx: int) -> None:
        """Start `m` with context `ctx` as `m.start_task`, which requests and restarts alike await."""
        m.stale = False  # this start reads the spec as it is now
        m.state.apply(Event.START)
        m.state.ctx = ctx
        task = asyncio.create_task(self._start(m, ctx, m.state.generation), name=f"start {m.name}")
        # a start nobody awaits any more (clients gone) must not log "exception never retrieved"
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        m.start_task = task

    async def _start(self, m: ManagedModel, ctx: int, gen: int) -> None:
        spec = m.spec
        port = free_port()
        argv = self.argv(m, port, ctx)
        log_path = self.settings.log_dir / m.log_name
        deadline = time.monotonic() + spec.startup_timeout
        log.info("model '%s': starting on port %d with context %d (log %s)", m.name, port, ctx, log_path)
        proc: ChildProcess | None = None
        ok = False
        m.set_stage("spawning")
        try:
            if self.gpu is None:
                self.gpu = await asyncio.to_thread(gpu_available)  # imports xllamacpp once: not on the loop
            try:
                proc = await ChildProcess.spawn(argv, dict(spec.env), log_path)
            except OSError as exc:
                raise ModelStartError(f"model '{m.name}' cannot start: {argv[0]}: {exc.strerror or exc}") from None
            m.proc = proc
            m.set_stage("loading")  # the process runs; llama.cpp's /health answers 503 until the model is in
            healthy = await proc.wait_healthy(self.client.session, launch.health_url(spec, port), deadline)
            if m.state.generation != gen or m.state.phase is not Phase.STARTING:
                raise ServiceUnavailable(
                    f"model '{m.name}' was stopped while starting", headers={"Retry-After": RETRY_AFTER}
                )
            if healthy:
                m.state.apply(Event.READY)
                m.state.ready_at = time.monotonic()
                m.http = launch.backend_for(m.backend, port, spec, self.client)
                self.background(self._watch(m, proc, gen))
                ok = True
                self.arm(m)  # no request releases a background restart: it idles out like any other start
                log.info("model '%s': ready (pid %d)", m.name, proc.pid)
                if self.on_loaded is not None:
                    self.on_loaded(m.name, spec.startup_timeout - (deadline - time.monotonic()))
                return
            if proc.exited.done():
                lines = tail(log_path)
                m.state.apply(Event.DIED)
                failure: ServiceUnavailable | ModelStartError = ModelStartError(
                    f"model '{m.name}' failed to start: its process exited with code {proc.returncode}. "
                    f"Last lines of {log_path}:\n{lines}"
                )
            else:
                m.state.apply(Event.TIMEOUT)
                failure = ServiceUnavailable(
                    f"model '{m.name}' did not become ready within {spec.startup_timeout:g}s "
                    f"(runtime.startup_timeout); see {log_path}",
                    headers={"Retry-After": RETRY_AFTER},
                )
            # told once here, however many requests waited for this start (each gets the error); a restart's
            # failure is `_recover`'s to tell, with its backoff
            if not m.state.recovering:
                log.warning("%s", failure.message)
            raise failure
        finally:
            if not ok:
                if m.state.phase is Phase.STARTING and m.state.generation == gen:
                    m.state.apply(Event.DIED)  # spawn failed, or this start was cancelled
                if proc is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(proc.stop(grace=2))
                if m.proc is proc:
                    m.proc = None
                m.http = None
            self.notify()

    async def _watch(self, m: ManagedModel, proc: ChildProcess, gen: int) -> None:
        await asyncio.shield(proc.exited)  # cancelling the watcher must not cancel the wait for the exit
        if m.state.generation == gen and m.state.phase is Phase.READY and m.proc is proc:
            self._died(m)

    # ------------------------------------------------------------------------------------------ stop
    async def stop(self, m: ManagedModel) -> None:
        """Stop `m` whatever it is doing (a start is called off); returns once its process is gone."""
        phase = m.state.phase
        if phase is Phase.STOPPING:
            assert m.stop_task is not None
            await asyncio.shield(m.stop_task)
            return
        if phase is Phase.STOPPED:
            return
        self.disarm(m)
        if phase is Phase.FAILED:
            m.state.apply(Event.STOP)
            return
        if phase is Phase.STARTING:
            m.state.apply(Event.STOP)
            if m.start_task is not None:
                m.start_task.cancel()
                with contextlib.suppress(BaseException):
                    await m.start_task
            if m.state.phase is Phase.STOPPING:
                m.state.apply(Event.EXITED)
            elif m.state.phase is Phase.FAILED:
                m.state.apply(Event.STOP)
            self.notify()
            return
        m.state.apply(Event.STOP)
        m.stop_task = asyncio.create_task(self._terminate(m, m.proc), name=f"stop {m.name}")
        await asyncio.shield(m.stop_task)

    async def _terminate(self, m: ManagedModel, proc: ChildProcess | None) -> None:
        try:
            if proc is not None:
                code = await proc.stop()
                log.info("model '%s': stopped (exit code %s)", m.name, code)
        finally:
            m.state.apply(Event.EXITED)
            m.proc = None
            m.http = None
            m.expires_at = None
            m.unloading = False  # done: its next start (a request, a preload) is not unloaded again
            self.notify()

    # ------------------------------------------------------------------------------------- idle timers
    def disarm(self, m: ManagedModel) -> None:
        if m.timer is not None:
            m.timer.cancel()
            m.timer = None
        m.expires_at = None

    def arm(self, m: ManagedModel) -> None:
        """Once a model is idle, schedule its stop per the last keep_alive (Ollama's session duration)."""
        self.disarm(m)
        if m.state.busy or m.state.phase is not Phase.READY:
            return
        # no longer configured, configured otherwise, or asked to unload: stop once idle
        gone = m.removed or m.stale or m.unloading
        ka = 0.0 if gone else (m.keep_alive if m.keep_alive is not None else m.spec.ttl)
        if m.spec.pin and not gone:
            ka = -1.0  # pinned: a request's keep_alive does not stop it either; only an explicit unload does
        if ka < 0:
            m.expires_at = time.time() + FOREVER
            return
        m.expires_at = time.time() + ka
        gen = m.state.generation
        if ka == 0:
            self.background(self._expire(m, gen))
        else:
            m.timer = asyncio.get_running_loop().call_later(ka, lambda: self.background(self._expire(m, gen)))

    async def _expire(self, m: ManagedModel, gen: int) -> None:
        if m.state.generation == gen and m.state.phase is Phase.READY and not m.state.busy:
            log.info("model '%s': idle, stopping", m.name)
            await self.stop(m)

    # ----------------------------------------------------------------------------- crash and recovery
    def reap(self, m: ManagedModel) -> None:
        """A process found dead before its watcher ran: same as the watcher would do."""
        if m.state.phase is Phase.READY and m.proc is not None and m.proc.exited.done():
            self._died(m)

    def _died(self, m: ManagedModel) -> None:
        """The process of a ready model exited on its own: a crash. Restart it in the background, if allowed."""
        proc = m.proc
        m.state.apply(Event.DIED)
        m.proc = None
        m.http = None
        self.disarm(m)
        then = "the next request restarts it"
        if m.spec.restart == "on-failure" and not self.closing and not m.removed:
            delay = m.state.crashed(time.monotonic(), self.restart_policy)
            then = f"restarting it in {delay:g}s"
            # one recovery per model: a crash before the last one's task has ended is left to that task
            if m.restart_task is None or m.restart_task.done():
                m.restart_task = self.background(self._recover(m))
        if proc is not None:
            log.warning(
                "model '%s' exited unexpectedly (code %s); %s. Last lines of %s:\n%s",
                m.name,
                proc.returncode,
                then,
                proc.log_path,
                tail(proc.log_path, 10),
            )
        self.notify()

    async def _recover(self, m: ManagedModel) -> None:
        """Bring back a model that crashed: wait out the backoff, start it, and again while its starts fail.

        It ends once the model is ready, or stopped on purpose (unload, close, eviction of the start), or
        when there is no free slot for it: it never evicts anyone, so it leaves the model stopped, to start on
        demand. Every start goes through `begin_start`, the one a request uses too, so the two coalesce.
        """
        st = m.state
        policy = self.restart_policy
        why: str | None = None  # set when it gives up: the model is left stopped, to start on demand
        while why is None and st.recovering and not self.closing:
            if m.removed:
                why = "its file left the models folder"  # the same record comes back if the file does
            elif st.phase is Phase.STARTING:
                task = m.start_task
                assert task is not None
                # wait for the start, ours or a request's, without taking its error (or cancelling it)
                await asyncio.wait([task])
                self._log_failed_restart(m, task)
            elif st.phase is not Phase.FAILED:
                return  # not reached while recovering (ready and stop end it); a guard against a busy loop
            else:
                delay = policy.delay(st.restarts)
                m.restart_at = time.time() + delay
                try:
                    await asyncio.sleep(delay)
                finally:
                    m.restart_at = None
                if not st.recovering or st.phase is not Phase.FAILED or self.closing or m.removed:
                    continue  # a request started it meanwhile, or it was stopped: look again
                if m.keep_alive == 0:
                    why = "its last request asked to unload it"
                elif not (decision := self.placement.plan(m.backend, st.ctx)).start:
                    why = self.placement.no_room(m, decision)
                else:
                    log.info("model '%s': restarting after a crash (try %d)", m.name, st.restarts + 1)
                    self.begin_start(m, st.ctx)
        if why is None:
            return  # ready again, stopped on purpose, or shutting down (close stops it)
        log.info("model '%s': not restarted: %s; the next request starts it", m.name, why)
        st.apply(Event.STOP)  # stopped, not failed: nothing is wrong that a request would not fix
        self.notify()

    def _log_failed_restart(self, m: ManagedModel, start: asyncio.Task[None]) -> None:
        st = m.state
        if not (st.recovering and st.phase is Phase.FAILED and st.failed_restarts > 0):
            return  # it got ready (and maybe crashed again since), or was stopped: nothing failed
        exc = None if start.cancelled() else start.exception()
        policy = self.restart_policy
        failing = st.failed_restarts >= policy.fail_after
        log.log(
            logging.ERROR if st.failed_restarts == policy.fail_after else logging.WARNING,
            "model '%s': restart %d failed%s; trying again in %gs: %s",
            m.name,
            st.restarts,
            ", reporting it failed until one succeeds" if failing else "",
            policy.delay(st.restarts),
            getattr(exc, "message", None) or exc,
        )

    # ------------------------------------------------------------------------- changes and background
    def notify(self) -> None:
        """Something changed (a start ended, a model stopped, a slot came free): wake every waiter."""
        # wake every waiter once; later waiters wait on a fresh event
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, seconds: float) -> None:
        """Until the next `notify()`, or for `seconds` at most."""
        ev = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout=seconds)

    def background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as a task the supervisor keeps (and cancels on `shut()`)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("runtime task failed: %s", t.exception())

        task.add_done_callback(done)
        return task

    # -------------------------------------------------------------------------------------- shutdown
    def shut(self) -> None:
        """No start, restart or idle stop from now on: the timers and background tasks are called off."""
        self.closing = True
        self.notify()
        for m in self.models.values():
            self.disarm(m)
        for t in list(self._tasks):
            t.cancel()

    async def stop_all(self) -> None:
        """Stop every model (SIGTERM, then SIGKILL after a grace period), after `shut()`: nothing is left behind."""
        await asyncio.gather(*(self.stop(m) for m in self.models.values()), return_exceptions=True)
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
