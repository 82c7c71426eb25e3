"""The ledger's book: pure arithmetic, bounded state. Plain unit and property tests."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from temporal_governor.core.book import (
    CAPACITY_LIMIT,
    MAX_CONTROL_BYTES,
    ControlRecordRequest,
    LedgerBook,
    ReleaseRunRequest,
    ReserveRequest,
    SettleRequest,
)
from temporal_governor.core.scopes import SharedLimit

PAYLOAD_LIMIT = 2 * 1024 * 1024
"""Temporal's default blob size limit (the server refuses larger payloads)."""


def limit(scope: str, ceiling: float, window_s: float | None = None) -> SharedLimit:
    suffix = "" if window_s is None else f"_per_{window_s:g}s"
    return SharedLimit(
        name=f"{scope}.max_tokens{suffix}",
        scope=scope,
        resource="tokens",
        ceiling=ceiling,
        window_s=window_s,
    )


def reserve(
    key: str, run: str, tokens: float, *limits: SharedLimit, **kw: object
) -> ReserveRequest:
    return ReserveRequest(key=key, run=run, amounts={"tokens": tokens}, limits=list(limits), **kw)


def totals(book: LedgerBook, scope: str) -> tuple[float, float]:
    [counter] = [c for c in book.state.counters.values() if c.scope == scope and c.window_s is None]
    return counter.committed, counter.reserved


def test_ten_thousand_tenants_and_fifty_thousand_updates_stay_far_below_the_payload_limit() -> None:
    book = LedgerBook()
    now = 1_000_000.0
    updates = 0
    spent: dict[int, float] = {}
    for round_ in range(2):
        for tenant in range(10_000):
            scope = f"tenant:tenant-{tenant:05d}"
            total, minute = limit(scope, 1e6), limit(scope, 5e4, 60.0)
            run = f"wf-{tenant}/run-{round_}"
            assert book.reserve(
                reserve(f"{run}/activity:1:llm#1", run, 100, total, minute), now
            ).granted
            book.settle(SettleRequest(key=f"{run}/activity:1:llm#1", actual={"tokens": 90}), now)
            spent[tenant] = spent.get(tenant, 0.0) + 90
            updates += 2
            now += 0.01
        book.prune(now)
    while updates < 50_000:  # runs that end with one release_run
        tenant = (updates // 2) % 10_000
        run = f"wf-{tenant}/late-{updates}"
        book.reserve(reserve(f"{run}/a#1", run, 10, limit(f"tenant:tenant-{tenant:05d}", 1e6)), now)
        book.release_run(ReleaseRunRequest(run=run, settlements={f"{run}/a#1": {"tokens": 7}}), now)
        spent[tenant] += 7
        updates += 2
    book.prune(now + 120)
    packed = json.dumps(book.pack())
    assert len(packed) < PAYLOAD_LIMIT / 8, len(packed)
    again = LedgerBook(book.pack())
    assert again.state == book.state
    for tenant in (0, 7, 4_999, 5_000, 9_999):
        assert totals(again, f"tenant:tenant-{tenant:05d}") == (pytest.approx(spent[tenant]), 0)
    assert again.state.committed["tokens"] == pytest.approx(sum(spent.values()))
    assert all(c.window_s is None for c in again.state.counters.values())
    assert len(again.state.counters) == 10_000
    assert len(again.state.closed) <= 2_000 and not again.state.reservations


def test_reservations_are_all_or_nothing_and_a_duplicate_key_never_counts_twice() -> None:
    book = LedgerBook()
    tenant, owner = limit("tenant:acme", 1000), limit("owner:acme/alice", 150)
    assert book.reserve(reserve("r/1", "r", 100, tenant, owner), 0).granted
    again = book.reserve(reserve("r/1", "r", 100, tenant, owner), 0)
    assert again.granted and again.duplicate
    refused = book.reserve(reserve("r/2", "r", 100, tenant, owner), 0)
    assert not refused.granted and refused.refusal is not None
    assert refused.refusal.limit == "owner:acme/alice.max_tokens"
    assert totals(book, "tenant:acme") == (0, 100)  # the tenant kept nothing of the refusal
    book.settle(SettleRequest(key="r/1", actual={"tokens": 70}), 1)
    late_duplicate = book.reserve(reserve("r/1", "r", 100, tenant, owner), 2)
    assert late_duplicate.duplicate and late_duplicate.amounts == {}
    assert totals(book, "tenant:acme") == (70, 0)


def test_an_expired_reservation_is_charged_in_full_until_a_late_settle_corrects_it() -> None:
    book = LedgerBook()
    book.reserve(reserve("r/1", "r", 400, limit("tenant:t", 1000), ttl_s=5), 0)
    assert book.expire(4) == 0
    assert book.expire(5) == 1
    assert totals(book, "tenant:t") == (400, 0)
    assert book.state.committed["tokens"] == 400
    result = book.settle(SettleRequest(key="r/1", actual={"tokens": 120}), 6)
    assert result.late and result.settled
    assert totals(book, "tenant:t") == (120, 0)
    assert not book.settle(SettleRequest(key="r/1", actual={"tokens": 120}), 7).settled
    assert book.state.committed["tokens"] == 120
    assert book.state.committed["tokens"] + book.state.released["tokens"] == 400


def test_release_run_settles_what_it_lists_and_releases_the_rest_of_that_run_only() -> None:
    book = LedgerBook()
    tenant = limit("tenant:t", 1000)
    book.reserve(reserve("a/1", "a", 100, tenant), 0)
    book.reserve(reserve("a/2", "a", 100, tenant), 0)
    book.reserve(reserve("b/1", "b", 100, tenant), 0)
    settled = book.release_run(
        ReleaseRunRequest(run="a", settlements={"a/1": {"tokens": 60}, "b/1": {"tokens": 1}}), 1
    )
    assert settled == 2  # a/1 settled, a/2 released; b/1 is not a's to settle
    assert totals(book, "tenant:t") == (60, 100)
    assert set(book.state.reservations) == {"b/1"}


def test_size_caps_refuse_clearly() -> None:
    with pytest.raises(ValidationError, match="at most 512 characters"):
        reserve("k" * 513, "r", 1, limit("tenant:t", 10))
    with pytest.raises(ValidationError, match="at most 300 characters"):
        reserve("k", "r", 1, limit("tenant:" + "x" * 400, 10))
    for bad in (float("nan"), float("inf"), -1.0, 1e16):
        with pytest.raises(ValidationError):
            reserve("k", "r", bad, limit("tenant:t", 10))
    with pytest.raises(ValidationError, match=f"at most {MAX_CONTROL_BYTES} bytes"):
        ControlRecordRequest(
            scope="tenant:t", signal="governor.kill", message={"reason": "x" * MAX_CONTROL_BYTES}
        )


def test_a_full_book_refuses_with_its_own_limit_and_frees_up_when_reservations_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import temporal_governor.core.book as book_module

    monkeypatch.setattr(book_module, "MAX_OPEN_RESERVATIONS", 3)
    book = LedgerBook()
    for i in range(3):
        assert book.reserve(reserve(f"r/{i}", "r", 1, limit("tenant:t", 100)), 0).granted
    full = book.reserve(reserve("r/3", "r", 1, limit("tenant:t", 100)), 0)
    assert not full.granted and full.refusal is not None
    assert full.refusal.limit == CAPACITY_LIMIT
    book.settle(SettleRequest(key="r/0", actual={"tokens": 1}), 1)
    assert book.reserve(reserve("r/3", "r", 1, limit("tenant:t", 100)), 1).granted


def test_closed_windows_and_idle_counters_are_pruned() -> None:
    book = LedgerBook()
    minute = limit("tenant:t", 100, 60.0)
    book.reserve(reserve("r/1", "r", 10, minute, limit("tenant:idle", 100)), 0)
    book.release_run(ReleaseRunRequest(run="r", settlements={"r/1": {"tokens": 10}}), 1)
    book.reserve(reserve("r/2", "r", 0, limit("tenant:zero", 100)), 1)
    book.release_run(ReleaseRunRequest(run="r"), 2)
    book.prune(30)
    assert minute.counter in book.state.counters  # its window is still open
    assert limit("tenant:zero", 100).counter not in book.state.counters  # idle, nothing spent
    book.prune(61)
    assert minute.counter not in book.state.counters
    assert limit("tenant:idle", 100).counter in book.state.counters  # a lifetime total stays


operations = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "lease", "settle", "release_run", "expire"]),
        st.integers(0, 5),  # run
        st.integers(0, 7),  # dispatch
        st.floats(0, 300),  # amount
        st.floats(0, 1.5),  # actual as a fraction of the reservation
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(operations)
@example(  # a late settle of an expired reservation that spent more than it held
    [
        ("reserve", 0, 0, 0.0, 0.0),
        ("reserve", 0, 1, 279.0, 0.0),
        ("reserve", 0, 2, 93.0, 0.0),
        ("reserve", 1, 0, 285.0, 0.0),
        ("expire", 0, 0, 0.0, 0.0),
        ("settle", 0, 0, 229.0, 1.5),
    ]
)
def test_no_interleaving_overspends_and_everything_granted_is_accounted_for(ops) -> None:  # type: ignore[no-untyped-def]
    ceiling = 1000.0
    tenant = limit("tenant:t", ceiling)
    book = LedgerBook()
    now = 0.0
    excess = 0.0  # what settled actuals passed their own reservations by
    granted_to: dict[str, float] = {}  # what each key was granted when it was reserved
    for op, run, dispatch, amount, fraction in ops:
        now += 1
        key = f"{run}/{dispatch}"
        if op in ("reserve", "lease"):
            extra = {"minimum": {"tokens": amount / 5}} if op == "lease" else {}
            result = book.reserve(reserve(key, str(run), amount, tenant, ttl_s=30, **extra), now)
            if result.granted:
                granted_to.setdefault(key, result.amounts.get("tokens", 0.0))
        elif op == "settle":
            held = book.state.reservations.get(key)
            actual = (held.amounts.get("tokens", 0.0) if held else amount) * fraction
            if held is not None:
                excess += max(0.0, actual - held.amounts.get("tokens", 0.0))
            expired_before = len(book.state.expired)
            book.settle(SettleRequest(key=key, actual={"tokens": actual}), now)
            if held is None and len(book.state.expired) < expired_before:
                # a late settle of an expired reservation corrects its charge to the actual,
                # which may pass what the reservation held (the dispatch really spent it)
                excess += max(0.0, actual - granted_to[key])
        elif op == "release_run":
            book.release_run(ReleaseRunRequest(run=str(run)), now)
        else:
            now += 30
            book.expire(now)
        committed, reserved = totals(book, "tenant:t") if book.state.counters else (0.0, 0.0)
        assert committed + reserved <= ceiling + excess + 1e-6
        state = book.state
        open_ = sum(r.amounts.get("tokens", 0.0) for r in state.reservations.values())
        granted = state.granted.get("tokens", 0.0)
        accounted = state.committed.get("tokens", 0.0) + state.released.get("tokens", 0.0)
        assert granted == pytest.approx(accounted + open_, abs=1e-6)
