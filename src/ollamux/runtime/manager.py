"""The ModelManager: which managed model starts for which request, shares its slots, and whom a start evicts.

It orchestrates; the parts are elsewhere. Which models there are, and what their files say, is its `Catalogue`
(`catalogue.py`); their processes (start, health wait, idle stop, crash recovery, shutdown) are its
`Supervisor` (`supervisor.py`); whether a start fits is its `Placement` (`placement.py`, over the pure
`policy.plan_start`); what /api/ps and readiness show is `views.py`. All of them share the `ManagedModel`
records (`model.py`) and run on the app's event loop, so the bookkeeping needs no locks: the state of each model
(`state.ModelState`) changes only between awaits, and the eviction choice is made on a snapshot taken in the
same step as the action that follows it. The catalogue's disk reads run in a worker thread that never touches
that state.

Residency beyond LRU (`policy.py` decides, this wires it): a pinned model is never evicted and its idle timer
never stops it; `preload` and the companions of a group member start through `_start_if_free`, the same
start in a free slot only; the start's stage ("spawning", "loading") is what `loading()` (/api/ps) shows.
With `runtime.memory_budget`, each model's resident memory is estimated (`memory.estimate`, from its file,
header and context) and the policy evicts idle models until a newcomer fits, or refuses it with a 503 that
says who holds the memory; that estimate is also the `size` /api/ps reports.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..backends.base import Lease
from ..backends.http import Clients
from ..config import RuntimeSettings, RuntimeSpec, Settings
from ..errors import ModelNotFound, ServiceUnavailable
from ..registry import ModelEntry, Registry
from . import views
from .catalogue import Catalogue
from .gguf_meta import DigestCache
from .launch import RETRY_AFTER, ModelStartError
from .model import LoadingModel, ManagedModel, ModelStatus, RunningModel
from .placement import Placement
from .policy import Decision, companions
from .state import Phase, RestartPolicy
from .supervisor import Supervisor
from .views import FOREVER

# ManagedModel, ModelStatus and RunningModel live in `model.py` (the catalogue builds the records too),
# ModelStartError in `launch.py`, FOREVER in `views.py`: importable from here as before
__all__ = ["FOREVER", "ManagedModel", "ModelManager", "ModelStartError", "ModelStatus", "RunningModel"]

log = logging.getLogger("ollamux.runtime")


class ModelManager:
    """Lifecycle of every managed model of one app: what `state.runtime` is."""

    def __init__(
        self,
        settings: Settings,
        client: Clients,
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
        self.on_new_models: Callable[[], None] | None = None  # the app registers their backends
        # no disk access here: the first `rescan()` reads the GGUF headers, in a thread
        self.catalogue = Catalogue(
            settings,
            registry,
            probed,
            retire=lambda m: self.supervisor.arm(m),
            changed=self._new_models,
            digest_cache=digest_cache,
        )
        self.models: dict[str, ManagedModel] = self.catalogue.models  # one dict: the catalogue adds to it
        self.placement = Placement(self.models, self.settings, registry)
        self.supervisor = Supervisor(self.models, self.settings, client, self.placement, python=python)
        self._asks = 0  # requests counted in arrival order (`ask`): whose keep_alive is the latest
        # `warm`'s holds, by model and request task, until that request's own `acquire` takes them over
        self._held: dict[tuple[str, asyncio.Task[Any]], Lease] = {}
        # the requests waiting for a slot, by arrival number: a slot that frees is the earliest one's
        self._slot_queue: dict[int, ManagedModel] = {}

    # the supervisor's knobs, set on the manager by the app (on_loaded) and by tests (the others)
    @property
    def restart_policy(self) -> RestartPolicy:
        """When a crashed model is restarted (`state.RestartPolicy`)."""
        return self.supervisor.restart_policy

    @restart_policy.setter
    def restart_policy(self, policy: RestartPolicy) -> None:
        self.supervisor.restart_policy = policy

    @property
    def python(self) -> str:
        """The interpreter the built-in engine runs on."""
        return self.supervisor.python

    @python.setter
    def python(self, python: str) -> None:
        self.supervisor.python = python

    @property
    def on_loaded(self) -> Callable[[str, float], None] | None:
        """Told (model, seconds) each time a model becomes ready: the metrics' load-time histogram."""
        return self.supervisor.on_loaded

    @on_loaded.setter
    def on_loaded(self, callback: Callable[[str, float], None] | None) -> None:
        self.supervisor.on_loaded = callback

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
                self.supervisor.arm(gone)  # idle: stops now; busy: once its last request is released
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
                    self.supervisor.arm(model)
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
        return views.running(self.models.values(), self.placement, gpu=bool(self.supervisor.gpu))

    def loading(self) -> list[LoadingModel]:
        """The models whose process is starting, with the stage it is at (what /api/ps lists as `loading`)."""
        return views.loading(self.models.values(), self.placement)

    def statuses(self) -> list[ModelStatus]:
        """Every managed model's state, by name (a model whose file left the folder, once stopped, is gone)."""
        return views.statuses(self.models.values(), self.restart_policy)

    def slots_of(self, m: ManagedModel) -> int:
        """The requests `m` serves at once (`Placement.slots_of`)."""
        return self.placement.slots_of(m)

    def memory_of(self, m: ManagedModel, ctx: int | None = None) -> int:
        """The estimated resident bytes of `m` running with context `ctx` per slot (`Placement.memory_of`)."""
        return self.placement.memory_of(m, ctx)

    # what tests look at: the start decision, and the command line a model would start with
    def _plan(self, backend: str, ctx: int | None = None) -> Decision:
        return self.placement.plan(backend, ctx)

    def _argv(self, m: ManagedModel, port: int, ctx: int) -> list[str]:
        return self.supervisor.argv(m, port, ctx)

    # -------------------------------------------------------------------------------------- requests
    async def acquire(self, backend: str, num_ctx: int | None = None) -> Lease:
        """Make the model ready and count one request on it; pair with `release`.

        The lease's `load_ns` is how long this request waited for a process to start (its own start, or
        one it joined); 0 when the model was ready.

        Waits are first come, first served, as Ollama's queue: a request waiting for a slot gets the next
        free one before requests that arrived after it, and those for the busy model whose slot it waits
        for queue behind it (uncounted, so that model drains and can be evicted); requests arriving after
        one that needs a larger context queue behind it too, and the restart takes the largest.
        """
        m = self.model(backend)
        if self._held and (held := self._take_over(m, num_ctx)) is not None:
            return held
        t0 = time.monotonic_ns()
        started = False
        deadline = time.monotonic() + m.spec.startup_timeout
        st = m.state
        st.waiting += 1
        wider: int | None = None  # the larger context this request waits to restart the model with
        me = self.ask()  # its place in the queue for slots (Ollama serves them first come, first served)
        queued = False  # behind a request for another model that waits for this one's slot: not counted
        claim: ManagedModel | None = None  # the busy model whose slot this request waits for
        try:
            while True:
                if queued:
                    st.waiting, queued = st.waiting + 1, False
                if self.supervisor.closing:
                    raise ServiceUnavailable("ollamux is shutting down", headers={"Retry-After": RETRY_AFTER})
                if m.removed:
                    raise ModelNotFound(m.name)
                self.supervisor.reap(m)
                want = m.ctx_for(num_ctx)
                if st.phase is Phase.READY:
                    if want > st.ctx and not m.stale and wider is None:
                        # requests arriving from now on wait behind this one (as in Ollama's queue), else a
                        # steady stream of them would keep the model busy until this one's wait ran out
                        wider = want
                        m.wider.append(want)
                    # what serves every request waiting for a restart: the largest context any asked for
                    want = max(want, *m.wider) if m.wider else want
                    if want <= st.ctx and not m.stale:
                        if not m.yielding or min(m.yielding) > me:
                            break
                        # not counted as waiting: the model drains, and the request ahead evicts it
                        st.waiting, queued = st.waiting - 1, True
                        await self._wait_change(m, deadline, "behind a request for another model that needs its slot")
                        continue
                    if st.active == 0:  # restart with the larger context (or reloaded settings); nobody uses it
                        if m.stale:
                            log.info("model '%s': restarting with its reloaded runtime settings", m.name)
                        else:
                            log.info("model '%s': restarting with context %d (was %d)", m.name, want, st.ctx)
                        await self.supervisor.stop(m)
                    else:
                        again = "with its reloaded runtime settings" if m.stale else f"with context {want}"
                        await self._wait_change(
                            m,
                            deadline,
                            f"for its {st.active} running request(s) to end, to restart it {again} "
                            f"(it runs with context {st.ctx})",
                        )
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
                    want = max(want, *m.wider) if m.wider else want  # a start serves the widest waiting request
                    if (ahead := self._ahead_of(me, m)) is not None:
                        await self._wait_change(
                            m, deadline, f"behind a request for '{ahead.name}' (runtime.max_running)"
                        )
                        continue
                    decision = self.placement.plan(backend, want)
                    if decision.start:
                        self._slot_queue.pop(me, None)
                    else:
                        self._slot_queue[me] = m  # the next free slot is its, before later requests'
                    if not decision.start and decision.evict is None and decision.short is None:
                        claim = self._claim(me, claim, self.placement.drain_target(backend, want))
                    else:
                        claim = self._claim(me, claim, None)
                    if decision.start:
                        if decision.over_budget:
                            self.placement.warn_over_budget(m, want)
                        self.supervisor.begin_start(m, want)
                        started = True
                        self._start_companions(backend)
                    elif (restart := self._unwanted_restart(backend)) is not None:
                        # a request must not wait for a model nobody asked for to load, only to evict it
                        log.info("model '%s': calling off the restart of '%s' to make room", m.name, restart.name)
                        await self.supervisor.stop(restart)
                    elif decision.short is not None:
                        raise ServiceUnavailable(
                            self.placement.short_message(m, decision.short), headers={"Retry-After": RETRY_AFTER}
                        )
                    elif decision.evict is not None:
                        victim = self.models[decision.evict]
                        log.info("model '%s': stopping idle '%s' to make room", m.name, victim.name)
                        await self.supervisor.stop(victim)
                    else:
                        await self._wait_change(
                            m,
                            deadline,
                            f"for a free slot (runtime.max_running is {self.settings.max_running} and every "
                            "running model is busy)",
                        )
        finally:
            if not queued:
                st.waiting -= 1
            self._claim(me, claim, None)
            if self._slot_queue.pop(me, None) is not None:
                self.supervisor.notify()  # the requests behind it look again
            if wider is not None:
                m.wider.remove(wider)
                self.supervisor.notify()  # the requests that waited behind this one look again
        st.begin(time.monotonic())
        self.supervisor.disarm(m)
        assert m.http is not None
        return Lease(http=m.http, load_ns=time.monotonic_ns() - t0 if started else 0)

    def _ahead_of(self, me: int, m: ManagedModel) -> ManagedModel | None:
        """The model of a request that came before `me` and waits for a slot, when it is another one's: the
        free slot is its, first come, first served."""
        for w, model in self._slot_queue.items():
            if w < me and model is not m:
                return model
        return None

    def _claim(self, me: int, old: ManagedModel | None, target: str | None) -> ManagedModel | None:
        """Request `me` waits for the slot of `target` (None: for no slot any more): its newcomers queue behind it."""
        new = self.models.get(target) if target is not None else None
        if new is old:
            return old
        if old is not None:
            old.yielding.remove(me)
            self.supervisor.notify()  # its newcomers look again
        if new is not None:
            new.yielding.append(me)
        return new

    def ask(self) -> int:
        """The arrival number of a request, taken before it waits for its model: pass it to `release`."""
        self._asks += 1
        return self._asks

    def release(self, backend: str, keep_alive: float | None, *, asked: int | None = None) -> None:
        """One request is done; the keep_alive (None: the model's ttl) of the latest request to arrive decides
        when the model stops, as Ollama's session duration: a request that arrived before an unload (or before
        another request's keep_alive) and ends after it does not undo it. `asked`: its `ask()` number (None:
        it arrives now)."""
        m = self.models[backend]
        m.state.end(time.monotonic())
        asked = self.ask() if asked is None else asked
        if asked >= m.keep_alive_asked:
            m.keep_alive, m.keep_alive_asked, m.unloading = keep_alive, asked, False
        self.supervisor.arm(m)
        self.supervisor.notify()

    async def load(self, backend: str, keep_alive: float | None = None, num_ctx: int | None = None) -> None:
        """Ollama's empty prompt: start the model (if needed) without asking it anything."""
        asked = self.ask()
        await self.acquire(backend, num_ctx)
        self.release(backend, keep_alive, asked=asked)

    async def warm(
        self,
        backend: str,
        owner: asyncio.Task[Any] | None,
        keep_alive: float | None = None,
        num_ctx: int | None = None,
    ) -> None:
        """Make the model ready for the request task `owner` serves, and keep it counted until that request's
        own `acquire` (from `owner`) takes the count over: released in between, as `load` does, the model
        would sit idle for a moment, and a request waiting for its slot would evict it just before the stream
        it was loaded for begins. A count no `acquire` takes is released when `owner` ends."""
        asked = self.ask()
        lease = await self.acquire(backend, num_ctx)
        if owner is None or (backend, owner) in self._held:
            self.release(backend, keep_alive, asked=asked)
            return
        key = (backend, owner)
        self._held[key] = lease

        def done(_: object) -> None:
            if self._held.pop(key, None) is not None:
                self.release(backend, keep_alive, asked=asked)

        owner.add_done_callback(done)

    def _take_over(self, m: ManagedModel, num_ctx: int | None) -> Lease | None:
        """The count `warm` holds for this task's request on `m`, when the model can serve it as it runs."""
        task = asyncio.current_task()
        held = self._held.pop((m.backend, task), None) if task is not None else None
        if held is None:
            return None
        if self.is_ready(m.backend) and m.ctx_for(num_ctx) <= m.state.ctx and not m.stale:
            return held  # the count carries over: this request's release ends it
        self.release(m.backend, None, asked=0)  # asked 0: it never overrides a keep_alive
        return None

    async def unload(self, backend: str) -> None:
        """Ollama's keep_alive 0 with an empty prompt: stop now, or when the requests in flight (and those
        waiting for its start) end; a request that arrives after it undoes it."""
        m = self.model(backend)
        m.keep_alive, m.keep_alive_asked, m.unloading = 0, self.ask(), True
        if m.state.busy:
            return
        await self.supervisor.stop(m)

    async def _wait_change(self, m: ManagedModel, deadline: float, waiting_for: str) -> None:
        """Until something changes; past `deadline`, the 503 says what the request was `waiting_for`."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServiceUnavailable(
                f"model '{m.name}' is waiting {waiting_for}; try again later", headers={"Retry-After": RETRY_AFTER}
            )
        await self.supervisor.wait_change(remaining)

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
        for other in companions(backend, self.placement.groups()):
            self.supervisor.background(
                self._start_if_free(self.models[other], f"group member of '{self.models[backend].name}'")
            )

    async def _start_if_free(self, m: ManagedModel, why: str) -> None:
        """Start `m` without a request when a slot is free (never evicting); wait for it, log a failure."""
        if self.supervisor.closing or m.state.phase not in (Phase.STOPPED, Phase.FAILED):
            return
        decision = self.placement.plan(m.backend)
        if not decision.start:
            log.info("model '%s' (%s): %s; not started", m.name, why, self.placement.no_room(m, decision))
            return
        if decision.over_budget:
            self.placement.warn_over_budget(m, m.ctx_for(None))
        log.info("model '%s': starting (%s)", m.name, why)
        self.supervisor.begin_start(m, m.ctx_for(None))
        task = m.start_task
        assert task is not None
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.warning("model '%s' (%s) did not start: %s", m.name, why, getattr(exc, "message", None) or exc)

    # ----------------------------------------------------------------------------- background tasks
    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` as a task the manager keeps (and cancels on close)."""
        self.supervisor.background(coro)

    # -------------------------------------------------------------------------------------- shutdown
    async def close(self) -> None:
        """Stop every model (SIGTERM, then SIGKILL after a grace period); nothing is left behind."""
        self.supervisor.shut()
        await self.catalogue.close()  # no scan is applied after this: it would add models and hash files
        await self.supervisor.stop_all()
