"""The life of one managed model as an explicit state machine: pure, no I/O, no clock of its own.

    stopped --start--> starting --ready--> ready --stop--> stopping --exited--> stopped
                          |                  |
                          +--died/timeout--> failed <--died--+        failed --start--> starting

The manager drives it from process events; anything not in the table is a bug and raises, so a race
between (say) a crash and an eviction shows up as an error instead of a process started twice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Event", "InvalidTransition", "ModelState", "Phase", "next_phase"]


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


@dataclass
class ModelState:
    """Phase plus the request counts the policy needs; times are whatever clock the caller uses."""

    phase: Phase = Phase.STOPPED
    active: int = 0  # requests using the running process right now
    waiting: int = 0  # requests waiting for this model to start (or for a slot to start it in)
    last_used: float = 0.0
    ctx: int = 0  # the context the process runs (or was last asked to run) with
    generation: int = 0  # bumped on every start, so a stale timer or watcher can tell it is stale

    def apply(self, event: Event) -> Phase:
        self.phase = next_phase(self.phase, event)
        if event is Event.START:
            self.generation += 1
        return self.phase

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
