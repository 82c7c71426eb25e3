"""The control plane's pure decisions: no Temporal, no server, no clock."""

from __future__ import annotations

import ast
import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from temporal_governor.core import control as core
from temporal_governor.core.control import (
    AUDIT_KEPT,
    KILL_SIGNAL,
    OVERRIDE_SIGNAL,
    RESUME_SIGNAL,
    AnyControl,
    AuditTrail,
    AwaitResume,
    AwaitSlot,
    BackpressureMessage,
    CancelInFlight,
    ControlRules,
    ControlState,
    Effect,
    Go,
    Halt,
    KillMessage,
    OverrideMessage,
    OwnLimit,
    PollFleet,
    Record,
    RelayTo,
    ResumeMessage,
    SetCeiling,
    ShowState,
    SleepUntil,
    WatchPause,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SIGNED = "ab" * 32
OVERRIDABLE = frozenset(
    {
        "max_tokens_per_task",
        "max_cost_usd_per_task",
        "max_tool_calls_per_task",
        "max_subtasks_per_task",
        "max_child_workflows_per_task",
    }
)
RULES = ControlRules(overridable=OVERRIDABLE)
_nonces = itertools.count()


@dataclasses.dataclass
class Run:
    """A run as the core sees it (satisfies ``RunFacts``); ceilings follow ``SetCeiling``."""

    workflow_id: str = "wf-1"
    tenant: str = "acme"
    agent: str = "Planner"
    scope: str = "run Planner/wf-1"
    parent: str | None = None
    stopped: bool = False
    in_flight: int = 0
    limits: dict[str, OwnLimit] = dataclasses.field(default_factory=dict)

    def limit(self, name: str) -> OwnLimit | None:
        return self.limits.get(name)

    def follow(self, effects: list[Effect]) -> None:
        """Carry out the effects that change the run's limits, as the glue does."""
        for effect in effects:
            if isinstance(effect, SetCeiling) and effect.limit in self.limits:
                own = self.limits[effect.limit]
                self.limits[effect.limit] = dataclasses.replace(own, ceiling=effect.ceiling)


def tokens_run(ceiling: float = 1000.0, hard: float = 1000.0, **kw: Any) -> Run:
    return Run(limits={"max_tokens_per_task": OwnLimit(ceiling, hard, "run Planner/wf-1")}, **kw)


def fields(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "issuer": "oncall",
        "reason": "why not",
        "target": "run",
        "workflow_id": "wf-1",
        "issued_at_ms": 0,
        "nonce": f"nonce-{next(_nonces):08d}",
    }
    return {**base, **kw}


def kill(**kw: Any) -> KillMessage:
    return KillMessage(**fields(**kw))


def resume(**kw: Any) -> ResumeMessage:
    return ResumeMessage(**fields(**{"signature": SIGNED, "key_id": "k", **kw}))


def pressure(**kw: Any) -> BackpressureMessage:
    return BackpressureMessage(**fields(**kw))


def override(limit: str = "max_tokens_per_task", value: float = 2000, **kw: Any) -> OverrideMessage:
    signed = {"signature": SIGNED, "key_id": "k", "limit": limit, "value": value}
    return OverrideMessage(**fields(**{**signed, **kw}))


def records(effects: list[Effect]) -> list[tuple[str, bool, str]]:
    return [(e.signal, e.accepted, e.outcome) for e in effects if isinstance(e, Record)]


def paused_state(run: Run | None = None, **kw: Any) -> ControlState:
    state, _ = core.apply(ControlState(), kill(**kw), T0, run or Run(), RULES)
    assert state.paused is not None
    return state


# -- kill, pause, resume -----------------------------------------------------------------


def test_a_pause_cancels_in_flight_work_rests_and_relays_to_children_first() -> None:
    state = ControlState(children={"child:1": "kid-b", "child:2": "kid-a", "child:3": "kid-a"})
    message = kill()
    state, effects = core.apply(state, message, T0, Run(in_flight=2), RULES)

    assert state.paused is message and state.paused_since == T0
    assert state.pause_deadline == T0 + timedelta(seconds=RULES.pause_timeout)
    assert effects == [
        RelayTo(KILL_SIGNAL, message, "kid-a", "down"),
        RelayTo(KILL_SIGNAL, message, "kid-b", "down"),
        CancelInFlight(),
        Record(
            KILL_SIGNAL,
            True,
            "paused; 2 in-flight activities cancelled (re-dispatched on resume), 3 children paused",
            message,
        ),
        ShowState("paused"),
        WatchPause(message, RULES.pause_timeout),
    ]


def test_a_fleet_pause_polls_the_ledger_for_its_resume_unless_kills_are_not_checked() -> None:
    message = kill(target="tenant", workflow_id=None, tenant="acme")
    _, effects = core.apply(ControlState(), message, T0, Run(), RULES)
    assert effects[-1] == PollFleet(message)
    no_check = dataclasses.replace(RULES, check_kills_at_start=False)
    _, effects = core.apply(ControlState(), message, T0, Run(), no_check)
    assert not any(isinstance(e, PollFleet) for e in effects)


def test_a_second_pause_changes_nothing_but_is_still_relayed() -> None:
    first = paused_state()
    state = first.model_copy(update={"children": {"c": "kid"}})
    again = kill()
    after, effects = core.apply(state, again, T0 + timedelta(seconds=5), Run(), RULES)
    assert after.paused is first.paused and after.paused_since == T0
    assert effects == [
        RelayTo(KILL_SIGNAL, again, "kid", "down"),
        Record(KILL_SIGNAL, True, "already paused", again),
    ]


def test_a_kill_of_a_stopped_run_is_recorded_and_changes_nothing() -> None:
    state, effects = core.apply(ControlState(), kill(), T0, Run(stopped=True), RULES)
    assert state == ControlState()
    assert records(effects) == [(KILL_SIGNAL, True, "already stopped; nothing changed")]
    assert len(effects) == 1


def test_an_unsigned_terminate_is_taken_as_a_pause() -> None:
    state, effects = core.apply(ControlState(), kill(mode="terminate"), T0, Run(), RULES)
    assert state.paused is not None and state.paused.mode == "pause"
    assert records(effects)[0] == (KILL_SIGNAL, True, "unsigned terminate taken as a pause")
    assert not any(isinstance(e, Halt) for e in effects)


def test_a_signed_terminate_halts_the_run_and_a_tree_terminate_reaches_the_children() -> None:
    state = ControlState(children={"c": "kid"})
    message = kill(mode="terminate", signature=SIGNED, key_id="k", reason="runaway")
    after, effects = core.apply(state, message, T0, Run(), RULES)
    assert after.paused is None
    halt = Halt("run Planner/wf-1", "terminate by oncall", "oncall", "runaway")
    assert effects == [Record(KILL_SIGNAL, True, "terminated", message), halt]

    tree = kill(mode="terminate", signature=SIGNED, key_id="k", target="tree")
    _, effects = core.apply(state, tree, T0, Run(), RULES)
    assert effects[1] == RelayTo(KILL_SIGNAL, tree, "kid", "down")
    assert effects[2] == Halt("tree of wf-1", "terminate by oncall", "oncall", "why not")


def test_a_resume_lifts_the_pause_and_says_what_it_was() -> None:
    state = paused_state(issuer="alice")
    message = resume()
    state, effects = core.apply(state, message, T0 + timedelta(seconds=9), Run(), RULES)
    assert (state.paused, state.paused_since, state.pause_deadline) == (None, None, None)
    assert effects == [
        Record(
            RESUME_SIGNAL,
            True,
            "resumed",
            message,
            {"paused_by": "alice", "since": T0.isoformat()},
            {"state": "running"},
        ),
        ShowState("running"),
    ]


def test_a_resume_of_a_running_run_changes_nothing() -> None:
    state, effects = core.apply(ControlState(), resume(), T0, Run(), RULES)
    assert state == ControlState()
    assert records(effects) == [(RESUME_SIGNAL, True, "not paused; nothing to resume")]


def test_a_pause_times_out_into_a_halt_that_names_the_timeout() -> None:
    halt = core.pause_timed_out(
        kill(issuer="bob"), Run(), dataclasses.replace(RULES, pause_timeout=90)
    )
    assert halt.kill_reason == "paused by bob and not resumed within control.pause_timeout (90 s)"
    assert (halt.scope, halt.dispatch, halt.killed_by) == (
        "run Planner/wf-1",
        "pause by bob",
        "bob",
    )


def test_pause_over_compares_the_pause_itself_not_an_equal_copy() -> None:
    state = paused_state()
    assert state.paused is not None
    assert not core.pause_over(state, state.paused)
    assert core.pause_over(state, state.paused.model_copy())


# -- misdirected and rejected messages -------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (kill(workflow_id="wf-2"), "misdirected: for workflow wf-2"),
        (kill(target="tree", workflow_id=None), "malformed: target tree needs workflow_id"),
        (kill(target="tenant", tenant="other"), "misdirected: for tenant other, this run is acme"),
        (kill(target="agent", agent="Coder"), "misdirected: for agent Coder, this run is Planner"),
    ],
)
def test_a_message_for_another_run_is_rejected_unapplied(
    message: KillMessage, problem: str
) -> None:
    state, effects = core.receive(ControlState(), KILL_SIGNAL, (message, None), T0, Run(), RULES)
    assert state == ControlState()
    assert effects == [Record(KILL_SIGNAL, False, problem, message)]


def test_a_message_the_check_refused_is_recorded_with_the_checks_reason() -> None:
    message = resume(signature=None, key_id=None)
    verdict = (message, "unsigned resume (a valid signature is required)")
    state = paused_state()
    after, effects = core.receive(state, RESUME_SIGNAL, verdict, T0, Run(), RULES)
    assert after is state
    assert records(effects) == [(RESUME_SIGNAL, False, verdict[1])]
    _, effects = core.receive(state, "governor.bogus", (None, None), T0, Run(), RULES)
    assert records(effects) == [("governor.bogus", False, "rejected")]


# -- backpressure ----------------------------------------------------------------------------


def test_backpressure_holds_for_at_most_max_backpressure_and_goes_up_to_the_parent() -> None:
    rules = dataclasses.replace(RULES, max_backpressure=30)
    message = pressure(duration_ms=600_000, retry_after_ms=250, max_concurrency=2, source="llm")
    state, effects = core.apply(ControlState(), message, T0, Run(parent="boss"), rules)
    assert state.backpressure is not None
    assert state.backpressure.until == T0 + timedelta(seconds=30)
    assert (state.backpressure.retry_after_ms, state.backpressure.max_concurrency) == (250, 2)
    assert effects[0] == RelayTo("governor.backpressure", message, "boss", "up")
    assert records(effects) == [
        ("governor.backpressure", True, "slowing down for 30000 ms; relayed to parent boss")
    ]


def test_backpressure_follows_the_propagation_setting_and_never_turns_back() -> None:
    state = ControlState(children={"a": "kid-2", "b": "kid-1"})
    both = dataclasses.replace(RULES, backpressure_propagation="both")
    _, effects = core.apply(state, pressure(), T0, Run(parent="boss"), both)
    targets = [(e.workflow_id, e.direction) for e in effects if isinstance(e, RelayTo)]
    assert targets == [("boss", "up"), ("kid-1", "down"), ("kid-2", "down")]
    # a message relayed down is not sent back up, nor one relayed up down again
    _, effects = core.apply(state, pressure(relay="down"), T0, Run(parent="boss"), both)
    assert [e.direction for e in effects if isinstance(e, RelayTo)] == ["down", "down"]
    _, effects = core.apply(state, pressure(relay="up"), T0, Run(parent="boss"), both)
    assert [e.direction for e in effects if isinstance(e, RelayTo)] == ["up"]
    none = dataclasses.replace(RULES, backpressure_propagation="none")
    _, effects = core.apply(state, pressure(), T0, Run(parent="boss"), none)
    assert not any(isinstance(e, RelayTo) for e in effects)


def test_backpressure_expires_and_then_no_longer_holds() -> None:
    state, _ = core.apply(ControlState(), pressure(duration_ms=1000), T0, Run(), RULES)
    assert core.holds(state, T0 + timedelta(milliseconds=999))
    assert not core.holds(state, T0 + timedelta(seconds=1))
    expired, effects = core.expire(state, T0 + timedelta(seconds=1))
    assert expired.backpressure is None and effects == []
    unchanged, _ = core.expire(state, T0)
    assert unchanged is state


@settings(max_examples=60, deadline=None)
@given(
    pressure_ms=st.one_of(st.none(), st.integers(1, 100_000)),
    override_s=st.one_of(st.none(), st.integers(1, 100)),
    probe_ms=st.integers(0, 200_000),
)
def test_nothing_expires_before_the_next_expiry_and_something_does_at_it(
    pressure_ms: int | None, override_s: int | None, probe_ms: int
) -> None:
    # the control plane skips expire() until next_expiry(): that skip must lose nothing
    run = tokens_run(ceiling=1000, hard=5000)
    state = ControlState()
    if pressure_ms is not None:
        state, _ = core.apply(state, pressure(duration_ms=pressure_ms), T0, run, RULES)
    if override_s is not None:
        state, effects = core.apply(state, override(duration_s=override_s), T0, run, RULES)
        run.follow(effects)
    ends = [T0 + timedelta(milliseconds=pressure_ms)] if pressure_ms is not None else []
    ends += [T0 + timedelta(seconds=override_s)] if override_s is not None else []
    first = core.next_expiry(state)
    assert first == (min(ends) if ends else None)
    now = T0 + timedelta(milliseconds=probe_ms)
    after, effects = core.expire(state, now)
    if first is None or now < first:
        assert after is state and effects == []
    else:
        assert after is not state  # the first one to end is dropped
        assert core.next_expiry(after) is None or core.next_expiry(after) > now


# -- overrides -------------------------------------------------------------------------------


def test_an_override_sets_the_limit_until_it_expires_and_then_restores_it() -> None:
    run = tokens_run(ceiling=1000, hard=5000)
    message = override(value=3000, duration_s=60)
    state, effects = core.apply(ControlState(), message, T0, run, RULES)
    assert effects[0] == SetCeiling("max_tokens_per_task", 3000)
    assert records(effects) == [
        (OVERRIDE_SIGNAL, True, "override max_tokens_per_task 1000 -> 3000 for 60 s")
    ]
    active = state.overrides["max_tokens_per_task"]
    assert (active.value, active.before, active.hard_ceiling) == (3000, 1000, 5000)
    run.follow(effects)

    # a second override remembers the ceiling the first one replaced
    later = T0 + timedelta(seconds=30)
    state, effects = core.apply(state, override(value=4000, duration_s=60), later, run, RULES)
    assert state.overrides["max_tokens_per_task"].before == 1000
    assert records(effects)[0][2].startswith("override max_tokens_per_task 3000 -> 4000")
    run.follow(effects)

    state, effects = core.expire(state, later + timedelta(seconds=60))
    assert state.overrides == {}
    assert effects == [SetCeiling("max_tokens_per_task", 1000)]


def test_an_override_lasts_at_most_max_override() -> None:
    rules = dataclasses.replace(RULES, max_override=10)
    state, _ = core.apply(
        ControlState(), override(duration_s=3600), T0, tokens_run(hard=5000), rules
    )
    assert state.overrides["max_tokens_per_task"].until == T0 + timedelta(seconds=10)


def test_an_override_above_the_hard_ceiling_is_rejected_or_clamped() -> None:
    run = tokens_run(ceiling=1000, hard=1500)
    state, effects = core.apply(ControlState(), override(value=9000), T0, run, RULES)
    assert state.overrides == {}
    assert effects == [
        Record(
            OVERRIDE_SIGNAL,
            False,
            "9000 is above the hard ceiling 1500 of max_tokens_per_task "
            "(control.above_ceiling: reject)",
            effects[0].message if isinstance(effects[0], Record) else None,
        )
    ]
    clamp = dataclasses.replace(RULES, above_ceiling="clamp")
    state, effects = core.apply(ControlState(), override(value=9000), T0, run, clamp)
    assert state.overrides["max_tokens_per_task"].value == 1500
    assert SetCeiling("max_tokens_per_task", 1500) in effects
    assert records(effects)[0][2].endswith("(clamped from 9000 to the hard ceiling)")


def test_an_override_of_an_unknown_or_unset_limit_is_rejected() -> None:
    _, effects = core.apply(
        ControlState(), override(limit="max_wall_time_per_task"), T0, tokens_run(), RULES
    )
    assert records(effects)[0][2].startswith("unknown limit 'max_wall_time_per_task'")
    _, effects = core.apply(
        ControlState(), override(limit="max_cost_usd_per_task"), T0, tokens_run(), RULES
    )
    assert records(effects) == [
        (OVERRIDE_SIGNAL, False, "max_cost_usd_per_task is not set for agent Planner")
    ]


def test_a_tree_override_is_relayed_even_when_this_run_rejects_it() -> None:
    state = ControlState(children={"c": "kid"})
    message = override(limit="max_cost_usd_per_task", target="tree")
    _, effects = core.apply(state, message, T0, tokens_run(), RULES)
    assert effects[0] == RelayTo(OVERRIDE_SIGNAL, message, "kid", "down")
    assert records(effects)[0][1] is False


# -- the fleet -------------------------------------------------------------------------------


def stored(scope: str, signal: str, at: int, message: AnyControl) -> dict[str, Any]:
    return {scope: {signal: {"recorded_at_ms": at, "message": message.model_dump(mode="json")}}}


class Verifier:
    """A stand-in for the signature check: accepts what it is told to, counts the calls."""

    def __init__(self, refuse: str | None = None) -> None:
        self.calls = 0
        self.refuse = refuse

    def __call__(
        self, signal: str, data: Any, recorded_at_ms: int
    ) -> tuple[AnyControl | None, str | None]:
        self.calls += 1
        model = KillMessage if signal == KILL_SIGNAL else ResumeMessage
        return model.model_validate(data), self.refuse


def test_a_stored_fleet_kill_pauses_the_run_once_and_a_newer_resume_lifts_it() -> None:
    verify = Verifier()
    fleet_kill = kill(
        target="tenant", workflow_id=None, tenant="acme", signature=SIGNED, key_id="k"
    )
    entry = stored("tenant:acme", KILL_SIGNAL, 100, fleet_kill)
    state, effects = core.take_stored(ControlState(), entry, verify, T0, Run(), RULES)
    assert state.paused == fleet_kill and PollFleet(fleet_kill) in effects

    # the same stored message again is not even checked again
    again, effects = core.take_stored(state, entry, verify, T0, Run(), RULES)
    assert verify.calls == 1 and effects == [] and again.paused is state.paused

    fleet_resume = resume(target="tenant", workflow_id=None, tenant="acme")
    entry = stored("tenant:acme", RESUME_SIGNAL, 200, fleet_resume)
    state, effects = core.take_stored(state, entry, verify, T0, Run(), RULES)
    assert state.paused is None
    assert records(effects) == [(RESUME_SIGNAL, True, "resumed")]


def test_a_stored_message_that_fails_its_check_or_is_misdirected_is_rejected() -> None:
    fleet_kill = kill(target="tenant", workflow_id=None, tenant="acme")
    entry = stored("tenant:acme", KILL_SIGNAL, 100, fleet_kill)
    state, effects = core.take_stored(
        ControlState(), entry, Verifier("unsigned stored kill"), T0, Run(), RULES
    )
    assert state.paused is None
    assert records(effects) == [
        (KILL_SIGNAL, False, "stored for tenant:acme: unsigned stored kill")
    ]

    other = stored(
        "tenant:zeta", KILL_SIGNAL, 100, kill(target="tenant", workflow_id=None, tenant="zeta")
    )
    state, effects = core.take_stored(ControlState(), other, Verifier(), T0, Run(), RULES)
    assert state.paused is None
    assert records(effects) == [
        (
            KILL_SIGNAL,
            False,
            "stored for tenant:zeta: misdirected: for tenant zeta, this run is acme",
        )
    ]


def fleet_state(
    *entries: tuple[str, str, int, AnyControl], paused: KillMessage | None = None
) -> ControlState:
    fleet: dict[str, dict[str, core.FleetEntry]] = {}
    for scope, signal, at, message in entries:
        assert isinstance(message, KillMessage | ResumeMessage)
        fleet.setdefault(scope, {})[signal] = core.FleetEntry(recorded_at_ms=at, message=message)
    return ControlState(fleet=fleet, paused=paused)


def test_judging_the_fleet_the_newer_of_kill_and_resume_wins_per_scope() -> None:
    pause = kill(target="tenant", workflow_id=None, tenant="acme")
    lift = resume(target="tenant", workflow_id=None, tenant="acme")
    end = kill(
        target="agent",
        workflow_id=None,
        agent="Planner",
        mode="terminate",
        signature=SIGNED,
        key_id="k",
    )
    assert (
        core.judge_fleet(fleet_state(("t", KILL_SIGNAL, 5, pause), ("t", RESUME_SIGNAL, 4, lift)))
        is pause
    )
    assert (
        core.judge_fleet(fleet_state(("t", KILL_SIGNAL, 5, pause), ("t", RESUME_SIGNAL, 6, lift)))
        is None
    )
    # a resume lifts only a pause that came from the fleet
    assert core.judge_fleet(fleet_state(("t", RESUME_SIGNAL, 6, lift), paused=pause)) is lift
    assert core.judge_fleet(fleet_state(("t", RESUME_SIGNAL, 6, lift), paused=kill())) is None
    # a signed terminate anywhere wins over a pause elsewhere, even on a paused run
    judged = fleet_state(("a", KILL_SIGNAL, 1, pause), ("b", KILL_SIGNAL, 1, end), paused=pause)
    assert core.judge_fleet(judged) is end
    # a winning pause does not pause an already paused run again
    assert core.judge_fleet(fleet_state(("t", KILL_SIGNAL, 5, pause), paused=kill())) is None


# -- the dispatch gate ----------------------------------------------------------------------


def test_the_gate_waits_for_a_resume_spaces_dispatches_and_caps_those_in_flight() -> None:
    assert core.may_dispatch(ControlState(), T0, 50, T0) == Go()
    assert core.may_dispatch(paused_state(), T0, 0, None) == AwaitResume()

    message = pressure(retry_after_ms=500, max_concurrency=2, duration_ms=10_000)
    state, _ = core.apply(ControlState(), message, T0, Run(), RULES)
    later = T0 + timedelta(milliseconds=100)
    assert core.may_dispatch(state, later, 0, T0) == SleepUntil(T0 + timedelta(milliseconds=500))
    assert core.may_dispatch(state, later, 0, None) == Go()
    at = T0 + timedelta(seconds=1)
    assert core.may_dispatch(state, at, 1, T0) == Go()
    assert core.may_dispatch(state, at, 2, T0) == AwaitSlot(2, timedelta(seconds=9))
    # spacing never outlasts the backpressure itself, and an expired one holds nothing
    short, _ = core.apply(
        ControlState(), pressure(retry_after_ms=5000, duration_ms=1000), T0, Run(), RULES
    )
    assert core.may_dispatch(short, T0, 0, T0) == SleepUntil(T0 + timedelta(seconds=1))
    assert core.may_dispatch(state, T0 + timedelta(seconds=10), 99, T0) == Go()


def test_dispatches_held_while_paused_are_counted() -> None:
    assert core.held(core.held(ControlState())).held_while_paused == 2


# -- children, continue-as-new, the audit trail ------------------------------------------


def test_a_child_that_starts_while_paused_is_paused_too() -> None:
    state, effects = core.joined(ControlState(), "child:1", "kid")
    assert effects == [] and state.children == {"child:1": "kid"}
    paused = paused_state()
    paused, effects = core.joined(paused, "child:1", "kid")
    assert paused.paused is not None
    assert effects == [RelayTo(KILL_SIGNAL, paused.paused, "kid", "down")]
    after, known = core.left(paused, "child:1")
    assert known and after.children == {}
    assert core.left(after, "child:1") == (after, False)


def test_a_pause_survives_continue_as_new() -> None:
    state = paused_state(issuer="alice")
    carried = core.carry(state, {"n1": 5})
    assert list(carried) == ["nonces", "paused"] and carried["nonces"] == {"n1": 5}
    later = T0 + timedelta(hours=1)
    restored, effects = core.restore(ControlState(), carried, later, RULES)
    assert restored.paused == state.paused and restored.paused_since == later
    assert records(effects) == [(KILL_SIGNAL, True, "still paused after continue-as-new")]
    assert core.carry(ControlState(), {}) == {"nonces": {}}
    assert core.restore(ControlState(), {"nonces": {}}, later, RULES) == (ControlState(), [])


def test_the_audit_trail_numbers_records_and_the_status_shows_the_newest() -> None:
    audit = AuditTrail()
    for i in range(2 * AUDIT_KEPT + 1):
        audit.add(Record(KILL_SIGNAL, i % 2 == 0, f"r{i}"), T0)
    assert (audit.accepted, audit.rejected, audit.seq) == (
        AUDIT_KEPT + 1,
        AUDIT_KEPT,
        2 * AUDIT_KEPT + 1,
    )
    state, _ = core.apply(ControlState(), override(value=10, duration_s=5), T0, tokens_run(), RULES)
    status = core.status(state, audit, T0 + timedelta(seconds=5), "wf-1", "r-1", killed=False)
    assert len(status.audit) == AUDIT_KEPT and status.audit[-1].seq == 2 * AUDIT_KEPT + 1
    assert status.state == "running" and status.overrides == []  # the override has expired
    assert core.status(paused_state(), audit, T0, "wf-1", "r-1", killed=False).state == "paused"
    assert core.status(paused_state(), audit, T0, "wf-1", "r-1", killed=True).state == "killed"


def test_the_control_core_imports_only_the_standard_library_and_pydantic() -> None:
    tree = ast.parse(Path(core.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.level, node.module or "")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        (0, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert all(level == 0 for level, _ in imported), imported  # nothing else of the package
    roots = {name.split(".")[0] for _, name in imported}
    assert roots <= {
        "__future__",
        "collections",
        "dataclasses",
        "datetime",
        "typing",
        "pydantic",
    }, roots


# -- properties ------------------------------------------------------------------------------

_LIMITS = ["max_tokens_per_task", "max_cost_usd_per_task", "max_wall_time_per_task"]
_targets = st.sampled_from(["run", "tree", "tenant", "agent"])


@st.composite
def any_message(draw: st.DrawFn) -> AnyControl:
    """A control message as the check would pass it: for this run or not, signed or not."""
    target = draw(_targets)
    where = {
        "target": target,
        "workflow_id": draw(st.sampled_from(["wf-1", "wf-2"]))
        if target in ("run", "tree")
        else None,
        "tenant": draw(st.sampled_from(["acme", "zeta"])),
        "agent": draw(st.sampled_from(["Planner", "Coder"])),
        "signature": draw(st.sampled_from([None, SIGNED])),
        "key_id": "k",
    }
    kind = draw(st.sampled_from(["kill", "resume", "backpressure", "override"]))
    if kind == "kill":
        return kill(mode=draw(st.sampled_from(["pause", "terminate"])), **where)
    if kind == "resume":
        return resume(**where)
    if kind == "backpressure":
        return pressure(
            duration_ms=draw(st.integers(1, 10_000_000)),
            max_concurrency=draw(st.none() | st.integers(1, 5)),
            retry_after_ms=draw(st.integers(0, 5000)),
            **where,
        )
    return override(
        limit=draw(st.sampled_from(_LIMITS)),
        value=draw(st.floats(0, 1e7, allow_nan=False)),
        duration_s=draw(st.floats(0.001, 1e5, allow_nan=False)),
        **where,
    )


_steps = st.lists(
    st.tuples(any_message(), st.floats(0, 7200, allow_nan=False), st.booleans()), max_size=12
)
_rules = st.builds(
    ControlRules,
    above_ceiling=st.sampled_from(["reject", "clamp"]),
    max_override=st.floats(1, 1e5),
    backpressure_propagation=st.sampled_from(["up", "down", "both", "none"]),
    max_backpressure=st.floats(1, 1e4),
    overridable=st.just(OVERRIDABLE),
)


def _hard_run(hard_tokens: float, hard_cost: float) -> Run:
    scope = "run Planner/wf-1"
    return Run(
        parent="boss",
        limits={
            "max_tokens_per_task": OwnLimit(hard_tokens, hard_tokens, scope),
            "max_cost_usd_per_task": OwnLimit(hard_cost, hard_cost, scope),
        },
    )


@settings(max_examples=100, deadline=None)
@given(_steps, _rules, st.floats(0, 1e6), st.floats(0, 1e4))
def test_no_sequence_of_overrides_lifts_a_limit_above_its_hard_ceiling(
    steps: list[tuple[AnyControl, float, bool]],
    rules: ControlRules,
    hard_tokens: float,
    hard_cost: float,
) -> None:
    run = _hard_run(hard_tokens, hard_cost)
    state, now = ControlState(), T0
    for message, wait, authorised in steps:
        now += timedelta(seconds=wait)
        verdict = (message, None if authorised else "bad signature")
        state, effects = core.receive(state, "governor.any", verdict, now, run, rules)
        run.follow(effects)
        state, effects = core.expire(state, now)
        run.follow(effects)
        for name, own in run.limits.items():
            assert own.ceiling <= own.hard_ceiling, (name, own)
        for active in state.overrides.values():
            assert active.value <= active.hard_ceiling == run.limits[active.limit].hard_ceiling
    # once every override has expired, every limit is back where the policy set it
    state, effects = core.expire(state, now + timedelta(seconds=rules.max_override + 1))
    run.follow(effects)
    assert state.overrides == {}
    assert {n: o.ceiling for n, o in run.limits.items()} == {
        "max_tokens_per_task": hard_tokens,
        "max_cost_usd_per_task": hard_cost,
    }


def _for_this_run(message: AnyControl) -> bool:
    """Whether a message names the run ``_hard_run`` describes (an oracle of our own)."""
    if message.target in ("run", "tree"):
        return message.workflow_id == "wf-1"
    return message.tenant == "acme" if message.target == "tenant" else message.agent == "Planner"


@settings(max_examples=100, deadline=None)
@given(_steps, _rules)
def test_only_an_authorised_resume_for_this_run_lifts_a_pause(
    steps: list[tuple[AnyControl, float, bool]], rules: ControlRules
) -> None:
    run = _hard_run(1000, 10)
    state, _ = core.apply(ControlState(), kill(), T0, run, rules)
    now = T0
    for message, wait, authorised in steps:
        now += timedelta(seconds=wait)
        verdict = (
            message,
            None if authorised else "unsigned resume (a valid signature is required)",
        )
        before = state.paused
        state, effects = core.receive(state, RESUME_SIGNAL, verdict, now, run, rules)
        if any(isinstance(e, Halt) for e in effects):
            run.stopped = True
        lifted = before is not None and state.paused is None
        if lifted:
            assert authorised and isinstance(message, ResumeMessage), message
            assert _for_this_run(message), message
            state, _ = core.apply(state, kill(), now, run, rules)  # pause again and go on
        if before is not None and not lifted:
            assert state.paused is before


@settings(max_examples=100, deadline=None)
@given(
    _steps,
    _rules,
    st.lists(st.tuples(st.sampled_from(["c1", "c2", "c3"]), st.booleans()), max_size=6),
)
def test_the_state_after_any_messages_round_trips_through_json(
    steps: list[tuple[AnyControl, float, bool]],
    rules: ControlRules,
    children: list[tuple[str, bool]],
) -> None:
    run = _hard_run(1000, 10)
    state, now = ControlState(), T0
    for key, joins in children:
        state = core.joined(state, key, f"kid-{key}")[0] if joins else core.left(state, key)[0]
    verify = Verifier()
    for i, (message, wait, authorised) in enumerate(steps):
        now += timedelta(seconds=wait)
        state, _ = core.receive(
            state, "governor.any", (message, None if authorised else "no"), now, run, rules
        )
        if isinstance(message, KillMessage | ResumeMessage):
            signal = KILL_SIGNAL if isinstance(message, KillMessage) else RESUME_SIGNAL
            entry = stored(f"tenant:{message.tenant}", signal, i, message)
            state, _ = core.take_stored(state, entry, verify, now, run, rules)
        state = core.held(state) if state.paused is not None else state

        again = ControlState.model_validate(state.model_dump(mode="json"))
        assert again == state
        assert ControlState.model_validate_json(state.model_dump_json()) == state
        carried = core.carry(state, {"n": 1})
        restored, _ = core.restore(ControlState(), carried, now, rules)
        assert restored.paused == state.paused
