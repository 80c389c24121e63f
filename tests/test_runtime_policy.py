"""Eviction as a pure function: least recently used idle model; never one with requests in flight."""

from __future__ import annotations

from ollamux.runtime.policy import Candidate, Decision, Group, companions, plan_start
from ollamux.runtime.state import Phase


def c(name: str, phase: Phase = Phase.READY, busy: bool = False, last_used: float = 0.0) -> Candidate:
    return Candidate(name=name, phase=phase, busy=busy, last_used=last_used)


def test_free_slot_starts() -> None:
    assert plan_start([], 1, "a") == Decision(start=True)
    assert plan_start([c("b")], 2, "a") == Decision(start=True)
    assert plan_start([c("a", Phase.FAILED), c("b", Phase.STOPPED)], 1, "a") == Decision(start=True)


def test_least_recently_used_idle_model_is_evicted() -> None:
    models = [c("b", last_used=5), c("c", last_used=3), c("d", last_used=9)]
    assert plan_start(models, 3, "a") == Decision(start=False, evict="c")


def test_busy_models_are_never_evicted() -> None:
    models = [c("b", busy=True, last_used=1), c("c", last_used=7)]
    assert plan_start(models, 2, "a") == Decision(start=False, evict="c")
    assert plan_start([c("b", busy=True)], 1, "a") == Decision(start=False)  # wait for the slot


def test_starting_and_stopping_hold_slots_but_are_not_evicted() -> None:
    assert plan_start([c("b", Phase.STARTING)], 1, "a") == Decision(start=False)
    assert plan_start([c("b", Phase.STOPPING)], 1, "a") == Decision(start=False)
    assert plan_start([c("b", Phase.STOPPING), c("c", last_used=1)], 2, "a") == Decision(start=False, evict="c")


def test_the_wanted_model_itself_is_not_counted() -> None:
    assert plan_start([c("a", Phase.STOPPING), c("b")], 2, "a") == Decision(start=True)


def test_ties_are_broken_by_name_for_determinism() -> None:
    assert plan_start([c("z"), c("m")], 2, "a").evict == "m"


def p(name: str) -> Candidate:
    """A pinned idle ready model."""
    return Candidate(name=name, phase=Phase.READY, busy=False, last_used=0.0, pinned=True)


def test_pinned_models_are_never_evicted() -> None:
    assert plan_start([p("b")], 1, "a") == Decision(start=False)  # wait: the only slot is pinned
    assert plan_start([p("b"), c("c", last_used=9)], 2, "a") == Decision(start=False, evict="c")
    assert plan_start([p("b")], 2, "a") == Decision(start=True)


def test_an_exclusive_group_stops_the_models_outside_it_first() -> None:
    solo = Group("solo", frozenset({"a", "b"}), exclusive=True)
    # a free slot is not enough: the outsider goes, the member stays
    assert plan_start([c("b"), c("x", last_used=5)], 4, "a", [solo]) == Decision(start=False, evict="x")
    assert plan_start([c("b")], 4, "a", [solo]) == Decision(start=True)
    # a busy or starting outsider is waited for; a pinned one stays
    assert plan_start([c("x", busy=True)], 4, "a", [solo]) == Decision(start=False)
    assert plan_start([c("x", Phase.STARTING)], 4, "a", [solo]) == Decision(start=False)
    assert plan_start([p("x")], 4, "a", [solo]) == Decision(start=True)
    # an outsider starts beside a non-exclusive group's members as usual
    assert plan_start([c("a")], 4, "x", [solo]) == Decision(start=True)
    shared = Group("pair", frozenset({"a", "b"}))
    assert plan_start([c("x")], 4, "a", [shared]) == Decision(start=True)


def test_companions_are_the_other_members_of_its_groups() -> None:
    groups = [Group("g1", frozenset({"a", "b"})), Group("g2", frozenset({"a", "c"}), exclusive=True)]
    assert companions("a", groups) == ["b", "c"]
    assert companions("b", groups) == ["a"]
    assert companions("z", groups) == []
