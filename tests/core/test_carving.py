"""Carving children's allowances out of a run's budget: the pure core, no server."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from temporal_governor import Policy
from temporal_governor.core.accounting import Amounts, Limit, Refusal, RunLedger
from temporal_governor.core.carving import (
    CARVED,
    CHILD_KEY_PREFIX,
    MAX_DEPTH_LIMIT,
    Carve,
    CarveRule,
    FairShare,
    carve,
    child_caps,
    children_in_flight,
    depth_refusal,
    share,
    starved,
)

EPSILON = 1e-6


def parent(**ceilings: float) -> RunLedger:
    """A parent run's ledger with one terminate limit per resource given."""
    return RunLedger(
        limits=[
            Limit(f"max_{resource}_per_task", resource, ceiling, "run parent/p")
            for resource, ceiling in ceilings.items()
        ]
    )


def carve_with(ledger: RunLedger, estimate: Amounts, rule: CarveRule) -> Carve | Refusal:
    return carve(ledger, estimate, lambda: rule)


# -- share ----------------------------------------------------------------------------------


def test_a_fraction_takes_that_part_of_what_is_left_but_never_less_than_the_estimate() -> None:
    assert share(0.5, "tokens", left=1000, estimate=100) == 500
    assert share(0.05, "tokens", left=1000, estimate=100) == 100
    assert share(1.0, "tokens", left=-50, estimate=10) == 10  # nothing left counts as nothing


def test_a_fair_share_shrinks_with_the_children_in_flight_and_stops_at_the_childs_cap() -> None:
    assert share(FairShare(running=0), "tokens", left=900, estimate=0) == 450
    assert share(FairShare(running=1), "tokens", left=900, estimate=0) == 300
    assert share(FairShare(running=1, caps={"tokens": 200}), "tokens", left=900, estimate=0) == 200
    # the cap of another resource does not apply; the estimate still wins over the cap
    assert share(FairShare(running=0, caps={"cost_usd": 1}), "tokens", left=900, estimate=0) == 450
    assert share(FairShare(running=0, caps={"tokens": 50}), "tokens", left=900, estimate=80) == 80


def test_only_tokens_and_cost_starve_a_child() -> None:
    assert starved("tokens", 0) and starved("cost_usd", -1)
    assert not starved("tokens", 0.01)
    assert not starved("tool_calls", -5) and not starved("child_workflows", 0)


# -- carve ----------------------------------------------------------------------------------


def test_a_carve_reserves_the_share_one_subtask_and_the_child_itself() -> None:
    ledger = parent(tokens=1000, child_workflows=5)
    plan = carve_with(ledger, Amounts(tokens=100), 0.5)
    assert isinstance(plan, Carve)
    # tokens: half of (1000 - 100); child_workflows: half of (5 - 1), plus the child itself
    assert plan.shares["tokens"].amount == 450
    assert plan.shares["tokens"].limit == "max_tokens_per_task"
    assert plan.shares["tokens"].scope == "run parent/p"
    assert plan.shares["child_workflows"].amount == 2
    assert plan.reservation == Amounts(tokens=450, subtasks=1, child_workflows=3)
    assert set(plan.shares) == {"tokens", "child_workflows"}  # only what the parent limits


def test_a_child_is_refused_when_its_estimate_does_not_fit_in_what_is_left() -> None:
    ledger = parent(tokens=1000)
    assert ledger.reserve("activity:1:llm", Amounts(tokens=700)) is None
    ledger.commit("activity:1:llm", Amounts(tokens=700))
    refusal = carve_with(ledger, Amounts(tokens=300), 1.0)
    assert refusal == Refusal(
        limit="max_tokens_per_task",
        resource="tokens",
        scope="run parent/p",
        observed=1000,
        ceiling=1000,
        committed=700,
        overage=0,
    )


def test_the_rule_is_asked_once_and_only_when_something_is_carved() -> None:
    asked: list[int] = []

    def rule() -> CarveRule:
        asked.append(1)
        return 1.0

    assert isinstance(carve(parent(), Amounts(tokens=5), rule), Carve)
    assert asked == []  # nothing limited: nothing to carve (the patch marker is not taken)
    assert isinstance(carve(parent(tokens=0), Amounts(), rule), Refusal)
    assert asked == []  # starved before any share was computed
    assert isinstance(carve(parent(tokens=100, cost_usd=1.0), Amounts(), rule), Carve)
    assert asked == [1]


def test_depth_refusal_names_the_scope_that_set_max_depth() -> None:
    assert depth_refusal(depth=1, max_depth=None, scope="") is None
    assert depth_refusal(depth=1, max_depth=2, scope="run a/1") is None
    refusal = depth_refusal(depth=2, max_depth=2, scope="run a/1")
    assert refusal is not None
    assert (refusal.limit, refusal.resource, refusal.scope) == (MAX_DEPTH_LIMIT, "depth", "run a/1")
    assert (refusal.observed, refusal.ceiling, refusal.committed) == (3, 2, 2)


def test_children_in_flight_counts_child_reservations_only() -> None:
    ledger = parent(tokens=1000)
    ledger.reserve("activity:1:llm", Amounts(tokens=10))
    ledger.reserve(f"{CHILD_KEY_PREFIX}wf-a", Amounts(tokens=10))
    ledger.reserve("child:2:wf-a", Amounts(tokens=10))  # a second start of the same id
    assert children_in_flight(ledger) == 2
    ledger.commit(f"{CHILD_KEY_PREFIX}wf-a", Amounts(tokens=3))
    ledger.release("child:2:wf-a")
    assert children_in_flight(ledger) == 0


def test_child_caps_are_the_childs_terminate_ceilings_of_carved_resources() -> None:
    policy = Policy.from_dict(
        {
            "agents": {
                "Leaf": {
                    "quotas": {
                        "max_tokens_per_task": {"limit": 500, "hard_ceiling": 800},
                        "max_cost_usd_per_task": {"limit": 2, "on_breach": "alert"},
                        "max_subtasks_per_task": 3,
                    }
                }
            }
        }
    )
    assert child_caps(policy, "Leaf") == {"tokens": 800.0}  # the hard ceiling: overrides
    assert child_caps(policy, "Other") == {}


# -- properties -----------------------------------------------------------------------------

amounts = st.floats(min_value=0, max_value=5_000, allow_nan=False, allow_infinity=False)
rules = st.one_of(
    st.floats(min_value=0.01, max_value=1.0),
    st.builds(
        FairShare,
        running=st.integers(min_value=0, max_value=20),
        caps=st.dictionaries(st.sampled_from(CARVED), amounts, max_size=2),
    ),
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    ceilings=st.dictionaries(st.sampled_from(CARVED), amounts, min_size=1),
    spent=st.dictionaries(st.sampled_from(CARVED), amounts),
    held=st.dictionaries(st.sampled_from(CARVED), amounts),
    estimate=st.dictionaries(st.sampled_from(("tokens", "cost_usd", "tool_calls")), amounts),
    rule=rules,
)
def test_carves_never_exceed_the_parents_remainder(
    ceilings: dict[str, float],
    spent: dict[str, float],
    held: dict[str, float],
    estimate: dict[str, float],
    rule: CarveRule,
) -> None:
    """Property: what a parent reserves for a child fits in what it has left, or is refused.

    Tokens and cost are checked by the carve itself; the other resources by the
    reservation of the carve, which the parent's ledger refuses when it does not fit.
    """
    ledger = parent(**ceilings)
    if ledger.reserve("activity:1:spent", Amounts(**spent)) is None:
        ledger.commit("activity:1:spent", Amounts(**spent))
    ledger.reserve("activity:2:held", Amounts(**held))
    before = {r: ledger.remaining(r) for r in CARVED}
    plan = carve_with(ledger, Amounts(**estimate), rule)
    if isinstance(plan, Refusal):
        assert plan.resource in ("tokens", "cost_usd")
        return
    for resource in ("tokens", "cost_usd"):
        left = before[resource]
        if left is not None:
            assert plan.reservation.get(resource) <= left + EPSILON
            assert plan.shares[resource].amount <= left + EPSILON
    if ledger.reserve("child:wf-c", plan.reservation) is None:
        for resource, left in before.items():
            if left is not None:
                assert plan.reservation.get(resource) <= left + EPSILON
                assert plan.shares[resource].amount <= left + EPSILON


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    ceiling=st.floats(min_value=0, max_value=10_000),
    steps=st.lists(
        st.tuples(
            st.sampled_from(("activity", "child", "finish", "release")),
            amounts,
            st.floats(min_value=0, max_value=1),
            st.integers(min_value=0, max_value=30),
        ),
        max_size=60,
    ),
    rule=rules,
)
def test_committed_never_passes_a_ceiling_with_dispatches_and_carves_in_flight(
    ceiling: float, steps: list[tuple[str, float, float, int]], rule: CarveRule
) -> None:
    """Property: interleaved activities and children whose actuals stay within what was
    reserved for them never bring committed spend (nor committed + reserved) past a ceiling.

    Extends the sequential property of ``tests/test_accounting.py`` to dispatches in
    flight together, children carved a share of what is left, and releases.
    """
    ledger = parent(tokens=ceiling)
    for i, (action, estimate, used, which) in enumerate(steps):
        open_keys = sorted(ledger.reservations)
        if action == "activity":
            ledger.reserve(f"activity:{i}:tool", Amounts(tokens=estimate))
        elif action == "child":
            plan = carve_with(ledger, Amounts(tokens=estimate), rule)
            if isinstance(plan, Carve):
                ledger.reserve(f"{CHILD_KEY_PREFIX}{i}", plan.reservation)
        elif open_keys:
            key = open_keys[which % len(open_keys)]
            if action == "finish":  # a child spends within its carve, an activity its estimate
                held = ledger.reservations[key]
                ledger.commit(key, Amounts(tokens=held.tokens * used))
            else:
                ledger.release(key)
        assert ledger.committed.tokens <= ceiling + EPSILON
        assert ledger.committed.tokens + ledger.reserved.tokens <= ceiling + EPSILON


@pytest.mark.parametrize("running", [0, 1, 4])
def test_fair_shares_of_children_in_flight_together_fit_the_parent(running: int) -> None:
    """Each further child gets a share of what the ones before it left: all fit together."""
    ledger = parent(tokens=1200)
    carved = []
    for i in range(running + 3):
        plan = carve_with(ledger, Amounts(tokens=10), FairShare(running=children_in_flight(ledger)))
        if isinstance(plan, Refusal):
            break
        assert ledger.reserve(f"{CHILD_KEY_PREFIX}{i}", plan.reservation) is None
        carved.append(plan.shares["tokens"].amount)
    assert sum(carved) <= 1200
    assert carved == sorted(carved, reverse=True)  # later children get less
