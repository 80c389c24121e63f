"""`Observers`: every observer told of every finished request, only those with a `request_started` told of
starts, the requests in flight counted once for all (metrics and the admin overview read that count), and an
observer's failure never reaching the request."""

from __future__ import annotations

from ollamux.observe import Observers, RequestRecord


class _Ends:
    def __init__(self) -> None:
        self.finished: list[str] = []

    def request_finished(self, rec: RequestRecord) -> None:
        self.finished.append(rec.id)


class _Both(_Ends):
    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []

    def request_started(self, rec: RequestRecord) -> None:
        self.started.append(rec.id)


class _Broken:
    def request_started(self, rec: RequestRecord) -> None:
        raise RuntimeError("start")

    def request_finished(self, rec: RequestRecord) -> None:
        raise RuntimeError("end")


def _rec(i: int) -> RequestRecord:
    return RequestRecord(id=f"r{i}", api="openai", route="/v1/chat/completions")


def test_starts_reach_only_observers_that_take_them_and_in_flight_is_counted() -> None:
    ends, both = _Ends(), _Both()
    obs = Observers([ends, _Broken()])
    obs.add(both)
    a, b = _rec(1), _rec(2)
    obs.started(a)
    obs.started(b)
    assert obs.in_flight == 2 and both.started == ["r1", "r2"]
    obs.finished(a)
    assert obs.in_flight == 1 and ends.finished == both.finished == ["r1"]
    assert a.end_ns is not None and a.end_ns >= a.start_ns  # closed once, for every observer alike
    obs.finished(b)
    assert obs.in_flight == 0 and ends.finished == ["r1", "r2"]


def test_the_observer_list_can_be_replaced_and_starts_follow_it() -> None:
    """The bench's in-place switch (bench/observer_switch) detaches and attaches observers this way."""
    both = _Both()
    obs = Observers([both])
    full = obs.observers
    obs.observers = []
    obs.started(_rec(1))
    obs.finished(_rec(1))
    assert both.started == [] and both.finished == []
    obs.observers = full
    obs.started(_rec(2))
    assert both.started == ["r2"] and obs.in_flight == 1  # requests are counted whoever observes them
