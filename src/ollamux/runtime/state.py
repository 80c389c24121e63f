"""The life of one managed model as an explicit state machine: pure, no I/O, no clock of its own.

    stopped --start--> starting --ready--> ready --stop--> stopping --exited--> stopped
                          |                  |
                          +--died/timeout--> failed <--died--+        failed --start--> starting

The manager drives it from process events; anything not in the table is a bug and raises, so a race
between (say) a crash and an eviction shows up as an error instead of a process started twice.

A crash (ready --died--> failed) of a model with `restart: on-failure` also sets `recovering`: the manager
then starts it again in the background, after `RestartPolicy.delay`. Recovery is bookkeeping beside the
phase, not a phase of its own: the restart is an ordinary failed --start--> starting, the same one a request
makes, so a request and the background restart can never start two processes. `ModelState.status` is
where the two combine into the word readiness and the metrics see.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Event", "InvalidTransition", "ModelState", "Phase", "RestartPolicy", "next_phase"]


class Phase(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


class Event(enum.Enum):
    START = "start"  # a request needs the model and no process runs
    READY = "ready"  # the health check answered
    DIED = "died"  # the process exited without being asked (crash, OOM kill, bad arguments)
    TIMEOUT = "timeout"  # not healthy within startup_timeout (the process is killed)
    STOP = "stop"  # idle expiry, keep_alive 0, eviction, a larger context, shutdown
    EXITED = "exited"  # the process we asked to stop is gone


_TABLE: dict[tuple[Phase, Event], Phase] = {
    (Phase.STOPPED, Event.START): Phase.STARTING,
    (Phase.FAILED, Event.START): Phase.STARTING,
    (Phase.STARTING, Event.READY): Phase.READY,
    (Phase.STARTING, Event.DIED): Phase.FAILED,
    (Phase.STARTING, Event.TIMEOUT): Phase.FAILED,
    (Phase.STARTING, Event.STOP): Phase.STOPPING,  # shutdown while loading
    (Phase.READY, Event.DIED): Phase.FAILED,
    (Phase.READY, Event.STOP): Phase.STOPPING,
    (Phase.STOPPING, Event.EXITED): Phase.STOPPED,
    (Phase.STOPPING, Event.DIED): Phase.STOPPED,  # it died on its own while we were stopping it: same end
    (Phase.FAILED, Event.STOP): Phase.STOPPED,  # nothing runs; stopping a failed model just resets it
}


class InvalidTransition(RuntimeError):
    def __init__(self, phase: Phase, event: Event) -> None:
        super().__init__(f"managed model: no transition from {phase.value} on {event.value}")
        self.phase = phase
        self.event = event


def next_phase(phase: Phase, event: Event) -> Phase:
    """The phase after `event`; raises InvalidTransition for an event that cannot happen in `phase`."""
    try:
        return _TABLE[(phase, event)]
    except KeyError:
        raise InvalidTransition(phase, event) from None


@dataclass(frozen=True)
class RestartPolicy:
    """When a model that crashed while ready is started again in the background: after `first` seconds,
    then twice as long after each restart that did not last (1 s, 2 s, 4 s ... `cap`). A process that
    stayed ready for `healthy` seconds starts the series over: a crash a day must not wait a minute."""

    first: float = 1.0
    cap: float = 60.0
    healthy: float = 60.0
    fail_after: int = 3  # consecutive restarts that never got ready before the model reports "failed"

    def delay(self, restarts: int) -> float:
        """The wait before the next restart, given the restarts made since it last ran healthily."""
        return min(self.cap, self.first * 2.0 ** min(restarts, 32))  # the exponent's cap keeps it a float


@dataclass
class ModelState:
    """Phase plus the request counts the policy needs; times are whatever clock the caller uses."""

    phase: Phase = Phase.STOPPED
    active: int = 0  # requests using the running process right now
    waiting: int = 0  # requests waiting for this model to start (or for a slot to start it in)
    last_used: float = 0.0
    ctx: int = 0  # the context the process runs (or was last asked to run) with
    generation: int = 0  # bumped on every start, so a stale timer or watcher can tell it is stale
    ready_at: float = 0.0  # when it last became ready: how long it ran decides whether a crash resets backoff
    recovering: bool = False  # it crashed while ready and is being brought back (restart: on-failure)
    restarts: int = 0  # starts made while recovering since it last ran healthily: the backoff's exponent
    failed_restarts: int = 0  # of those, the consecutive ones that died or timed out before getting ready

    def apply(self, event: Event) -> Phase:
        before = self.phase
        self.phase = next_phase(before, event)
        if event is Event.START:
            self.generation += 1
            if self.recovering:  # whoever starts it, a request or the background: one more try
                self.restarts += 1
        elif event is Event.READY:
            self.recovering = False  # back; `restarts` stays until it has run `healthy` seconds
            self.failed_restarts = 0
        elif event in (Event.DIED, Event.TIMEOUT) and before is Phase.STARTING and self.recovering:
            self.failed_restarts += 1
        elif event is Event.STOP:
            # stopped on purpose (idle, unload, eviction, shutdown): no recovery, and its next life starts fresh
            self.recovering = False
            self.restarts = 0
            self.failed_restarts = 0
        return self.phase

    def crashed(self, now: float, policy: RestartPolicy) -> float:
        """It died while ready and is to be restarted: start recovering; returns the wait before the restart."""
        if self.phase is not Phase.FAILED:
            raise RuntimeError(f"managed model: a crash recorded while {self.phase.value}")
        if now - self.ready_at >= policy.healthy:
            self.restarts = 0
        self.recovering = True
        return policy.delay(self.restarts)

    def status(self, policy: RestartPolicy) -> str:
        """The state readiness and the metrics see: the phase, or "restarting" while it recovers.

        "restarting": it crashed and a restart is scheduled or loading (begun by the background or by a
        request); requests still get it (they start it at once), so it is not a readiness problem.
        "failed": it is down and will not come back by itself: `restart: never`, a start a request made
        failed, or `policy.fail_after` restarts in a row failed (the background keeps trying, every
        `policy.cap` seconds at most, and the state turns "ready" when one succeeds).
        """
        if self.recovering and self.phase in (Phase.FAILED, Phase.STARTING):
            return "failed" if self.failed_restarts >= policy.fail_after else "restarting"
        return self.phase.value

    @property
    def busy(self) -> bool:
        """A busy model is never stopped or evicted: requests use it or wait for it."""
        return self.active > 0 or self.waiting > 0

    @property
    def holds_slot(self) -> bool:
        """Whether it counts against max_running (a stopping process still holds its memory)."""
        return self.phase in (Phase.STARTING, Phase.READY, Phase.STOPPING)

    def begin(self, now: float) -> None:
        self.active += 1
        self.last_used = now

    def end(self, now: float) -> None:
        if self.active <= 0:
            raise RuntimeError("managed model: a request ended that never began")
        self.active -= 1
        self.last_used = now
