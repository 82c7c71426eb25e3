"""The ledger's book with queues of waiters: requests, windows, leases, state and its bounds."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib

import pytest
from pydantic import ValidationError

from temporal_governor.core.book import (
    MAX_PACKED_BYTES,
    MEASURE_EVERY_BYTES,
    LedgerBook,
    ReserveRequest,
    SettleRequest,
)
from temporal_governor.core.leases import reservation
from temporal_governor.core.scopes import SharedLimit
from temporal_governor.core.waiters import GRACE_S, HEAD_RETRY_S, MAX_WAITERS, RANKS

T0 = 1_000_040.0  # 20 s into a minute window
SLOTS = SharedLimit(
    name="tenants.acme.quotas.max_concurrent_tasks",
    scope="tenant:acme",
    resource="concurrency",
    ceiling=1.0,
)
MINUTE = SharedLimit(
    name="global.max_tokens_per_minute",
    scope="global",
    resource="tokens",
    ceiling=1000.0,
    window_s=60.0,
)


def waiting(
    who: str, limit: SharedLimit, amount: float, n: int = 0, **kw: object
) -> ReserveRequest:
    fields: dict[str, object] = {
        "key": f"{who}/d#{n}",
        "run": who,
        "amounts": {limit.resource: amount},
        "limits": [limit],
        "priority": RANKS["normal"],
        "waits": True,
        "tenant": "acme",
        "waiter": f"{who}/d",
    }
    return ReserveRequest.model_validate({**fields, **kw})


def legacy(who: str, limit: SharedLimit, amount: float, n: int = 0) -> ReserveRequest:
    return ReserveRequest(
        key=f"{who}/d#{n}", run=who, amounts={limit.resource: amount}, limits=[limit]
    )


def test_requests_without_a_class_are_read_and_sent_as_before() -> None:
    request = reservation("run/d#3", "run", [SLOTS], {"concurrency": 1.0}, 600.0)
    assert set(request.wire()) == {"key", "run", "amounts", "limits", "ttl_s"}
    queued = reservation(
        "run/d#3", "run", [SLOTS], {"concurrency": 1.0}, 600.0, priority="low", waits=True,
        tenant="acme", waited_s=1.5, aging_s=10.0,
    )  # fmt: skip
    assert queued.wire() | {"limits": []} == {
        "key": "run/d#3",
        "run": "run",
        "amounts": {"concurrency": 1.0},
        "limits": [],
        "ttl_s": 600.0,
        "priority": RANKS["low"],
        "waits": True,
        "waiter": "run/d",
        "tenant": "acme",
        "waited_s": 1.5,
        "aging_s": 10.0,
    }
    assert ReserveRequest.model_validate(queued.wire()) == queued


def test_bad_queue_fields_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValidationError, match="waits and waiter need a priority"):
        ReserveRequest(key="k", run="r", amounts={}, limits=[], waits=True)
    with pytest.raises(ValidationError, match="priority"):
        ReserveRequest(key="k", run="r", amounts={}, limits=[], priority=5)
    with pytest.raises(ValidationError, match="aging_s"):
        ReserveRequest(key="k", run="r", amounts={}, limits=[], priority=1, aging_s=0)
    with pytest.raises(ValueError, match="priority class: expected one of"):
        reservation("k#1", "r", [], {}, 600.0, priority="urgent")


def test_a_book_used_only_by_earlier_callers_packs_as_before() -> None:
    book = LedgerBook()
    assert book.reserve(legacy("a", SLOTS, 1), T0).granted
    assert not book.reserve(legacy("b", SLOTS, 1), T0).granted
    raw = json.loads(zlib.decompress(base64.b64decode(book.pack()["packed"])))
    assert "waiters" not in raw
    assert all("tenant" not in r for r in raw["reservations"].values())


def test_state_of_the_previous_release_is_read_and_queues_start_empty() -> None:
    old = {  # what the previous release packs: no waiters, reservations without a tenant
        "counters": {
            SLOTS.counter: {
                "scope": "tenant:acme",
                "resource": "concurrency",
                "reserved": 1.0,
                "ceiling": 1.0,
                "limit": SLOTS.name,
            }
        },
        "reservations": {
            "old/d#1": {
                "run": "old",
                "amounts": {"concurrency": 1.0},
                "counters": {SLOTS.counter: 1.0},
                "expires_at": T0 + 600,
            }
        },
        "granted": {"concurrency": 1.0},
    }
    packed = {"packed": base64.b64encode(zlib.compress(json.dumps(old).encode())).decode()}
    book = LedgerBook(packed)
    assert book.state.waiters == {}
    assert book.state.reservations["old/d#1"].tenant is None
    refused = book.reserve(waiting("new", SLOTS, 1), T0)
    assert not refused.granted and refused.refusal is not None
    assert refused.refusal.retry_after_s == HEAD_RETRY_S
    assert list(book.state.waiters) == ["new/d"]
    assert book.settle(SettleRequest(key="old/d#1"), T0 + 0.1).settled
    assert not book.reserve(waiting("other", SLOTS, 1, priority=RANKS["low"]), T0 + 0.2).granted
    assert book.reserve(waiting("new", SLOTS, 1, n=1, waited_s=0.2), T0 + 0.3).granted


def test_waiters_and_tenants_survive_pack_and_unpack() -> None:
    book = LedgerBook()
    assert book.reserve(waiting("a", SLOTS, 1), T0).granted
    for who in ("b", "c"):
        assert not book.reserve(waiting(who, SLOTS, 1, tenant=f"t-{who}"), T0).granted
    again = LedgerBook(book.pack())
    assert again.state == book.state
    assert again.state.reservations["a/d#0"].tenant == "acme"
    assert sorted(again.state.waiters) == ["b/d", "c/d"]
    assert again.view("tenant:", T0)["waiters"] == 2
    # the unpacked book holds the freed slot for the head, as the original would
    assert again.settle(SettleRequest(key="a/d#0"), T0 + 0.1).settled
    assert not again.reserve(waiting("c", SLOTS, 1, n=1, tenant="t-c"), T0 + 0.2).granted
    assert again.reserve(waiting("b", SLOTS, 1, n=1, tenant="t-b"), T0 + 0.2).granted


def test_at_a_window_roll_over_the_best_waiter_gets_the_new_window_first() -> None:
    book = LedgerBook()
    assert book.reserve(legacy("spender", MINUTE, 900), T0).granted
    book.settle(SettleRequest(key="spender/d#0", actual={"tokens": 900}), T0)
    refused = book.reserve(waiting("big", MINUTE, 800, priority=RANKS["high"]), T0 + 1)
    assert refused.refusal is not None
    assert refused.refusal.retry_after_s == pytest.approx(39.0)  # the window's roll-over
    rolled = T0 + 40.0
    # low callers ask first in the new window: granted only what leaves 800 for "big"
    small = waiting("small", MINUTE, 300, priority=RANKS["low"], waits=False, waiter=None)
    assert not book.reserve(small, rolled).granted
    assert book.reserve(waiting("tiny", MINUTE, 200, priority=RANKS["low"]), rolled).granted
    assert book.reserve(waiting("big", MINUTE, 800, n=1, waited_s=40), rolled + 0.1).granted


def test_a_lease_leaves_what_waiters_ahead_of_it_need() -> None:
    book = LedgerBook()
    assert book.reserve(legacy("spender", MINUTE, 1000), T0).granted
    assert not book.reserve(waiting("first", MINUTE, 300, priority=0), T0).granted
    book.settle(SettleRequest(key="spender/d#0", actual={"tokens": 0}), T0 + 1)
    lease = waiting("leaser", MINUTE, 5000, priority=RANKS["normal"], minimum={"tokens": 50})
    granted = book.reserve(lease.model_copy(update={"max_share": 1.0}), T0 + 2)
    assert granted.granted
    assert granted.amounts["tokens"] == pytest.approx(1000 - 300)  # all but the waiter's
    assert book.reserve(waiting("first", MINUTE, 300, priority=0, n=1), T0 + 2.1).granted


def test_squeezing_an_oversized_state_forgets_the_waiters_first() -> None:
    book = LedgerBook()
    assert book.reserve(waiting("a", SLOTS, 1), T0).granted
    assert not book.reserve(waiting("b", SLOTS, 1), T0).granted
    book.prune(T0, squeeze=True)
    assert book.state.waiters == {}
    assert book.settle(SettleRequest(key="a/d#0"), T0 + 0.1).settled
    assert book.reserve(waiting("c", SLOTS, 1, priority=RANKS["background"]), T0 + 0.2).granted


def _noise(i: int, chars: int) -> str:
    """``chars`` characters that hardly compress, the same for the same ``i``."""
    digest = hashlib.blake2b(str(i).encode()).hexdigest()
    return (digest * (chars // len(digest) + 1))[:chars]


@pytest.mark.parametrize("noise", [False, True])
def test_many_large_waiters_stay_within_the_caps(noise: bool) -> None:
    book = LedgerBook()
    now = T0
    for i in range(MAX_WAITERS + 200):
        name = _noise(i, 280) if noise else f"{i:05d}-" + "x" * 274
        limit_ = SLOTS.model_copy(update={"scope": f"tenant:{name}"})
        book.reserve(legacy(f"holder{i}", limit_, 1), now)
        who = _noise(-i, 500) if noise else f"run-{i:05d}-" + "y" * 490
        book.reserve(waiting(who, limit_, 1, priority=i % 5, tenant=name), now)
        now += 0.001
    assert 0 < len(book.state.waiters) <= MAX_WAITERS
    assert book.fit(now) <= MAX_PACKED_BYTES + MEASURE_EVERY_BYTES
    assert LedgerBook(book.pack()).state == book.state
    book.prune(now + 1.0 + GRACE_S + 1)
    assert book.state.waiters == {}


# -- review of the queues (windows) ----------------------------------------------------------

HOURLY = SharedLimit(
    name="tenants.acme.quotas.max_tokens_per_hour",
    scope="tenant:acme",
    resource="tokens",
    ceiling=10.0,
    window_s=3600.0,
)
HOUR_START = (T0 // 3600.0) * 3600.0


def test_a_waiter_that_cannot_fit_before_the_roll_over_holds_nothing_in_this_window() -> None:
    """8 of 10 spent this hour: W (5) fits only next hour, so C (2) gets the 2 left now."""
    book = LedgerBook()
    now = HOUR_START + 100.0
    assert book.reserve(legacy("a", HOURLY, 8.0), now).granted
    assert book.settle(SettleRequest(key="a/d#0", actual={"tokens": 8.0}), now).settled
    refused = book.reserve(waiting("w", HOURLY, 5.0, priority=RANKS["high"]), now + 1)
    assert refused.refusal is not None
    assert refused.refusal.retry_after_s == pytest.approx(3600.0 - 101.0)  # the roll-over
    assert "w/d" in book.state.waiters  # it keeps its place for the next window
    assert book.reserve(waiting("c", HOURLY, 2.0), now + 2).granted
    # in the next window W is held for: a fresh low caller cannot take its 5
    rolled = HOUR_START + 3600.0
    assert not book.reserve(waiting("late", HOURLY, 6.0, priority=RANKS["low"]), rolled).granted
    assert book.reserve(waiting("w", HOURLY, 5.0, n=1, waited_s=3500.0), rolled + 0.1).granted


def test_a_windowed_refusal_by_reservations_in_flight_is_retried_soon() -> None:
    """Refused because of a reservation in flight (not the window's spend), W is told to ask
    again soon, not at the roll-over: a W that then stops asking is dropped in seconds."""
    book = LedgerBook()
    now = HOUR_START + 100.0
    assert book.reserve(legacy("a", HOURLY, 10.0), now).granted  # an estimate of 10
    refused = book.reserve(waiting("w", HOURLY, 9.0, priority=RANKS["high"]), now + 1)
    assert refused.refusal is not None and refused.refusal.retry_after_s == HEAD_RETRY_S
    assert book.settle(SettleRequest(key="a/d#0", actual={"tokens": 1.0}), now + 2).settled
    assert not book.reserve(waiting("c", HOURLY, 5.0), now + 3).granted  # W (live) is held for
    later = now + 1 + HEAD_RETRY_S + GRACE_S + 0.1  # W never asked again
    assert book.reserve(waiting("c", HOURLY, 5.0, n=1, waited_s=later - now - 3), later).granted
