"""Leases and the run's shared holdings (pure), and the typed ledger requests and replies."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from temporal_governor.core.book import (
    CAPACITY_LIMIT,
    MAX_AMOUNT,
    MAX_SETTLEMENTS,
    LedgerBook,
    LedgerRefusal,
    ReleaseRunRequest,
    ReserveRequest,
    SettleRequest,
)
from temporal_governor.core.leases import (
    Halt,
    Holdings,
    Lease,
    Unavailable,
    Wait,
    after_refusal,
    chunks,
    reservation,
    signature_of,
    split,
    wanted_of,
)
from temporal_governor.core.scopes import SharedLimit
from temporal_governor.ledger._activity import LedgerCall
from temporal_governor.ledger._workflow import (
    BASELINE,
    EXTEND,
    MALFORMED_UPDATE,
    OBSERVE,
    READ_CONTROLS,
    RELEASE_RUN,
    RESERVE,
    SETTLE,
    UPDATES,
    MalformedLedgerReply,
)

EPS = 1e-6


def tokens_limit(
    ceiling: float, scope: str = "tenant:acme", window_s: float | None = None
) -> SharedLimit:
    return SharedLimit(
        name=f"tenants.acme.quotas.max_tokens_{ceiling:g}",
        scope=scope,
        resource="tokens",
        ceiling=ceiling,
        window_s=window_s,
    )


CONCURRENT = SharedLimit(
    name="agents.planner.quotas.max_concurrent_tasks",
    scope="agent:planner",
    resource="concurrency",
    ceiling=2,
)


# -- the lease ----------------------------------------------------------------------------


def test_a_lease_fits_what_is_left_after_its_running_and_finished_dispatches() -> None:
    lease = Lease(ledger_key="k", granted={"tokens": 100.0, "cost_usd": 1.0}, taken_at=0.0)
    assert lease.fits({"tokens": 100.0, "cost_usd": 1.0})
    lease.hold({"tokens": 60.0})
    assert lease.dispatches == 1
    assert lease.left("tokens") == pytest.approx(40.0)
    assert lease.fits({"tokens": 40.0})
    assert not lease.fits({"tokens": 40.1})
    assert not lease.fits({"subtasks": 1.0})  # never granted: nothing of it is left
    lease.give_back({"tokens": 60.0}, {"tokens": 25.0, "cost_usd": 0.5})
    # only what the dispatch leased is given back; its use of other resources is not counted
    assert lease.used == {"tokens": 25.0}
    assert lease.left("tokens") == pytest.approx(75.0)
    assert lease.unused() == {"tokens": pytest.approx(75.0), "cost_usd": 1.0}


def test_a_lease_is_drained_once_no_dispatch_holds_it_and_stale_after_its_age() -> None:
    lease = Lease(ledger_key="k", granted={"tokens": 10.0}, taken_at=100.0)
    assert lease.drained()
    lease.hold({"tokens": 0.1})
    lease.hold({"tokens": 0.2})
    assert not lease.drained()
    lease.give_back({"tokens": 0.1}, {"tokens": 0.1})
    assert not lease.drained()
    lease.give_back({"tokens": 0.2}, {})
    assert lease.drained()  # float residue of 0.1 + 0.2 - 0.1 - 0.2 does not count
    assert not lease.stale(400.0, 300.0)
    assert lease.stale(400.1, 300.0)


def test_concurrency_is_reserved_per_dispatch_and_everything_is_without_leases() -> None:
    tokens = tokens_limit(1000)
    assert split([tokens, CONCURRENT], leases=True) == ([CONCURRENT], [tokens])
    assert split([tokens, CONCURRENT], leases=False) == ([tokens, CONCURRENT], [])
    assert split([CONCURRENT], leases=False) == ([CONCURRENT], [])
    assert wanted_of([tokens, CONCURRENT], {"tokens": 5, "cost_usd": 2.0}) == {
        "tokens": 5.0,
        "concurrency": 0.0,
    }


def test_a_lease_signature_names_its_scopes_and_ceilings_in_any_order() -> None:
    a, b = tokens_limit(1000), tokens_limit(50, "tenant:acme", 60.0)
    assert signature_of([a, b]) == signature_of([b, a])
    assert signature_of([a]) != signature_of([tokens_limit(2000)])  # a new ceiling: a new lease


def test_a_lease_asks_for_its_dispatches_and_accepts_one() -> None:
    limit = tokens_limit(1000)
    lease = reservation(
        "run/k#1", "run", [limit], {"tokens": 30.0}, 600.0, lease_of=20, max_share=0.25
    )
    assert lease.amounts == {"tokens": 600.0}
    assert lease.minimum == {"tokens": 30.0}
    assert lease.max_share == 0.25
    single = reservation("run/k#2", "run", [limit], {"tokens": 30.0}, 600.0)
    assert single.amounts == {"tokens": 30.0}
    assert "minimum" not in single.wire() and "max_share" not in single.wire()
    assert "controls_for" not in single.wire()
    asking = reservation(
        "run/k#3",
        "run",
        [limit],
        {"tokens": 1.0},
        600.0,
        controls_for=["tenant:acme"],
        controls_since_ms=7,
    )
    assert asking.wire()["controls_for"] == ["tenant:acme"]
    assert asking.wire()["controls_since_ms"] == 7


# -- what a refusal leads to --------------------------------------------------------------


def refusal(
    limit: str = "tenants.acme.quotas.max_tokens", retry: float | None = None
) -> LedgerRefusal:
    return LedgerRefusal(
        limit=limit,
        scope="tenant:acme",
        resource="tokens",
        observed=2.0,
        ceiling=1.0,
        retry_after_s=retry,
    )


def test_a_budget_refusal_halts_unless_the_policy_waits_for_its_window() -> None:
    assert after_refusal(refusal(retry=5.0), 0.0, 30.0, "terminate") == Halt()
    assert after_refusal(refusal(retry=5.0), 0.0, 30.0, "wait") == Wait(5.0)
    assert after_refusal(refusal(retry=50.0), 10.0, 30.0, "wait") == Wait(20.0)  # up to max_wait
    assert after_refusal(refusal(), 0.0, 30.0, "wait") == Wait(0.5)  # no window: a short pause
    assert after_refusal(refusal(retry=0.0), 0.0, 30.0, "wait") == Wait(0.5)
    assert after_refusal(refusal(retry=0.001), 0.0, 30.0, "wait") == Wait(0.05)
    assert after_refusal(refusal(retry=5.0), 30.0, 30.0, "wait") == Halt()  # waited enough


def test_a_full_ledger_is_waited_for_then_counts_as_unavailable() -> None:
    full = refusal(limit=CAPACITY_LIMIT, retry=1.0)
    assert after_refusal(full, 0.0, 30.0, "terminate") == Wait(1.0)
    assert after_refusal(full, 29.5, 30.0, "terminate") == Wait(0.5)
    assert after_refusal(full, 30.0, 30.0, "terminate") == Unavailable()
    assert after_refusal(full, 0.0, 0.0, "wait") == Unavailable()


# -- the run's holdings -------------------------------------------------------------------


def test_tickets_are_numbered_and_reserve_neither_concurrency_nor_zeros() -> None:
    holdings = Holdings()
    first = holdings.issue({"tokens": 10, "concurrency": 1.0, "cost_usd": 0.0})
    second = holdings.issue({})
    assert (first.number, second.number) == (1, 2)
    assert first.reserved == {"tokens": 10.0}
    assert set(holdings.tickets) == {1, 2}
    holdings.close(first)
    assert set(holdings.tickets) == {2}


def test_a_recorded_ticket_gives_its_lease_back_once_and_settles_its_own_reservation() -> None:
    holdings = Holdings()
    sig = signature_of([tokens_limit(1000)])
    lease = holdings.take(sig, "run/lease#1", {"tokens": 100.0}, 0.0)
    ticket = holdings.issue({"tokens": 40.0, "concurrency": 1.0})
    lease.hold({"tokens": 40.0})
    ticket.lease, ticket.leased = lease, {"tokens": 40.0}
    ticket.ledger_key, ticket.per_dispatch = "run/slot#2", ("concurrency",)
    holdings.record(ticket, {"tokens": 12.0, "concurrency": 1.0})
    holdings.record(ticket, {"tokens": 99.0})  # a second report changes nothing
    assert ticket.actual == {"tokens": 12.0}
    assert lease.used == {"tokens": 12.0} and lease.drained()
    assert holdings.dispatch_settlement(ticket) == ("run/slot#2", {})  # a slot commits nothing
    assert holdings.lease_done(ticket) is None  # the lease is still the run's current one


def test_a_lease_replaced_while_held_is_settled_when_its_last_dispatch_ends() -> None:
    holdings = Holdings()
    sig = signature_of([tokens_limit(1000)])
    old = holdings.take(sig, "run/a#1", {"tokens": 100.0}, 0.0)
    holdings.granted("run/a#1")
    ticket = holdings.issue({"tokens": 90.0})
    old.hold({"tokens": 90.0})
    ticket.lease, ticket.leased = old, {"tokens": 90.0}
    assert holdings.fitting(sig, {"tokens": 20.0}, 1.0, 300.0) is None  # 10 left
    assert holdings.fitting(sig, {"tokens": 10.0}, 1.0, 300.0) is old
    assert holdings.fitting(sig, {"tokens": 10.0}, 301.0, 300.0) is None  # stale
    assert holdings.retire(sig) is None  # held: kept among the retired
    assert old.retired and holdings.retired == [old] and sig not in holdings.leases
    assert holdings.retire(sig) is None  # nothing left to retire
    holdings.record(ticket, {"tokens": 70.0})
    assert holdings.lease_done(ticket) is old
    holdings.forget(old)
    assert holdings.retired == []
    drained = holdings.take(sig, "run/b#2", {"tokens": 100.0}, 2.0)
    assert holdings.retire(sig) is drained  # nothing holds it: settle it now


def test_the_run_end_settles_what_is_open_and_charges_unknown_outcomes_what_they_reserved() -> None:
    holdings = Holdings()
    sig = signature_of([tokens_limit(1000)])
    lease = holdings.take(sig, "run/lease#1", {"tokens": 100.0}, 0.0)
    holdings.granted("run/lease#1")
    done, lost = holdings.issue({"tokens": 30.0}), holdings.issue({"tokens": 20.0})
    for ticket in (done, lost):
        lease.hold(ticket.reserved)
        ticket.lease, ticket.leased = lease, dict(ticket.reserved)
    holdings.record(done, {"tokens": 5.0})
    slot = holdings.issue({"tokens": 0.0, "concurrency": 1.0})
    slot.ledger_key, slot.per_dispatch = "run/slot#2", ("concurrency",)
    holdings.granted("run/slot#2")
    forgotten = holdings.issue({"subtasks": 1.0})
    forgotten.ledger_key, forgotten.per_dispatch = "run/child#3", ("subtasks",)  # never granted
    holdings.unanswered = 1
    assert holdings.end() == {"run/lease#1": {"tokens": 25.0}, "run/slot#2": {}}
    assert lease.drained()
    assert not holdings.tickets and not holdings.leases and not holdings.retired
    assert holdings.holds_anything()
    holdings.open.clear()
    assert holdings.holds_anything()  # an unanswered reservation may be held
    holdings.unanswered = 0
    assert not holdings.holds_anything()


def test_settlements_go_in_key_order_in_chunks_the_ledger_takes() -> None:
    settlements = {f"k{i:05d}": {"tokens": float(i)} for i in range(2 * MAX_SETTLEMENTS + 1)}
    cut = chunks(settlements)
    assert [len(c) for c in cut] == [MAX_SETTLEMENTS, MAX_SETTLEMENTS, 1]
    assert [k for c in cut for k in c] == sorted(settlements)
    assert chunks({}) == [{}]  # the run's end still releases the rest


# -- a lease never over-grants ------------------------------------------------------------


@dataclass
class _Run:
    name: str
    holdings: Holdings = field(default_factory=Holdings)
    calls: int = 0


Step = tuple[str, int, float]

_steps = st.lists(
    st.tuples(
        st.sampled_from(["dispatch", "dispatch", "finish", "finish", "tick", "end"]),
        st.integers(min_value=0, max_value=3),
        st.floats(min_value=0.0, max_value=1.0),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    steps=_steps,
    ceiling=st.floats(min_value=1.0, max_value=10_000.0),
    want=st.floats(min_value=0.0, max_value=400.0),
    lease_of=st.integers(min_value=1, max_value=30),
    max_share=st.floats(min_value=0.01, max_value=1.0),
)
def test_a_lease_never_over_grants_and_gives_back_exactly_what_was_unused(
    steps: list[Step], ceiling: float, want: float, lease_of: int, max_share: float
) -> None:
    """Runs lease from one scope in any interleaving; the scope's ceiling always holds.

    Every grant is at most what the scope had left, local holds never pass a lease's grant,
    settling a lease gives back exactly its grant less what its dispatches used, and once
    every run has ended the scope holds nothing and has committed exactly what was used.
    """
    book = LedgerBook()
    limit = tokens_limit(ceiling)
    sig = signature_of([limit])
    runs = [_Run(f"wf-{i}/run") for i in range(4)]
    now, max_age = 1_000.0, 300.0
    used_total = 0.0

    def counter() -> tuple[float, float]:
        found = book.state.counters.get(limit.counter)
        return (0.0, 0.0) if found is None else (found.committed, found.reserved)

    def settle(lease: Lease) -> None:
        unused = lease.unused()
        result = book.settle(SettleRequest(key=lease.ledger_key, actual=lease.used), now)
        assert result.settled
        assert result.released == pytest.approx(unused, abs=EPS)

    for op, index, fraction in steps:
        run = runs[index]
        holdings = run.holdings
        if op == "tick":
            now += max_age * 0.7
        elif op == "dispatch":
            wanted = {"tokens": want}
            lease = holdings.fitting(sig, wanted, now, max_age)
            if lease is None:
                drained = holdings.retire(sig)
                if drained is not None:
                    settle(drained)
                    holdings.settled(drained.ledger_key)
                run.calls += 1
                key = f"{run.name}/activity#{run.calls}"
                committed, reserved = counter()
                left = ceiling - committed - reserved
                result = book.reserve(
                    reservation(
                        key,
                        run.name,
                        [limit],
                        wanted,
                        600.0,
                        lease_of=lease_of,
                        max_share=max_share,
                    ),
                    now,
                )
                if not result.granted:
                    assert want > left - EPS  # refused only when one dispatch does not fit
                    continue
                grant = result.amounts["tokens"]
                assert grant <= left + EPS, "a lease took more than the scope had left"
                assert grant >= want - EPS, "a lease too small for the dispatch that asked"
                assert grant <= want * lease_of + EPS
                holdings.granted(key)
                lease = holdings.take(sig, key, dict(result.amounts), now)
            ticket = holdings.issue(wanted)
            lease.hold(wanted)
            ticket.lease, ticket.leased = lease, wanted
        elif op == "finish":
            running = [t for t in holdings.tickets.values() if t.actual is None]
            if not running:
                continue
            ticket = running[int(fraction * (len(running) - 1))]
            actual = ticket.leased.get("tokens", 0.0) * fraction
            holdings.record(ticket, {"tokens": actual})
            used_total += actual
            done = holdings.lease_done(ticket)
            if done is not None and done.ledger_key in holdings.open:
                settle(done)
                holdings.settled(done.ledger_key)
                holdings.forget(done)
            holdings.close(ticket)
        else:  # the run ends: everything it holds in one release_run
            used_total += sum(
                t.reserved.get("tokens", 0.0) for t in holdings.tickets.values() if t.actual is None
            )
            leases = [*holdings.leases.values(), *holdings.retired]
            settlements = holdings.end()
            committed_before, _ = counter()
            book.release_run(ReleaseRunRequest(run=run.name, settlements=settlements), now)
            committed_after, _ = counter()
            assert committed_after - committed_before == pytest.approx(
                sum(
                    lease.used.get("tokens", 0.0)
                    for lease in leases
                    if lease.ledger_key in holdings.open
                ),
                abs=EPS,
            )
            holdings.open.clear()
        committed, reserved = counter()
        assert committed + reserved <= ceiling + EPS, "the scope's ceiling was passed"
        for each in runs:
            for lease in [*each.holdings.leases.values(), *each.holdings.retired]:
                for resource, granted in lease.granted.items():
                    taken = lease.used.get(resource, 0.0) + lease.held.get(resource, 0.0)
                    assert taken <= granted + EPS, "dispatches held more than their lease"
    for run in runs:  # every run ends
        used_total += sum(
            t.reserved.get("tokens", 0.0) for t in run.holdings.tickets.values() if t.actual is None
        )
        book.release_run(ReleaseRunRequest(run=run.name, settlements=run.holdings.end()), now)
    committed, reserved = counter()
    assert reserved == pytest.approx(0.0, abs=EPS)
    assert committed == pytest.approx(used_total, abs=EPS * max(1.0, used_total))
    assert not book.state.reservations


# -- typed ledger requests and replies ------------------------------------------------------


def _requests() -> dict[str, dict[str, Any]]:
    limit = tokens_limit(1000)
    return {
        "reserve": reservation("r/k#1", "r", [limit], {"tokens": 5.0}, 600.0, lease_of=3).wire(),
        "settle": {"key": "r/k#1", "actual": {"tokens": 2.5}},
        "release_run": {
            "run": "r",
            "settlements": {"r/k#1": {"tokens": 1.0}},
            "release_rest": True,
        },
        "extend": {"run": "r", "ttl_s": 600.0},
        "control": {
            "scope": "tenant:acme",
            "signal": "governor.kill",
            "message": {"issuer": "ops"},
        },
        "read_controls": {"scopes": ["tenant:acme"], "since_ms": 0},
        "baseline": {"keys": ["agent:planner:tokens_per_run"]},
        "observe": {
            "values": {"agent:planner:tokens_per_run": 10.0},
            "alpha": 0.2,
            "min_samples": 5,
        },
    }


@pytest.mark.parametrize("update", sorted(UPDATES))
def test_every_ledger_request_round_trips_through_the_ledger_call(update: str) -> None:
    data = _requests()[update]
    request = UPDATES[update].request_of(data)
    assert request.wire() == data
    call = LedgerCall(ledger_id="ledger", update=update, request=request, update_id=f"{update}:1")
    sent = json.loads(json.dumps(call.model_dump(mode="json")))  # as the local activity gets it
    assert sent["request"] == data  # the wire carries exactly what the caller built
    parsed = LedgerCall.model_validate(sent)
    assert type(parsed.request) is UPDATES[update].request
    assert parsed.request == request
    assert parsed.request.wire() == data


def test_the_reserve_request_is_what_the_previous_glue_sent() -> None:
    """Ledgers already running (and recorded histories) see the same JSON as before."""
    limit = tokens_limit(1000)
    before = {
        "key": "wf/run/activity:1:llm#1",
        "run": "wf/run",
        "amounts": {"tokens": 600.0},
        "limits": [limit.model_dump(mode="json")],
        "ttl_s": 600.0,
        "minimum": {"tokens": 30.0},
        "max_share": 0.1,
        "controls_for": ["tenant:acme", "agent:planner"],
        "controls_since_ms": 0,
    }
    now = reservation(
        "wf/run/activity:1:llm#1",
        "wf/run",
        [limit],
        {"tokens": 30.0},
        600.0,
        lease_of=20,
        max_share=0.1,
        controls_for=["tenant:acme", "agent:planner"],
    )
    assert now.wire() == before
    per_dispatch = reservation("wf/run/a#2", "wf/run", [limit], {"tokens": 30.0}, 600.0)
    assert set(per_dispatch.wire()) == {"key", "run", "amounts", "limits", "ttl_s"}


def test_a_ledger_call_refuses_a_request_of_another_update() -> None:
    settle = SETTLE.request_of({"key": "r/k#1", "actual": {}})
    with pytest.raises(
        ValidationError, match="reserve takes a ReserveRequest, not a SettleRequest"
    ):
        LedgerCall(ledger_id="ledger", update="reserve", request=settle, update_id="x")


@pytest.mark.parametrize(
    ("what", "value", "problem"),
    [
        ("NaN", math.nan, "finite number"),
        ("infinity", math.inf, "finite number"),
        ("negative", -1.0, "greater than or equal to 0"),
        ("huge", MAX_AMOUNT * 10, "less than or equal to"),
    ],
)
def test_requests_with_nan_negative_or_huge_amounts_are_refused_naming_the_field(
    what: str, value: float, problem: str
) -> None:
    limit = tokens_limit(1000)
    with pytest.raises(ValidationError):
        reservation("r/k#1", "r", [limit], {"tokens": value}, 600.0)
    cases: list[tuple[Any, dict[str, Any], str]] = [
        (RESERVE, {**_requests()["reserve"], "amounts": {"tokens": value}}, "amounts.tokens"),
        (SETTLE, {"key": "r/k#1", "actual": {"tokens": value}}, "actual.tokens"),
        (OBSERVE, {"values": {"agent:a:tokens_per_run": value}}, "values.agent:a:tokens_per_run"),
        (
            RELEASE_RUN,
            {"run": "r", "settlements": {"r/k#1": {"cost_usd": value}}},
            "settlements.r/k#1.cost_usd",
        ),
    ]
    for update, data, where in cases:
        with pytest.raises(ApplicationError) as refused:
            update.request_of(data)
        assert refused.value.type == MALFORMED_UPDATE, what
        assert refused.value.non_retryable
        message = refused.value.message
        assert message.startswith(f"malformed {update.request.__name__}: "), message
        assert where in message and problem in message, message
        with pytest.raises(ApplicationError):  # nor through the activity's payload
            LedgerCall.model_validate(
                {"ledger_id": "l", "update": update.name, "request": data, "update_id": "u"}
            )


def test_a_nan_ttl_or_an_infinite_ceiling_is_refused() -> None:
    for data in (
        {**_requests()["reserve"], "ttl_s": math.nan},
        {
            **_requests()["reserve"],
            "limits": [{**tokens_limit(1).model_dump(), "ceiling": math.inf}],
        },
    ):
        with pytest.raises(ApplicationError, match="malformed ReserveRequest"):
            RESERVE.request_of(data)
    with pytest.raises(ApplicationError, match="ttl_s"):
        EXTEND.request_of({"run": "r", "ttl_s": -1.0})


def test_replies_are_typed_and_those_of_recorded_histories_still_parse() -> None:
    # as recorded by the previous release (tests/histories/previous-release)
    reserved = RESERVE.reply_of(
        {
            "amounts": {"tokens": 200.0},
            "controls": {},
            "duplicate": False,
            "granted": True,
            "key": "k#1",
            "refusal": None,
        }
    )
    assert reserved.granted and reserved.amounts == {"tokens": 200.0}
    settled = SETTLE.reply_of(
        {
            "committed": {"tokens": 10.0},
            "key": "k#1",
            "released": {"tokens": -10.0},
            "settled": True,
        }
    )
    assert settled.released == {"tokens": -10.0}  # an overspend gives back less than nothing
    assert RELEASE_RUN.reply_of(3) == 3
    controls = READ_CONTROLS.reply_of(
        {"tenant:acme": {"governor.kill": {"message": {"issuer": "ops"}, "recorded_at_ms": 12}}}
    )
    assert controls["tenant:acme"]["governor.kill"].recorded_at_ms == 12
    refused = RESERVE.reply_of(
        {
            "key": "k#2",
            "granted": False,
            "refusal": {
                "limit": "l",
                "scope": "tenant:acme",
                "resource": "tokens",
                "observed": 2,
                "ceiling": 1,
            },
            "controls": {"agent:a": {"governor.resume": {"message": {}, "recorded_at_ms": 1}}},
        }
    )
    assert refused.refusal is not None and refused.refusal.ceiling == 1.0
    assert refused.controls["agent:a"]["governor.resume"].recorded_at_ms == 1
    baselines = BASELINE.reply_of({"agent:a:tokens_per_run": {"mean": 4.0, "count": 2}})
    assert baselines["agent:a:tokens_per_run"].count == 2


@pytest.mark.parametrize(
    ("update", "reply", "where"),
    [
        (RESERVE, {"key": "k", "granted": "maybe"}, "granted: Input should be a valid boolean"),
        (RESERVE, {"key": "k", "granted": True, "surprise": 1}, "surprise"),
        (SETTLE, {"key": "k"}, "settled"),
        (EXTEND, "many", "reply"),
        (BASELINE, {"a": {"variance": -1.0}}, "a.variance"),
        (READ_CONTROLS, {"tenant:a": {"governor.kill": {"message": {}}}}, "recorded_at_ms"),
    ],
)
def test_a_malformed_reply_is_a_clear_error_not_a_silent_guess(
    update: Any, reply: Any, where: str
) -> None:
    with pytest.raises(MalformedLedgerReply) as malformed:
        update.reply_of(reply)
    message = str(malformed.value)
    assert message.startswith(f"the ledger's reply to {update.name} is malformed: "), message
    assert where in message, message


def test_the_ledger_answers_what_its_callers_parse() -> None:
    """Replies the book makes, dumped as the ledger workflow does, parse back as they were."""
    book = LedgerBook()
    limit = tokens_limit(100)
    lease = reservation("r/k#1", "r", [limit], {"tokens": 10.0}, 600.0, lease_of=20, max_share=0.5)
    granted = book.reserve(RESERVE.request_of(lease.wire()), 0.0)
    assert RESERVE.reply_of(granted.model_dump(mode="json")) == granted
    assert granted.amounts == {"tokens": 50.0}  # half of what is left, not all 200 asked
    too_much = reservation("r/k#2", "r", [limit], {"tokens": 60.0}, 600.0)
    refused = book.reserve(too_much, 0.0)
    assert RESERVE.reply_of(refused.model_dump(mode="json")) == refused
    settled = book.settle(SETTLE.request_of({"key": "r/k#1", "actual": {"tokens": 7.0}}), 1.0)
    assert SETTLE.reply_of(settled.model_dump(mode="json")) == settled
    assert settled.released == {"tokens": 43.0}
    assert isinstance(ReserveRequest.model_validate(lease.wire()), ReserveRequest)
