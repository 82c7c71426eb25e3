"""The ledger's book and the fleet's shard count: recorded once, any change refused. Pure."""

from __future__ import annotations

import base64
import json
import zlib

import pytest
from pydantic import ValidationError

from temporal_governor.core.book import (
    SHARDS_LIMIT,
    LedgerBook,
    LedgerRefusal,
    LedgerState,
    ReserveRequest,
    ReserveResult,
    SettleRequest,
)
from temporal_governor.core.leases import Halt, Misconfigured, after_refusal, reservation
from temporal_governor.core.scopes import SharedLimit
from temporal_governor.policy import MAX_SHARDS

NOW = 1_000_000.0


def limit(scope: str, ceiling: float = 1000.0, window_s: float | None = None) -> SharedLimit:
    return SharedLimit(
        name=f"{scope}.max_tokens",
        scope=scope,
        resource="tokens",
        ceiling=ceiling,
        window_s=window_s,
    )


def ask(
    book: LedgerBook, key: str, tokens: float, *limits: SharedLimit, shards: int | None = None
) -> ReserveResult:
    fields: dict[str, object] = {
        "key": key,
        "run": "wf/run",
        "amounts": {"tokens": tokens} if limits else {},
        "limits": list(limits),
    }
    if shards is not None:
        fields["shards"] = shards
    return book.reserve(ReserveRequest.model_validate(fields), NOW)


def refused_count(result: ReserveResult) -> tuple[float, float]:
    """(recorded, asked) of a shard-count refusal."""
    assert not result.granted
    refusal = result.refusal
    assert refusal is not None and refusal.limit == SHARDS_LIMIT, refusal
    assert refusal.retry_after_s is None  # final: asking again never changes the answer
    return refusal.ceiling, refusal.observed


def untouched(book: LedgerBook) -> None:
    """Nothing reserved, granted or queued: a refusal changed no budget."""
    assert book.state.reservations == {}
    assert all(c.reserved == 0 for c in book.state.counters.values())
    assert book.view("", NOW)["open_reservations"] == 0


def test_a_root_records_the_count_of_the_first_registration_and_holds_nothing_for_it() -> None:
    book = LedgerBook()
    assert book.state.shards is None
    registered = ask(book, "wf/run/shards#1", 0, shards=4)
    assert registered.granted and registered.amounts == {}
    assert book.state.shards == 4
    assert book.state.reservations == {} and book.state.granted == {}
    assert book.view("", NOW)["shards"] == 4
    # the same count goes on working, registrations and fleet-wide reservations alike
    assert ask(book, "wf2/run/shards#1", 0, shards=4).granted
    assert ask(book, "wf2/run/a#2", 10, limit("global"), shards=4).granted
    assert book.state.shards == 4
    # the recorded count survives continue-as-new
    assert LedgerBook(book.pack()).state.shards == 4


def test_another_count_is_refused_naming_both_and_reserves_nothing() -> None:
    book = LedgerBook()
    assert ask(book, "a#1", 10, limit("global"), shards=2).granted
    book.settle(SettleRequest(key="a#1", actual={"tokens": 10}), NOW)
    before = book.state.model_copy(deep=True)
    for count in (4, 3, MAX_SHARDS):
        assert refused_count(ask(book, f"r{count}#1", 0, shards=count)) == (2.0, float(count))
        assert refused_count(ask(book, f"g{count}#1", 5, limit("global"), shards=count)) == (
            2.0,
            float(count),
        )
    untouched(book)
    assert book.state.shards == 2  # never overwritten by a refused count
    assert book.state.counters == before.counters
    assert book.state.granted == before.granted == {"tokens": 10.0}


def test_a_root_used_unsharded_refuses_a_sharded_fleet_while_it_keeps_tenant_budgets() -> None:
    book = LedgerBook()  # an unsharded fleet: tenant scopes on the root
    assert ask(book, "t#1", 100, limit("tenant:acme"), limit("owner:acme/bob")).granted
    # 1 -> 4 while the reservation is open, then while its spend stays counted
    assert refused_count(ask(book, "reg#1", 0, shards=4)) == (1.0, 4.0)
    book.settle(SettleRequest(key="t#1", actual={"tokens": 60}), NOW)
    assert refused_count(ask(book, "reg#2", 0, shards=4)) == (1.0, 4.0)
    assert refused_count(ask(book, "g#1", 5, limit("global"), shards=4)) == (1.0, 4.0)
    assert book.state.shards is None  # nothing recorded by a refusal
    assert book.state.reservations == {}
    # the unsharded fleet itself goes on as before
    assert ask(book, "t#2", 100, limit("tenant:acme")).granted


def test_a_root_whose_tenant_budgets_are_over_accepts_a_sharded_fleet() -> None:
    book = LedgerBook()
    per_minute = limit("tenant:acme", 1000.0, window_s=60.0)
    assert ask(book, "t#1", 100, per_minute, limit("global")).granted
    book.settle(SettleRequest(key="t#1", actual={"tokens": 100}), NOW)
    assert book.keeps_tenant_budgets(NOW)
    assert refused_count(ask(book, "reg#1", 0, shards=2)) == (1.0, 2.0)
    later = NOW + 120  # the tenant's window has ended: nothing of it would be doubled
    assert not book.keeps_tenant_budgets(later)
    request = ReserveRequest(key="reg#2", run="wf/run", amounts={}, limits=[], shards=2)
    assert book.reserve(request, later).granted
    assert book.state.shards == 2


def test_a_root_of_a_sharded_fleet_refuses_unsharded_tenant_reservations() -> None:
    book = LedgerBook()
    assert ask(book, "reg#1", 0, shards=8).granted
    # 8 -> 1: the tenant's budget would start afresh on the root
    assert refused_count(ask(book, "t#1", 10, limit("tenant:acme"), limit("global"))) == (8.0, 1.0)
    assert refused_count(ask(book, "o#1", 10, limit("owner:acme/bob"))) == (8.0, 1.0)
    untouched(book)
    assert not any(c.scope.startswith(("tenant:", "owner:")) for c in book.state.counters.values())
    # fleet-wide scopes are the root's whatever the count: an unsharded run may use them
    assert ask(book, "g#1", 10, limit("global")).granted


def test_a_shard_records_and_checks_the_count_it_is_sent() -> None:
    shard = LedgerBook()
    assert ask(shard, "t#1", 10, limit("tenant:acme"), shards=2).granted
    assert shard.state.shards == 2
    assert refused_count(ask(shard, "t#2", 10, limit("tenant:acme"), shards=4)) == (2.0, 4.0)
    assert refused_count(ask(shard, "t#3", 10, limit("tenant:acme"))) == (2.0, 1.0)
    assert set(shard.state.reservations) == {"t#1"}
    # a shard with tenant budgets from before counts were recorded takes its own count
    older = LedgerBook()
    assert ask(older, "t#1", 10, limit("tenant:acme")).granted
    assert ask(older, "t#2", 10, limit("tenant:acme"), shards=2).granted
    assert older.state.shards == 2


def test_an_older_state_loads_and_an_unsharded_book_packs_as_before() -> None:
    book = LedgerBook()
    assert ask(book, "t#1", 100, limit("tenant:acme")).granted
    packed = book.pack()
    raw = zlib.decompress(base64.b64decode(packed["packed"]))
    assert "shards" not in json.loads(raw)  # byte-identical to the state of earlier releases
    older = json.loads(raw)  # a state packed by an earlier release has no such field
    again = LedgerBook({"packed": base64.b64encode(zlib.compress(json.dumps(older).encode()))})
    assert again.state.shards is None
    assert again.state.reservations.keys() == {"t#1"}
    assert LedgerBook(older).state == book.state


def test_the_count_is_bounded_and_absent_from_unsharded_requests() -> None:
    for bad in (0, 1, MAX_SHARDS + 1, "4"):
        with pytest.raises(ValidationError, match="shards"):
            ReserveRequest.model_validate(
                {"key": "k", "run": "r", "amounts": {}, "limits": [], "shards": bad}
            )
        with pytest.raises(ValidationError, match="shards"):
            LedgerState.model_validate({"shards": bad})
    plain = reservation("k#1", "wf/run", [limit("tenant:a")], {"tokens": 5.0}, 600.0)
    assert "shards" not in plain.wire()
    assert "shards" not in json.dumps(plain.wire())
    sharded = reservation("k#1", "wf/run", [limit("tenant:a")], {"tokens": 5.0}, 600.0, shards=4)
    assert sharded.wire() == {**plain.wire(), "shards": 4}


def test_a_refused_count_stops_the_run_whatever_it_would_do_with_a_budget_refusal() -> None:
    wrong = LedgerRefusal(
        limit=SHARDS_LIMIT, scope="ledger", resource="shards", observed=4.0, ceiling=2.0
    )
    for on_refusal in ("wait", "terminate"):
        assert after_refusal(wrong, 0.0, 30.0, on_refusal) == Misconfigured()
    budget = wrong.model_copy(update={"limit": "tenant.max_tokens"})
    assert after_refusal(budget, 0.0, 30.0, "terminate") == Halt()
