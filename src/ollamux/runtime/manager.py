"""The ModelManager: starts, shares, times out, evicts and stops the models ollamux runs itself.

It holds the lifecycle only: which models there are, and what their files say, is its `Catalogue`
(`catalogue.py`), which shares the `ManagedModel` records with it. Everything here runs on the app's event
loop, so the bookkeeping needs no locks: the state of each model (`state.ModelState`) changes only between
awaits, and the eviction choice (`policy.plan_start`) is made on a snapshot taken in the same step as the
action that follows it. The catalogue's disk reads run in a worker thread that never touches that state.

A model that crashes while ready (`restart: on-failure`, the default) is started again in the background
(`_recover`), after a backoff (`restart_policy`), so readiness recovers without waiting for a request. That
restart is the same start a request makes: a request arriving meanwhile starts it at once or joins the
start under way. It only takes a free slot (it never evicts; without room the model starts on demand),
it gives way to a request that needs its slot, and `close()` ends it.

Residency beyond LRU (`policy.py` decides, this wires it): a pinned model is never evicted and its idle timer
never stops it; `preload` and the companions of a group member start through `_start_if_free`, the same
start in a free slot only; the start's stage ("spawning", "loading") is what `loading()` (/api/ps) shows.
With `runtime.memory_budget`, each model's resident memory is estimated (`memory.estimate`, from its file,
header and context) and the policy evicts idle models until a newcomer fits, or refuses it with a 503 that
says who holds the memory; that estimate is also the `size` /api/ps reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from ..backends.base import Lease
from ..backends.http import HTTPBackend
from ..backends.openai import OpenAIBackend
from ..config import BackendSettings, RuntimeSettings, RuntimeSpec, Settings, Timeouts
from ..errors import BackendError, ModelNotFound, ServiceUnavailable
from ..registry import ModelEntry, Registry
from . import engine_options
from .catalogue import Catalogue
from .gguf_meta import DigestCache
from .memory import estimate
from .model import LoadingModel, ManagedModel, ModelStatus, RunningModel
from .policy import Candidate, Decision, Group, Shortfall, companions, plan_start
from .process import ChildProcess, free_port, tail
from .slots import slots_for
from .state import Event, Phase, RestartPolicy
from .vram import gpu_available, offloaded_bytes

# ManagedModel, ModelStatus and RunningModel live in `model.py` (the catalogue builds the records too)
__all__ = ["FOREVER", "ManagedModel", "ModelManager", "ModelStartError", "ModelStatus", "RunningModel"]

log = logging.getLogger("ollamux.runtime")

# Ollama's "forever" is a duration of MaxInt64 nanoseconds: /api/ps shows an expiry ~292 years ahead
FOREVER = 9_223_372_036.0
RETRY_AFTER = "5"


class ModelStartError(BackendError):
    """The model's process exited while starting; the message carries the last lines it printed."""

    status = 500


class ModelManager:
    """Lifecycle of every managed model of one app: what `state.runtime` is."""

    def __init__(
        self,
        settings: Settings,
        client: aiohttp.ClientSession,
        registry: Registry,
        probed: dict[tuple[str, str], Mapping[str, Any]],
        *,
        digest_cache: DigestCache | None = None,
        python: str = sys.executable,
    ) -> None:
        self.settings: RuntimeSettings = settings.runtime
        self.client = client
        self.registry = registry
        self.probed = probed
        self.python = python
        self.restart_policy = RestartPolicy()  # when a crashed model is restarted (tests make it quicker)
        # told (model, seconds) each time a model becomes ready: the metrics' load-time histogram
        self.on_loaded: Callable[[str, float], None] | None = None
        self.on_new_models: Callable[[], None] | None = None  # the app registers their backends
        # no disk access here: the first `rescan()` reads the GGUF headers, in a thread
        self.catalogue = Catalogue(
            settings, registry, probed, retire=self._arm, changed=self._new_models, digest_cache=digest_cache
        )
        self.models: dict[str, ManagedModel] = self.catalogue.models  # one dict: the catalogue adds to it
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._gpu: bool | None = None  # whether the xllamacpp build offloads to a GPU (asked once, off the loop)

    # ------------------------------------------------------------------------------------- catalogue
    async def rescan(self, *, force: bool = False) -> None:
        """Bring the models up to date with the disk, without blocking the loop (`Catalogue.rescan`)."""
        await self.catalogue.rescan(force=force)

    async def compute_config_digests(self) -> None:
        """Digests of configured GGUF files (slow once per file, then cached): off the request path."""
        await self.catalogue.compute_config_digests()

    def set_created(self, models: Sequence[tuple[ModelEntry, RuntimeSpec]]) -> None:
        """The models made from GGUF blobs with /api/create (`Catalogue.set_created`)."""
        self.catalogue.set_created(models)

    def _new_models(self) -> None:
        if self.on_new_models is not None:
            self.on_new_models()

    async def reconfigure(self, settings: Settings) -> list[str]:
        """A config reload: the configured `runtime:` models become those of `settings` (the registry has
        them already). One whose spec is unchanged keeps running untouched; one whose spec changed restarts
        with it once its requests end; one no longer configured stops once its requests end; a new one
        starts on its first request. Returns one line per change, for the operator log."""
        changes: list[str] = []
        wanted = {m.backend: m for m in settings.models if m.runtime is not None and not m.is_wildcard}
        for backend, gone in self.models.items():
            if gone.entry.source == "config" and backend not in wanted and not gone.removed:
                gone.removed = True
                self._arm(gone)  # idle: stops now; busy: once its last request is released
                changes.append(f"model '{backend.removeprefix('runtime:')}' removed: stops once its requests end")
        for backend, ms in wanted.items():
            spec, entry = ms.runtime, self.registry.find(ms.name)
            if spec is None or entry is None:  # pragma: no cover - config models always resolve
                continue
            model = self.models.get(backend)
            if model is None or model.entry.source != "config":
                self.models[backend] = ManagedModel(backend=backend, entry=entry, spec=spec, gguf=spec.gguf)
                self.catalogue.describe_config()
                changes.append(f"model '{ms.name}' added")
                continue
            model.entry, model.removed = entry, False
            if model.spec != spec:
                model.spec, model.gguf = spec, spec.gguf
                self.catalogue.describe_config()
                if model.state.holds_slot:
                    model.stale = True
                    self._arm(model)
                changes.append(f"model '{ms.name}' runtime changed: restarts with it once its requests end")
        await self.rescan()  # the new or changed GGUF files described, in a worker thread
        self._new_models()  # their backends registered
        return changes

    # ---------------------------------------------------------------------------------------- queries
    def manages(self, backend: str) -> bool:
        return backend in self.models

    def is_ready(self, backend: str) -> bool:
        """Running and serving: a request now will not wait for a start."""
        m = self.models.get(backend)
        return m is not None and m.state.phase is Phase.READY and m.proc is not None and not m.proc.exited.done()

    def model(self, backend: str) -> ManagedModel:
        m = self.models.get(backend)
        if m is None or m.removed:
            raise ModelNotFound(backend.removeprefix("runtime:"))
        return m

    def gguf_of(self, backend: str) -> Path | None:
        """The GGUF file of a managed model, when known (what /api/show names in its Modelfile's FROM)."""
        m = self.models.get(backend)
        return m.gguf if m is not None else None

    def running(self) -> list[RunningModel]:
        out = []
        now = time.time()
        for m in self.models.values():
            if m.state.phase is not Phase.READY or m.proc is None:
                continue
            if m.state.busy or m.expires_at is None:
                ka = -1.0 if m.spec.pin else m.keep_alive if m.keep_alive is not None else m.spec.ttl
                expires = now + FOREVER if ka < 0 else now + ka
            else:
                expires = m.expires_at
            ngl = dict(m.spec.options).get("n_gpu_layers", -1)  # llama.cpp's default: as many as fit
            vram = offloaded_bytes(m.size, m.n_layers, int(ngl), gpu=bool(self._gpu)) if m.spec.cmd is None else 0
            out.append(
                RunningModel(
                    entry=m.entry,
                    expires_at=expires,
                    ctx=m.state.ctx,
                    size=self.memory_of(m),
                    pid=m.proc.pid,
                    size_vram=vram,
                )
            )
        return out

    def loading(self) -> list[LoadingModel]:
        """The models whose process is starting, with the stage it is at (what /api/ps lists as `loading`)."""
        return [
            LoadingModel(entry=m.entry, stage=m.stage, since=m.stage_since, ctx=m.state.ctx, size=self.memory_of(m))
            for m in self.models.values()
            if m.state.phase is Phase.STARTING and not m.removed
        ]

    def statuses(self) -> list[ModelStatus]:
        """Every managed model's state, by name (a model whose file left the folder, once stopped, is gone)."""
        out = []
        for m in sorted(self.models.values(), key=lambda m: m.name):
            st = m.state
            if m.removed and not st.holds_slot:
                continue
            out.append(
                ModelStatus(
                    model=m.name,
                    state=st.status(self.restart_policy),
                    active=st.active,
                    waiting=st.waiting,
                    ctx=st.ctx or None,
                    pid=m.proc.pid if m.proc is not None else None,
                    expires_at=m.expires_at,
                    restarts=st.restarts,
                    restart_at=m.restart_at if st.recovering else None,  # a stop calls off the sleep's restart
                )
            )
        return out

    def slots_of(self, m: ManagedModel) -> int:
        """The requests `m` serves at once (`slots.slots_for`: its own parallel, runtime.parallel, or 4)."""
        return slots_for(m.spec, self.settings.parallel, embedding_only=m.embedding_only)

    def memory_of(self, m: ManagedModel, ctx: int | None = None) -> int:
        """The estimated resident bytes of `m` running with context `ctx` per slot (None: the one it runs or
        last ran with, else the one it would start with): `memory.estimate`, what the budget counts. Every
        slot holds `ctx` positions of KV cache, as the engine is started (slots.py has why)."""
        ctx = ctx or m.state.ctx or m.ctx_for(None)
        return estimate(m.size, m.kv, ctx * self.slots_of(m), dict(m.spec.options))

    def _candidates(self) -> Iterable[Candidate]:
        return [
            Candidate(
                name=b,
                phase=m.state.phase,
                busy=m.state.busy,
                last_used=m.state.last_used,
                pinned=m.spec.pin,
                memory=self.memory_of(m) if m.state.holds_slot else 0,
            )
            for b, m in self.models.items()
        ]

    def _groups(self) -> list[Group]:
        """`runtime.groups`, their members resolved to backends now (a models folder model may come later)."""
        out = []
        for g in self.settings.groups:
            members = set()
            for name in g.members:
                entry = self.registry.find(name)
                if entry is not None and entry.backend in self.models:
                    members.add(entry.backend)
            out.append(Group(name=g.name, members=frozenset(members), exclusive=g.exclusive))
        return out

    def _plan(self, backend: str, ctx: int | None = None) -> Decision:
        """The policy's decision for starting `backend` with context `ctx` (None: the one it would start with)."""
        m = self.models[backend]
        need = self.memory_of(m, ctx or m.ctx_for(None))
        budget = self.settings.memory_budget
        return plan_start(
            self._candidates(), self.settings.max_running, backend, self._groups(), budget=budget, need=need
        )

    def _short_message(self, m: ManagedModel, short: Shortfall) -> str:
        held = ", ".join(f"'{self.models[b].name}' {_gib(n)} ({why})" for b, n, why in short.in_use)
        return (
            f"model '{m.name}' needs about {_gib(short.need)} of memory, which does not fit in "
            f"runtime.memory_budget ({_gib(short.budget)}): {held or 'nothing'} in use, and the models holding it "
            "cannot be stopped now; try again later"
        )

    # -------------------------------------------------------------------------------------- requests
    async def acquire(self, backend: str, num_ctx: int | None = None) -> Lease:
        """Make the model ready and count one request on it; pair with `release`.

        The lease's `load_ns` is how long this request waited for a process to start (its own start, or
        one it joined); 0 when the model was ready.
        """
        m = self.model(backend)
        t0 = time.monotonic_ns()
        started = False
        deadline = time.monotonic() + m.spec.startup_timeout
        st = m.state
        st.waiting += 1
        try:
            while True:
                if self._closing:
                    raise ServiceUnavailable("ollamux is shutting down", headers={"Retry-After": RETRY_AFTER})
                if m.removed:
                    raise ModelNotFound(m.name)
                self._reap(m)
                want = m.ctx_for(num_ctx)
                if st.phase is Phase.READY:
                    if want <= st.ctx and not m.stale:
                        break
                    if st.active == 0:  # restart with the larger context (or reloaded settings); nobody uses it
                        if m.stale:
                            log.info("model '%s': restarting with its reloaded runtime settings", m.name)
                        else:
                            log.info("model '%s': restarting with context %d (was %d)", m.name, want, st.ctx)
                        await self._stop(m)
                    else:
                        await self._wait_change(m, deadline)
                elif st.phase is Phase.STARTING:
                    start = m.start_task
                    assert start is not None
                    started = True  # it waits for the load as much as the request that began it
                    try:
                        await asyncio.shield(start)
                    except asyncio.CancelledError:
                        # the start was called off (a stop while loading), not this request: look again
                        current = asyncio.current_task()
                        if start.cancelled() and current is not None and not current.cancelling():
                            continue
                        raise
                elif st.phase is Phase.STOPPING:
                    assert m.stop_task is not None
                    await asyncio.shield(m.stop_task)
                else:
                    decision = self._plan(backend, want)
                    if decision.start:
                        if decision.over_budget:
                            self._warn_over_budget(m, want)
                        self._begin_start(m, want)
                        started = True
                        self._start_companions(backend)
                    elif (restart := self._unwanted_restart(backend)) is not None:
                        # a request must not wait for a model nobody asked for to load, only to evict it
                        log.info("model '%s': calling off the restart of '%s' to make room", m.name, restart.name)
                        await self._stop(restart)
                    elif decision.short is not None:
                        raise ServiceUnavailable(
                            self._short_message(m, decision.short), headers={"Retry-After": RETRY_AFTER}
                        )
                    elif decision.evict is not None:
                        victim = self.models[decision.evict]
                        log.info("model '%s': stopping idle '%s' to make room", m.name, victim.name)
                        await self._stop(victim)
                    else:
                        await self._wait_change(m, deadline)
        finally:
            st.waiting -= 1
        st.begin(time.monotonic())
        self._disarm(m)
        assert m.http is not None
        return Lease(http=m.http, load_ns=time.monotonic_ns() - t0 if started else 0)

    def release(self, backend: str, keep_alive: float | None) -> None:
        """One request is done; its keep_alive (None: the model's ttl) decides when the model stops."""
        m = self.models[backend]
        m.state.end(time.monotonic())
        m.keep_alive = keep_alive
        self._arm(m)
        self._notify()

    async def load(self, backend: str, keep_alive: float | None = None, num_ctx: int | None = None) -> None:
        """Ollama's empty prompt: start the model (if needed) without asking it anything."""
        await self.acquire(backend, num_ctx)
        self.release(backend, keep_alive)

    async def unload(self, backend: str) -> None:
        """Ollama's keep_alive 0 with an empty prompt: stop now, or when the requests in flight end."""
        m = self.model(backend)
        m.keep_alive = 0
        if m.state.busy:
            return
        await self._stop(m)

    async def _wait_change(self, m: ManagedModel, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServiceUnavailable(
                f"model '{m.name}' is waiting for a free slot (runtime.max_running is {self.settings.max_running} "
                "and every running model is busy); try again later",
                headers={"Retry-After": RETRY_AFTER},
            )
        ev = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout=remaining)

    def _notify(self) -> None:
        # wake every waiter once; later waiters wait on a fresh event
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------------------------ lifecycle
    def _reap(self, m: ManagedModel) -> None:
        """A process found dead before its watcher ran: same as the watcher would do."""
        if m.state.phase is Phase.READY and m.proc is not None and m.proc.exited.done():
            self._died(m)

    def _died(self, m: ManagedModel) -> None:
        """The process of a ready model exited on its own: a crash. Restart it in the background, if allowed."""
        proc = m.proc
        m.state.apply(Event.DIED)
        m.proc = None
        m.http = None
        self._disarm(m)
        then = "the next request restarts it"
        if m.spec.restart == "on-failure" and not self._closing and not m.removed:
            delay = m.state.crashed(time.monotonic(), self.restart_policy)
            then = f"restarting it in {delay:g}s"
            # one recovery per model: a crash before the last one's task has ended is left to that task
            if m.restart_task is None or m.restart_task.done():
                m.restart_task = self._background(self._recover(m))
        if proc is not None:
            log.warning(
                "model '%s' exited unexpectedly (code %s); %s. Last lines of %s:\n%s",
                m.name,
                proc.returncode,
                then,
                proc.log_path,
                tail(proc.log_path, 10),
            )
        self._notify()

    async def _recover(self, m: ManagedModel) -> None:
        """Bring back a model that crashed: wait out the backoff, start it, and again while its starts fail.

        It ends once the model is ready, or stopped on purpose (unload, close, eviction of the start), or
        when there is no free slot for it: it never evicts anyone, so it leaves the model stopped, to start on
        demand. Every start goes through `_begin_start`, the one a request uses too, so the two coalesce.
        """
        st = m.state
        policy = self.restart_policy
        why: str | None = None  # set when it gives up: the model is left stopped, to start on demand
        while why is None and st.recovering and not self._closing:
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
                if not st.recovering or st.phase is not Phase.FAILED or self._closing or m.removed:
                    continue  # a request started it meanwhile, or it was stopped: look again
                if m.keep_alive == 0:
                    why = "its last request asked to unload it"
                elif not (decision := self._plan(m.backend, st.ctx)).start:
                    why = self._no_room(m, decision)
                else:
                    log.info("model '%s': restarting after a crash (try %d)", m.name, st.restarts + 1)
                    self._begin_start(m, st.ctx)
        if why is None:
            return  # ready again, stopped on purpose, or shutting down (close stops it)
        log.info("model '%s': not restarted: %s; the next request starts it", m.name, why)
        st.apply(Event.STOP)  # stopped, not failed: nothing is wrong that a request would not fix
        self._notify()

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

    def _no_room(self, m: ManagedModel, decision: Decision) -> str:
        """Why a start that never evicts (a restart, a preload, a companion) does not happen."""
        holding = sum(1 for o in self.models.values() if o is not m and o.state.holds_slot)
        if decision.short is not None or holding < self.settings.max_running:
            return f"it does not fit in runtime.memory_budget ({_gib(self.settings.memory_budget or 0)})"
        return f"no free slot (runtime.max_running is {self.settings.max_running})"

    def _warn_over_budget(self, m: ManagedModel, ctx: int) -> None:
        log.warning(
            "model '%s': its estimated %s exceeds runtime.memory_budget (%s); starting it anyway, as nothing "
            "else is running",
            m.name,
            _gib(self.memory_of(m, ctx)),
            _gib(self.settings.memory_budget or 0),
        )

    def _unwanted_restart(self, wanted: str) -> ManagedModel | None:
        """A background restart still loading that no request waits for: it yields its slot to `wanted`."""
        for b, m in self.models.items():
            st = m.state
            if b != wanted and st.phase is Phase.STARTING and st.recovering and not st.busy:
                return m
        return None

    # ---------------------------------------------------------------------------- preload and groups
    async def preload(self, names: Sequence[str]) -> None:
        """`runtime.preload`: start these models one after another, before any request asks, in free slots
        only (a preload never evicts, not even an earlier preload); run in the background by start-up."""
        for name in names:
            entry = self.registry.find(name)
            m = self.models.get(entry.backend) if entry is not None else None
            if m is None or m.removed:
                log.warning("runtime.preload: '%s' is not a model ollamux runs itself; not preloaded", name)
                continue
            await self._start_if_free(m, "preload")

    def _start_companions(self, backend: str) -> None:
        """The other members of the groups of a model that starts: started too, in free slots."""
        for other in companions(backend, self._groups()):
            self._background(self._start_if_free(self.models[other], f"group member of '{self.models[backend].name}'"))

    async def _start_if_free(self, m: ManagedModel, why: str) -> None:
        """Start `m` without a request when a slot is free (never evicting); wait for it, log a failure."""
        if self._closing or m.state.phase not in (Phase.STOPPED, Phase.FAILED):
            return
        decision = self._plan(m.backend)
        if not decision.start:
            log.info("model '%s' (%s): %s; not started", m.name, why, self._no_room(m, decision))
            return
        if decision.over_budget:
            self._warn_over_budget(m, m.ctx_for(None))
        log.info("model '%s': starting (%s)", m.name, why)
        self._begin_start(m, m.ctx_for(None))
        task = m.start_task
        assert task is not None
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.warning("model '%s' (%s) did not start: %s", m.name, why, getattr(exc, "message", None) or exc)

    def _begin_start(self, m: ManagedModel, ctx: int) -> None:
        m.stale = False  # this start reads the spec as it is now
        m.state.apply(Event.START)
        m.state.ctx = ctx
        task = asyncio.create_task(self._start(m, ctx, m.state.generation), name=f"start {m.name}")
        # a start nobody awaits any more (clients gone) must not log "exception never retrieved"
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        m.start_task = task

    def _argv(self, m: ManagedModel, port: int, ctx: int) -> list[str]:
        spec = m.spec
        if spec.cmd is not None:
            subs = {"${PORT}": str(port), "${CTX}": str(ctx), "${HOST}": "127.0.0.1", "${MODEL}": m.name}

            def fill(arg: str) -> str:
                for k, v in subs.items():
                    arg = arg.replace(k, v)
                return arg

            return [fill(a) for a in spec.cmd]
        assert spec.gguf is not None
        # `ctx` is what one request gets (Ollama's num_ctx, which it multiplies by OLLAMA_NUM_PARALLEL the
        # same way): the engine is given ctx for every slot, and caps each slot at its share (slots.py)
        slots = self.slots_of(m)
        argv = [
            self.python,
            "-m",
            "ollamux.runtime.engine",
            "--model",
            str(spec.gguf),
            "--port",
            str(port),
            "--ctx",
            str(ctx * slots),
            "--parallel",
            str(slots),
            "--alias",
            m.name,
        ]
        if spec.threads:
            argv += ["--threads", str(spec.threads)]
        if m.mmproj is not None:
            argv += ["--mmproj", str(m.mmproj)]
        if spec.options:
            argv += ["--options", engine_options.dumps(dict(spec.options))]
        if spec.rerank:
            argv.append("--rerank")  # a `cmd:` model sets its own server's flag (llama-server --reranking)
        return argv

    async def _start(self, m: ManagedModel, ctx: int, gen: int) -> None:
        spec = m.spec
        port = free_port()
        argv = self._argv(m, port, ctx)
        log_path = self.settings.log_dir / m.log_name
        deadline = time.monotonic() + spec.startup_timeout
        log.info("model '%s': starting on port %d with context %d (log %s)", m.name, port, ctx, log_path)
        proc: ChildProcess | None = None
        ok = False
        m.set_stage("spawning")
        try:
            if self._gpu is None:
                self._gpu = await asyncio.to_thread(gpu_available)  # imports xllamacpp once: not on the loop
            try:
                proc = await ChildProcess.spawn(argv, dict(spec.env), log_path)
            except OSError as exc:
                raise ModelStartError(f"model '{m.name}' cannot start: {argv[0]}: {exc.strerror or exc}") from None
            m.proc = proc
            m.set_stage("loading")  # the process runs; llama.cpp's /health answers 503 until the model is in
            health = spec.health if spec.cmd is not None else "/health"
            url = health if health.startswith("http") else f"http://127.0.0.1:{port}/{health.lstrip('/')}"
            healthy = await proc.wait_healthy(self.client, url, deadline)
            if m.state.generation != gen or m.state.phase is not Phase.STARTING:
                raise ServiceUnavailable(
                    f"model '{m.name}' was stopped while starting", headers={"Retry-After": RETRY_AFTER}
                )
            if healthy:
                m.state.apply(Event.READY)
                m.state.ready_at = time.monotonic()
                m.http = _http_backend(_backend_settings(m.backend, port, spec), self.client)
                self._background(self._watch(m, proc, gen))
                ok = True
                self._arm(m)  # no request releases a background restart: it idles out like any other start
                log.info("model '%s': ready (pid %d)", m.name, proc.pid)
                if self.on_loaded is not None:
                    self.on_loaded(m.name, spec.startup_timeout - (deadline - time.monotonic()))
                return
            if proc.exited.done():
                lines = tail(log_path)
                m.state.apply(Event.DIED)
                raise ModelStartError(
                    f"model '{m.name}' failed to start: its process exited with code {proc.returncode}. "
                    f"Last lines of {log_path}:\n{lines}"
                )
            m.state.apply(Event.TIMEOUT)
            raise ServiceUnavailable(
                f"model '{m.name}' did not become ready within {spec.startup_timeout:g}s "
                f"(runtime.startup_timeout); see {log_path}",
                headers={"Retry-After": RETRY_AFTER},
            )
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
            self._notify()

    async def _watch(self, m: ManagedModel, proc: ChildProcess, gen: int) -> None:
        await asyncio.shield(proc.exited)  # cancelling the watcher must not cancel the wait for the exit
        if m.state.generation == gen and m.state.phase is Phase.READY and m.proc is proc:
            self._died(m)

    async def _stop(self, m: ManagedModel) -> None:
        phase = m.state.phase
        if phase is Phase.STOPPING:
            assert m.stop_task is not None
            await asyncio.shield(m.stop_task)
            return
        if phase is Phase.STOPPED:
            return
        self._disarm(m)
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
            self._notify()
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
            self._notify()

    # ------------------------------------------------------------------------------------- idle timers
    def _disarm(self, m: ManagedModel) -> None:
        if m.timer is not None:
            m.timer.cancel()
            m.timer = None
        m.expires_at = None

    def _arm(self, m: ManagedModel) -> None:
        """Once a model is idle, schedule its stop per the last keep_alive (Ollama's session duration)."""
        self._disarm(m)
        if m.state.busy or m.state.phase is not Phase.READY:
            return
        gone = m.removed or m.stale  # no longer configured, or configured otherwise: stop once idle
        ka = 0.0 if gone else (m.keep_alive if m.keep_alive is not None else m.spec.ttl)
        if m.spec.pin and not gone:
            ka = -1.0  # pinned: a request's keep_alive does not stop it either; only an explicit unload does
        if ka < 0:
            m.expires_at = time.time() + FOREVER
            return
        m.expires_at = time.time() + ka
        gen = m.state.generation
        if ka == 0:
            self._background(self._expire(m, gen))
        else:
            m.timer = asyncio.get_running_loop().call_later(ka, lambda: self._background(self._expire(m, gen)))

    async def _expire(self, m: ManagedModel, gen: int) -> None:
        if m.state.generation == gen and m.state.phase is Phase.READY and not m.state.busy:
            log.info("model '%s': idle, stopping", m.name)
            await self._stop(m)

    def background(self, coro: Any) -> None:
        """Run `coro` as a task the manager keeps (and cancels on close)."""
        self._background(coro)

    def _background(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("runtime task failed: %s", t.exception())

        task.add_done_callback(done)
        return task

    # -------------------------------------------------------------------------------------- shutdown
    async def close(self) -> None:
        """Stop every model (SIGTERM, then SIGKILL after a grace period); nothing is left behind."""
        self._closing = True
        self._notify()
        for m in self.models.values():
            self._disarm(m)
        for t in list(self._tasks):
            t.cancel()
        await self.catalogue.close()  # no scan is applied after this: it would add models and hash files
        await asyncio.gather(*(self._stop(m) for m in self.models.values()), return_exceptions=True)
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _http_backend(settings: BackendSettings, client: aiohttp.ClientSession) -> HTTPBackend:
    """The OpenAI-compatible backend a running model is called through: the one place that names its class."""
    return OpenAIBackend(settings, client)


def _backend_settings(name: str, port: int, spec: RuntimeSpec) -> BackendSettings:
    # generation on a CPU can take minutes: no total limit; a dead child fails the connect at once
    timeouts = replace(Timeouts(), total=None, connect=5.0)
    return BackendSettings(
        name=name, type="openai", urls=(f"http://127.0.0.1:{port}/v1",), timeouts=timeouts, native_apis=spec.apis
    )
