"""Waiters for shared capacity: priority with aging, fair share, dropping, bounds (pure)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from temporal_governor.core import waiters as waiters_module
from temporal_governor.core.book import LedgerBook, ReleaseRunRequest, ReserveRequest, SettleRequest
from temporal_governor.core.leases import Holdings, Wait, after_refusal
from temporal_governor.core.scopes import SharedLimit
from temporal_governor.core.waiters import (
    FAR_RETRY_S,
    GRACE_S,
    HEAD_RETRY_S,
    MAX_RANK,
    RANKS,
    Waiter,
    Waiters,
    order,
    rank_of,
)

T0 = 1_000_000.0
SLOTS = SharedLimit(
    name="tools.x.max_concurrent_requests",
    scope="tool:x",
    resource="concurrency",
    ceiling=2.0,
)


def slots(ceiling: int) -> SharedLimit:
    return SLOTS.model_copy(update={"ceiling": float(ceiling)})


def ask(
    book: LedgerBook,
    who: str,
    now: float,
    limit: SharedLimit,
    *,
    rank: int | None = None,
    tenant: str = "t",
    waits: bool = True,
    waited_s: float = 0.0,
    aging_s: float = 5.0,
    n: int = 0,
) -> tuple[bool, float | None]:
    """One ask of caller ``who`` (run ``who``); ``rank=None`` is a caller of earlier releases."""
    fields: dict[str, object] = {
        "key": f"{who}/d#{n}",
        "run": who,
        "amounts": {"concurrency": 1.0},
        "limits": [limit],
    }
    if rank is not None:
        fields.update(
            priority=rank,
            waits=waits,
            tenant=tenant,
            waiter=f"{who}/d",
            waited_s=waited_s,
            aging_s=aging_s,
        )
    result = book.reserve(ReserveRequest.model_validate(fields), now)
    retry = result.refusal.retry_after_s if result.refusal else None
    return result.granted, retry


def fill(book: LedgerBook, limit: SharedLimit, now: float, holder: str = "holder") -> list[str]:
    """Take every slot with legacy callers; returns their keys."""
    keys = []
    for i in range(int(limit.ceiling)):
        granted, _ = ask(book, f"{holder}-{i}", now, limit)
        assert granted
        keys.append(f"{holder}-{i}/d#0")
    return keys


def free(book: LedgerBook, key: str, now: float) -> None:
    assert book.settle(SettleRequest(key=key), now).settled


# -- unit ------------------------------------------------------------------------------------


def test_ranks_follow_the_policy_classes_and_bad_names_are_refused() -> None:
    assert [rank_of(k) for k in ("critical", "high", "normal", "low", "background")] == list(
        range(MAX_RANK + 1)
    )
    assert rank_of(None) == RANKS["normal"]
    with pytest.raises(ValueError, match="priority class: expected one of critical"):
        rank_of("urgent")


def test_a_waiter_rises_one_class_per_aging_period_and_past_critical() -> None:
    waiter = Waiter(run="r", rank=4, first=T0, last=T0, aging_s=10.0)
    waited = (0, 9.9, 10, 25, 40, 55)
    # the best class a fresh caller asking after that wait must have to rank with the waiter
    peers = [
        min(
            (r for r in range(-10, MAX_RANK + 1)
             if T0 + s + r * 10.0 >= waiter.level() * 10.0),
            default=None,
        )
        for s in waited
    ]  # fmt: skip
    assert [
        Waiter(run="f", rank=4, first=T0 + s, last=T0 + s, aging_s=10.0).level() - waiter.level()
        for s in waited
    ] == [0, 0, 1, 2, 4, 5]
    assert peers == [4, 4, 3, 2, 0, -1]
    fresh_critical = Waiter(run="c", rank=0, first=T0 + 55, last=T0 + 55, aging_s=10.0)
    assert order({"old": waiter, "new": fresh_critical}, "c", lambda _: {}) == ["old", "new"]


def test_the_order_of_two_waiters_never_depends_on_when_anyone_asks() -> None:
    """Review D6: with a level that moved with ``now``, L (background, first T0) and C
    (critical, first T0 + 3.6) with aging 1 s each saw the other ahead at their own asking
    phase, and both were refused the free slot forever."""
    book = LedgerBook()
    one = slots(1)
    holders = fill(book, one, T0)
    assert not ask(book, "l", T0, one, rank=4, aging_s=1.0)[0]
    assert not ask(book, "c", T0 + 3.6, one, rank=0, aging_s=1.0)[0]
    free(book, holders[0], T0 + 4.0)
    granted = []
    for k in range(5, 65):
        c_at, l_at = T0 + k + 0.1, T0 + k + 0.7
        if ask(book, "c", c_at, one, rank=0, n=k, waited_s=c_at - T0 - 3.6, aging_s=1.0)[0]:
            granted.append("c")
            break
        if ask(book, "l", l_at, one, rank=4, n=k, waited_s=l_at - T0, aging_s=1.0)[0]:
            granted.append("l")
            break
    assert granted == ["c"]  # L's 3.6 s head start is less than 4 classes of 1 s


def test_each_waiter_ages_by_its_own_policys_aging() -> None:
    """Review D1: the asker's aging applied to every waiter let X (critical, aging 1 s) rank
    Y (background, waited 10 s, aging 1000 s) ahead and Y rank X ahead: a free slot was
    refused to both forever."""
    book = LedgerBook()
    one = slots(1)
    holders = fill(book, one, T0)
    now = T0 + 1.0
    assert not ask(book, "y", now, one, rank=4, waited_s=10.0, aging_s=1000.0)[0]
    assert not ask(book, "x", now, one, rank=0, aging_s=1.0)[0]
    assert book.state.waiters["y/d"].aging_s == 1000.0
    assert book.state.waiters["x/d"].aging_s == 1.0
    free(book, holders[0], now + 0.1)
    granted = []
    for step in range(1, 40):
        t = now + 0.1 + 0.25 * step
        for who, rank, waited, aging in (("x", 0, 0.0, 1.0), ("y", 4, 10.0, 1000.0)):
            r = dict(rank=rank, n=step, waited_s=waited + t - now, aging_s=aging)
            if ask(book, who, t, one, **r)[0]:  # type: ignore[arg-type]
                granted.append(who)
        if granted:
            break
    assert granted == ["x"]  # Y's 10 s are far from one class of 1000 s


def test_the_best_waiter_gets_the_freed_slot_whoever_asks_first() -> None:
    book = LedgerBook()
    holders = fill(book, SLOTS, T0)
    assert ask(book, "low", T0, SLOTS, rank=RANKS["low"]) == (False, HEAD_RETRY_S)
    granted, retry = ask(book, "critical", T0 + 0.1, SLOTS, rank=RANKS["critical"])
    assert not granted and retry == HEAD_RETRY_S  # it ranks ahead of "low": now the head
    free(book, holders[0], T0 + 0.2)
    # "low" asks first, but the slot is held for "critical"
    assert ask(book, "low", T0 + 0.25, SLOTS, rank=RANKS["low"], waited_s=0.25, n=1)[0] is False
    assert ask(book, "critical", T0 + 0.3, SLOTS, rank=0, waited_s=0.2, n=1)[0] is True
    assert book.waiters.get("critical/d") is None  # granted: no longer waiting
    assert book.waiters.get("low/d") is not None


def test_callers_of_earlier_releases_are_never_held_back() -> None:
    book = LedgerBook()
    holders = fill(book, SLOTS, T0)
    assert not ask(book, "waiter", T0, SLOTS, rank=0)[0]
    free(book, holders[0], T0 + 0.1)
    assert ask(book, "legacy", T0 + 0.2, SLOTS)[0]  # no class: decided as before


def test_a_caller_that_does_not_wait_is_ranked_like_a_newcomer_and_never_queued() -> None:
    book = LedgerBook()
    holders = fill(book, slots(3), T0)
    assert not ask(book, "normal-waiter", T0, slots(3), rank=RANKS["normal"])[0]
    free(book, holders[0], T0 + 0.1)
    # a background caller that does not wait ranks behind the waiter: refused, not queued
    assert not ask(book, "bg", T0 + 0.2, slots(3), rank=4, waits=False)[0]
    assert book.waiters.get("bg/d") is None
    free(book, holders[1], T0 + 0.3)
    # a critical one ranks ahead of the young normal waiter: granted at once
    assert ask(book, "crit", T0 + 0.4, slots(3), rank=0, waits=False)[0]
    # the last free slot is the waiter's: a low caller is refused, the waiter granted
    assert not ask(book, "low", T0 + 0.6, slots(3), rank=3, waits=False)[0]
    assert ask(book, "normal-waiter", T0 + 0.7, slots(3), rank=2, waited_s=0.7, n=1)[0]


def test_a_waiter_blocked_on_another_counter_holds_nothing() -> None:
    book = LedgerBook()
    tenant = SharedLimit(
        name="tenants.b.quotas.max_concurrent_tasks",
        scope="tenant:b",
        resource="concurrency",
        ceiling=1.0,
    )
    fill(book, tenant, T0, holder="b-run")
    holders = fill(book, SLOTS, T0)
    request = ReserveRequest(
        key="w/d#0",
        run="w",
        amounts={"concurrency": 1.0},
        limits=[SLOTS, tenant],
        priority=0,
        waits=True,
        waiter="w/d",
    )
    assert not book.reserve(request, T0).granted
    free(book, holders[0], T0 + 0.1)
    # "w" ranks ahead but its tenant slot is taken: the freed slot is not held for it
    assert ask(book, "other", T0 + 0.2, SLOTS, rank=4)[0]


def test_a_waiter_that_stops_asking_is_dropped_and_blocks_no_one() -> None:
    book = LedgerBook()
    holders = fill(book, SLOTS, T0)
    assert ask(book, "dead", T0, SLOTS, rank=0) == (False, HEAD_RETRY_S)
    free(book, holders[0], T0 + 0.1)
    assert not ask(book, "alive", T0 + 0.2, SLOTS, rank=4)[0]
    stale = T0 + HEAD_RETRY_S + GRACE_S
    assert not ask(book, "alive", stale - 0.01, SLOTS, rank=4, waited_s=0.1, n=1)[0]
    assert ask(book, "alive", stale + 0.01, SLOTS, rank=4, waited_s=0.2, n=2)[0]
    assert book.waiters.get("dead/d") is None


def test_a_run_that_ends_takes_its_waiters_with_it() -> None:
    book = LedgerBook()
    holders = fill(book, SLOTS, T0)
    assert not ask(book, "ending", T0, SLOTS, rank=0)[0]
    book.release_run(ReleaseRunRequest(run="ending"), T0 + 0.05)
    free(book, holders[0], T0 + 0.1)
    assert ask(book, "next", T0 + 0.2, SLOTS, rank=4)[0]


def test_retry_after_is_short_at_the_head_and_longer_further_back() -> None:
    book = LedgerBook()
    fill(book, SLOTS, T0)
    told = [ask(book, f"w{i}", T0 + i * 0.01, SLOTS, rank=2)[1] for i in range(5)]
    # ahead of each: 0, 1, 2, 3, 4 slots' worth of waiters, the ceiling being 2
    assert told == [HEAD_RETRY_S, 0.5, FAR_RETRY_S, FAR_RETRY_S, FAR_RETRY_S]


def test_a_dropped_waiter_keeps_its_age_through_waited_s() -> None:
    book = LedgerBook()
    holders = fill(book, SLOTS, T0)
    assert not ask(book, "young-critical", T0 + 20, SLOTS, rank=0)[0]
    # an old background caller (it waited 30 s, longer than 4 classes of 5 s) asks afresh
    assert not ask(book, "old-bg", T0 + 20.1, SLOTS, rank=4, waited_s=30.0)[0]
    free(book, holders[0], T0 + 20.2)
    assert not ask(book, "young-critical", T0 + 20.3, SLOTS, rank=0, waited_s=0.3, n=1)[0]
    assert ask(book, "old-bg", T0 + 20.4, SLOTS, rank=4, waited_s=30.3, n=1)[0]


# -- order ----------------------------------------------------------------------------------


def reference_key(
    waiters: dict[str, Waiter], id_: str, aging_s: float
) -> tuple[int, int, float, str]:
    """The documented order, for waiters of tenants holding nothing, each needing one."""
    me = waiters[id_]
    level = me.rank + math.floor(me.first / aging_s)
    peers = [
        (w.first, i) for i, w in waiters.items() if w.rank + math.floor(w.first / aging_s) == level
    ]
    tenants = {waiters[i].tenant for _, i in peers}
    before = sum(
        1 for first, i in peers if waiters[i].tenant == me.tenant and (first, i) < (me.first, id_)
    )
    return level, before if len(tenants) > 1 else 0, me.first, id_


waiter_specs = st.lists(
    st.tuples(
        st.integers(0, MAX_RANK),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from([0.0, 1.0, 4.0, 9.0, 12.5, 30.0]),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(waiter_specs, st.sampled_from([1.0, 5.0, 20.0]))
def test_order_is_priority_with_aging_then_fair_share_then_fifo(
    specs: list[tuple[int, str, float]], aging_s: float
) -> None:
    now = T0 + 100
    waiters = {
        f"w{i}": Waiter(
            run=f"r{i}",
            tenant=t,
            rank=r,
            first=now - age,
            last=now,
            needs={"c": 1},
            aging_s=aging_s,
        )
        for i, (r, t, age) in enumerate(specs)
    }
    got = order(waiters, "c", lambda _: {})
    assert got == sorted(waiters, key=lambda i: reference_key(waiters, i, aging_s))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(waiter_specs, st.randoms(use_true_random=False))
def test_the_best_waiter_gets_the_next_free_slot(
    specs: list[tuple[int, str, float]], shuffle: random.Random
) -> None:
    aging_s = 5.0
    book = LedgerBook()
    holders = fill(book, SLOTS, T0)
    ages = {f"w{i}": age for i, (_, _, age) in enumerate(specs)}
    for i, (rank, tenant, age) in enumerate(specs):
        assert not ask(book, f"w{i}", T0, SLOTS, rank=rank, tenant=tenant, waited_s=age)[0]
    queued = {id_.removesuffix("/d"): w for id_, w in book.state.waiters.items()}
    best = min(queued, key=lambda i: reference_key(queued, i, aging_s))
    free(book, holders[0], T0 + 0.05)
    callers = list(enumerate(specs))
    shuffle.shuffle(callers)
    granted = [
        f"w{i}"
        for i, (rank, tenant, _) in callers
        if ask(
            book,
            f"w{i}",
            T0 + 0.1,
            SLOTS,
            rank=rank,
            tenant=tenant,
            waited_s=ages[f"w{i}"] + 0.1,
            n=1,
        )[0]
    ]
    assert granted == [best]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.randoms(use_true_random=False))
def test_tenants_of_one_class_share_freed_slots_fairly(
    of_a: int, of_b: int, shuffle: random.Random
) -> None:
    limit = slots(of_a + of_b)
    book = LedgerBook()
    holders = fill(book, limit, T0)
    callers = [("a", i) for i in range(of_a)] + [("b", i) for i in range(of_b)]
    shuffle.shuffle(callers)
    for n, (tenant, i) in enumerate(callers):  # queued in a random order, one class
        assert not ask(book, f"{tenant}{i}", T0 + n * 0.001, limit, rank=2, tenant=tenant)[0]
    served: list[str] = []
    now = T0 + 0.1
    for holder in holders:
        free(book, holder, now)
        waiting = [(t, i) for t, i in callers if book.waiters.get(f"{t}{i}/d") is not None]
        shuffle.shuffle(waiting)
        for tenant, i in waiting:
            if ask(book, f"{tenant}{i}", now, limit, rank=2, tenant=tenant, waited_s=0.1, n=1)[0]:
                served.append(tenant)
        now += 0.1
        if not waiting:
            break
    assert len(served) == of_a + of_b
    for k in range(1, len(served) + 1):  # while both wait, neither gets two slots ahead
        a, b = served[:k].count("a"), served[:k].count("b")
        if a < of_a and b < of_b:
            assert abs(a - b) <= 1, served


def test_a_tenant_holding_fewer_slots_goes_first_within_a_class() -> None:
    limit = slots(4)
    book = LedgerBook()
    for i in range(2):  # tenant "busy" holds two slots, two legacy callers the others
        assert ask(book, f"busy-run-{i}", T0, limit, rank=2, tenant="busy")[0]
    holders = [f"legacy-{i}/d#0" for i in range(2)]
    assert all(ask(book, f"legacy-{i}", T0, limit)[0] for i in range(2))
    for i in range(3):  # busy's waiters were refused first
        assert not ask(book, f"busy-{i}", T0 + 0.01 * i, limit, rank=2, tenant="busy")[0]
    assert not ask(book, "quiet", T0 + 0.1, limit, rank=2, tenant="quiet")[0]
    free(book, holders[0], T0 + 0.2)
    assert not ask(book, "busy-0", T0 + 0.3, limit, rank=2, tenant="busy", waited_s=0.3, n=1)[0]
    assert ask(book, "quiet", T0 + 0.3, limit, rank=2, tenant="quiet", waited_s=0.2, n=1)[0]


# -- no class starves ------------------------------------------------------------------------


@dataclass
class Caller:
    """A simulated run that reserves one slot, waiting (``on_refusal: wait``) when refused."""

    name: str
    tenant: str
    rank: int | None
    start: float
    max_wait: float
    next_ask: float = 0.0
    waited: float = 0.0
    asks: int = 0
    granted_at: float | None = None
    holds_until: float = math.inf
    done: bool = False


@dataclass
class Flood:
    """A concurrency limit of ``slots`` under a flood of critical callers of tenant ``a``.

    ``backlog`` critical callers already wait when the low-class caller of tenant ``b``
    starts; ``rate`` more start every second; each holds its slot ``hold_s`` seconds and
    gives up after 30 s. Every step settles first, then lets callers ask, the low-class
    caller last (it loses every race it can lose).
    """

    slots: int
    hold_s: float
    rate: float
    aging_s: float
    rank: int
    backlog: int
    queue: bool = True
    step: float = 0.05
    waiters_seen: int = 0

    def bound(self) -> float:
        """The documented worst wait (module docstring), with R = FAR_RETRY_S + GRACE_S."""
        ahead = self.backlog + self.rate * (self.rank + 1) * self.aging_s
        return math.ceil((ahead + 1) / self.slots) * (self.hold_s + FAR_RETRY_S + GRACE_S)

    def run(self, until: float) -> Caller:
        """Simulate until the low-class caller is granted or ``until`` seconds have passed."""
        limit = slots(self.slots)
        book = LedgerBook()
        flood_rank = 0 if self.queue else None
        start = T0 + 5.0
        callers = [
            Caller(f"pre{i}", "a", flood_rank, T0, max_wait=1e6) for i in range(self.backlog)
        ]
        low = Caller("low", "b", self.rank if self.queue else None, start, max_wait=1e6)
        born, now = 0, T0
        while now < start + until and low.granted_at is None:
            while T0 + 0.1 + born / self.rate <= now:
                callers.append(Caller(f"c{born}", "a", flood_rank, now, max_wait=30.0))
                born += 1
            if now >= start and low not in callers:
                callers.append(low)
            for caller in callers:
                if caller.holds_until <= now:
                    free(book, f"{caller.name}/d#{caller.asks - 1}", now)
                    caller.holds_until, caller.done = math.inf, True
            for caller in callers:
                if caller.done or caller.granted_at is not None or caller.next_ask > now:
                    continue
                self._ask(book, limit, caller, now)
            self.waiters_seen = max(self.waiters_seen, len(book.state.waiters))
            callers = [c for c in callers if not c.done]
            now = round(now + self.step, 6)
        return low

    def _ask(self, book: LedgerBook, limit: SharedLimit, caller: Caller, now: float) -> None:
        fields: dict[str, object] = {
            "key": f"{caller.name}/d#{caller.asks}",
            "run": caller.name,
            "amounts": {"concurrency": 1.0},
            "limits": [limit],
        }
        if caller.rank is not None:
            fields.update(
                priority=caller.rank,
                waits=True,
                tenant=caller.tenant,
                waiter=f"{caller.name}/d",
                waited_s=caller.waited,
                aging_s=self.aging_s,
            )
        result = book.reserve(ReserveRequest.model_validate(fields), now)
        caller.asks += 1
        if result.granted:
            caller.granted_at, caller.holds_until = now, now + self.hold_s
            return
        assert result.refusal is not None
        step = after_refusal(result.refusal, caller.waited, caller.max_wait, "wait")
        if not isinstance(step, Wait):  # it gives up: the run ends
            caller.done = True
            book.release_run(ReleaseRunRequest(run=caller.name), now)
            return
        caller.waited += step.pause
        caller.next_ask = now + step.pause


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    slots_=st.integers(1, 3),
    hold_s=st.sampled_from([0.5, 1.0, 2.0]),
    rate=st.sampled_from([1.0, 2.0, 4.0]),
    aging_s=st.sampled_from([0.5, 1.0, 2.0]),
    rank=st.integers(1, MAX_RANK),
    backlog=st.integers(0, 6),
)
def test_a_low_class_waiter_under_a_critical_flood_is_granted_within_the_bound(
    slots_: int, hold_s: float, rate: float, aging_s: float, rank: int, backlog: int
) -> None:
    flood = Flood(slots_, hold_s, rate, aging_s, rank, backlog)
    low = flood.run(until=flood.bound() + 1)
    assert low.granted_at is not None, f"not granted within {flood.bound():.1f} s"
    assert low.granted_at - low.start <= flood.bound()


def test_without_the_queue_the_same_flood_starves_the_low_class_caller() -> None:
    queued = Flood(slots=1, hold_s=1.0, rate=2.0, aging_s=1.0, rank=MAX_RANK, backlog=4)
    low = queued.run(until=queued.bound())
    assert low.granted_at is not None
    legacy = Flood(1, 1.0, 2.0, 1.0, MAX_RANK, 4, queue=False)
    starved = legacy.run(until=3 * queued.bound())
    assert starved.granted_at is None  # whoever asks first after a slot frees wins


# -- bounded ---------------------------------------------------------------------------------


def test_a_full_queue_evicts_its_worst_waiter_for_a_better_one_only() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(waiters_module, "MAX_WAITERS", 3)
        queue = Waiters({})
        for i, rank in enumerate([2, 3, 1]):
            assert queue.put(f"w{i}", Waiter(run="r", rank=rank, first=T0, last=T0), T0)
        worse = Waiter(run="r", rank=4, first=T0, last=T0)
        assert not queue.put("worse", worse, T0)
        better = Waiter(run="r", rank=0, first=T0, last=T0)
        assert queue.put("better", better, T0)
        assert sorted(queue.waiters) == ["better", "w0", "w2"]  # w1 (rank 3) evicted


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ask", "ask", "ask", "free", "end", "tick"]),
            st.integers(0, 40),
            st.integers(0, MAX_RANK),
        ),
        max_size=120,
    )
)
def test_waiters_stay_bounded_and_never_outlive_their_callers(
    ops: list[tuple[str, int, int]],
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(waiters_module, "MAX_WAITERS", 8)
        book = LedgerBook()
        holders = fill(book, SLOTS, T0)
        now = T0
        for op, who, rank in ops:
            if op == "ask":
                ask(book, f"r{who}", now, SLOTS, rank=rank, tenant=f"t{who % 3}", n=len(holders))
                holders.append(f"r{who}/d#{len(holders)}")
            elif op == "free" and holders:
                book.settle(SettleRequest(key=holders.pop(0)), now)
            elif op == "end":
                book.release_run(ReleaseRunRequest(run=f"r{who}"), now)
                assert all(w.run != f"r{who}" for w in book.state.waiters.values())
            else:
                now += 2.0
            assert len(book.state.waiters) <= 8
            for id_, waiter in book.state.waiters.items():
                assert waiter.needs == {SLOTS.counter: 1.0}
                assert id_ in book.waiters.on(SLOTS.counter, waiter.last)
        book.prune(now)
        assert all(w.stale_at() >= now for w in book.state.waiters.values())
        book.prune(now + FAR_RETRY_S + GRACE_S + 1)
        assert not book.state.waiters
        again = LedgerBook(book.pack())
        assert again.state == book.state


def test_a_run_that_only_waited_is_released_at_its_end() -> None:
    """Review D3: a run refused under ``on_refusal: wait`` holds nothing, yet the ledger
    queues it: its end must still reach the ledger (release_run) to take its waiters."""
    holdings = Holdings()
    assert not holdings.holds_anything()
    holdings.unanswered += 1
    holdings.unanswered -= 1
    assert not holdings.holds_anything()  # refused, not queued: nothing to release
    holdings.queued = True
    assert holdings.holds_anything()
