"""A tenant shard's pools of fleet-wide budget (hierarchical leases), on the pure books.

A root book and shard books exchange the calls :meth:`Pools.work` lists, in-process, as
the ledger workflows do through the ledger activity.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from temporal_governor.core.book import (
    MAX_AMOUNT,
    ExtendRequest,
    LedgerBook,
    ReleaseRunRequest,
    ReserveRequest,
    SettleRequest,
)
from temporal_governor.core.leases import reservation
from temporal_governor.core.pools import (
    ASK_GIVE_UP_S,
    FILL_WAIT_S,
    MAX_BACKOFF_S,
    MAX_POOL_AMOUNT,
    POOL_IDLE_S,
    POOL_LIMIT,
    POOL_MAX,
    POOL_MIN,
    POOL_START,
)
from temporal_governor.core.scopes import SharedLimit

ROOT = "ledger"
GLOBAL = SharedLimit(
    name="global.max_tokens_per_minute",
    scope="global",
    resource="tokens",
    ceiling=10_000.0,
    window_s=60.0,
)


def tenant_limit(tenant: str, ceiling: float = 1e9) -> SharedLimit:
    return SharedLimit(
        name="tenants.default.quotas.max_tokens",
        scope=f"tenant:{tenant}",
        resource="tokens",
        ceiling=ceiling,
    )


def ask(
    key: str,
    tenant: str,
    tokens: float,
    *,
    lease_of: int = 0,
    tenant_ceiling: float = 1e9,
    run: str = "run",
) -> ReserveRequest:
    return reservation(
        key,
        run,
        [tenant_limit(tenant, tenant_ceiling), GLOBAL],
        {"tokens": tokens},
        600.0,
        lease_of=lease_of,
        shards=2,
        upstream=ROOT,
    )


def tend(shard: LedgerBook, owner: str, root: LedgerBook, now: float) -> int:
    """Make the shard's pool calls on the root, as the ledger workflow does. Returns how many."""
    calls = shard.pools.work(owner, now)
    for call in calls:
        if call.update == "reserve":
            result = root.reserve(ReserveRequest.model_validate(call.request), now)
            refusal = result.refusal
            shard.pools.asked(
                call,
                result.amounts if result.granted else None,
                refusal.retry_after_s if refusal is not None else None,
                now,
                now,
            )
        elif call.update == "settle":
            root.settle(SettleRequest.model_validate(call.request), now)
            shard.pools.settled(str(call.request["key"]))
        else:
            renewed = root.extend(ExtendRequest.model_validate(call.request), now)
            shard.pools.extended(call.root, float(call.request["ttl_s"]), now, renewed)
    return len(calls)


def global_counter(root: LedgerBook) -> Any:
    return root.state.counters.get(GLOBAL.counter)


def test_a_dry_pool_refuses_holding_nothing_then_the_shard_asks_the_root_for_one() -> None:
    shard = LedgerBook()
    result = shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    assert not result.granted
    assert result.refusal is not None and result.refusal.limit == POOL_LIMIT
    assert result.refusal.scope == f"ledger:{ROOT}"
    assert shard.state.reservations == {}
    assert all(c.reserved == 0 for c in shard.state.counters.values())
    assert shard.pools.dirty  # wakes the shard's workflow

    calls = shard.pools.work("shard-0", 0.0)
    assert [c.update for c in calls] == ["reserve"]
    request = ReserveRequest.model_validate(calls[0].request)
    assert request.amounts == {"tokens": 100 * POOL_START}
    assert request.minimum == {"tokens": 100}
    assert request.run == "shard-0/pools"
    assert request.limits == [GLOBAL] and request.shards == 2
    # an unanswered ask keeps its key: a lost answer never leaves a second pool on the root
    shard.pools.unanswered(calls[0], 0.0)
    again = shard.pools.work("shard-0", 2.0)
    assert [c.request["key"] for c in again] == [calls[0].request["key"]]


def test_a_filled_pool_grants_the_tenant_and_fleet_parts_in_one_step_and_settles_exactly() -> None:
    shard, root = LedgerBook(), LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    assert tend(shard, "shard-0", root, 0.0) == 1
    (pool,) = shard.state.pools.pools.values()
    # POOL_START times the dry request, within the root's fair share (10 % of 10,000)
    assert pool.granted == {"tokens": 100.0 * POOL_START}
    assert global_counter(root).reserved == 100.0 * POOL_START

    result = shard.reserve(ask("r/a#2", "acme", 100), now=1.0)
    assert result.granted and result.amounts == {"tokens": 100.0}
    assert pool.held == {"tokens": 100.0} and pool.holders == 1
    assert shard.state.counters[tenant_limit("acme").counter].reserved == 100.0
    assert GLOBAL.counter not in shard.state.counters  # the root keeps the fleet's counter

    shard.settle(SettleRequest(key="r/a#2", actual={"tokens": 70}), now=2.0)
    assert pool.used == {"tokens": 70.0} and pool.held == {"tokens": 0.0}
    # idle for POOL_IDLE_S: retired and settled on the root with what was really used
    assert tend(shard, "shard-0", root, 2.0 + POOL_IDLE_S + 1) == 1
    assert shard.state.pools.pools == {}
    counter = global_counter(root)
    assert counter.reserved == 0.0 and counter.committed == 70.0
    assert root.state.reservations == {}


def test_a_pool_never_grants_more_than_it_holds_and_a_lease_gets_what_is_left_of_it() -> None:
    shard, root = LedgerBook(), LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 500), now=0.0)
    tend(shard, "shard-0", root, 0.0)
    (pool,) = shard.state.pools.pools.values()
    assert pool.granted == {"tokens": 1000.0}  # the root's 10 % cap of 10,000
    # a lease gets what it asks while the pool has it, then what is left (at least one
    # dispatch's worth): first come, first served within a pool sized by its demand
    lease = shard.reserve(ask("r/a#2", "acme", 100, lease_of=4), now=1.0)
    assert lease.granted and lease.amounts["tokens"] == 400.0  # asked 400, fits
    second = shard.reserve(ask("r/a#3", "acme", 100, lease_of=5, run="run-2"), now=1.0)
    assert second.granted and second.amounts["tokens"] == 500.0
    third = shard.reserve(ask("r/a#4", "acme", 100, lease_of=20, run="run-3"), now=1.0)
    assert third.granted and third.amounts["tokens"] == pytest.approx(100.0)  # what is left
    granted = [lease.amounts["tokens"], second.amounts["tokens"], third.amounts["tokens"]]
    for i in range(5, 40):
        result = shard.reserve(ask(f"r/a#{i}", "acme", 100), now=1.0)
        if not result.granted:
            assert result.refusal is not None and result.refusal.limit == POOL_LIMIT
            break
        granted.append(result.amounts["tokens"])
    assert sum(granted) <= pool.granted["tokens"] + 1e-9
    assert pool.left("tokens") < 100


def test_tenant_refusals_come_first_and_a_refused_or_released_reservation_gives_back() -> None:
    shard, root = LedgerBook(), LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    tend(shard, "shard-0", root, 0.0)
    (pool,) = shard.state.pools.pools.values()
    refused = shard.reserve(ask("r/a#2", "acme", 100, tenant_ceiling=50), now=1.0)
    assert refused.refusal is not None and refused.refusal.scope == "tenant:acme"
    assert pool.held.get("tokens", 0.0) == 0.0 and pool.holders == 0

    assert shard.reserve(ask("r/a#3", "acme", 100, run="run-1"), now=1.0).granted
    shard.release_run(ReleaseRunRequest(run="run-1"), now=2.0)
    assert pool.holders == 0 and pool.held["tokens"] == 0.0 and pool.used.get("tokens", 0) == 0


def test_an_expired_reservation_counts_in_full_and_a_late_settle_corrects_the_pool() -> None:
    shard, root = LedgerBook(), LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    tend(shard, "shard-0", root, 0.0)
    (pool,) = shard.state.pools.pools.values()
    short = ask("r/a#2", "acme", 100).model_copy(update={"ttl_s": 5.0})
    assert shard.reserve(short, now=1.0).granted
    assert shard.expire(now=7.0) == 1
    assert pool.used == {"tokens": 100.0} and pool.holders == 0
    shard.settle(SettleRequest(key="r/a#2", actual={"tokens": 30}), now=8.0)
    assert pool.used == {"tokens": 30.0}


def test_a_pool_half_its_ttl_old_is_retired_and_renewed_on_the_root_while_held() -> None:
    shard, root = LedgerBook(), LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    tend(shard, "shard-0", root, 0.0)
    (first,) = shard.state.pools.pools.values()
    assert shard.reserve(ask("r/a#2", "acme", 100), now=1.0).granted
    # past half its TTL, held by r/a#2: renewed on the root, retired for new grants
    calls = shard.pools.work("shard-0", 301.0)
    assert [c.update for c in calls] == ["extend"]
    tend(shard, "shard-0", root, 301.0)
    assert first.retired and first.expires_at == pytest.approx(901.0)
    assert root.state.reservations[first.key].expires_at == pytest.approx(901.0)
    dry = shard.reserve(ask("r/a#3", "acme", 100), now=302.0)
    assert dry.refusal is not None and dry.refusal.limit == POOL_LIMIT
    shard.settle(SettleRequest(key="r/a#2", actual={"tokens": 100}), now=303.0)
    tend(shard, "shard-0", root, 303.0)  # the drained pool settles, a new one is asked for
    assert first.key not in shard.state.pools.pools
    assert len(shard.state.pools.pools) == 1
    assert global_counter(root).committed == 100.0


def test_a_pool_is_timed_from_its_first_ask_so_it_never_outlives_the_roots_reservation() -> None:
    shard, root = LedgerBook(), LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    (call,) = shard.pools.work("shard-0", 0.0)
    root.reserve(ReserveRequest.model_validate(call.request), 0.0)  # taken by the root ...
    shard.pools.unanswered(call, 0.0)  # ... but its answer was lost
    tend(shard, "shard-0", root, 100.0)  # asked again with the same key: the duplicate
    (pool,) = shard.state.pools.pools.values()
    assert pool.key == call.request["key"] and pool.expires_at == pytest.approx(600.0)
    # unusable well before the root charges it in full at 600
    dry = shard.reserve(ask("r/a#2", "acme", 100), now=460.0)
    assert dry.refusal is not None and dry.refusal.limit == POOL_LIMIT


def test_a_root_that_renewed_fewer_pools_than_the_shard_holds_retires_them() -> None:
    shard = LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    (call,) = shard.pools.work("shard-0", 0.0)
    shard.pools.asked(call, {"tokens": 1000.0}, None, 0.0, 0.0)
    (pool,) = shard.state.pools.pools.values()
    shard.pools.extended(ROOT, 600.0, 1.0, renewed=0)  # the root no longer holds it
    assert pool.retired


def test_an_ask_waits_behind_the_roots_waiters_ranked_ahead_of_its_requests() -> None:
    shard, root = LedgerBook(), LedgerBook()
    total = GLOBAL.model_copy(update={"window_s": None, "name": "global.max_tokens"})
    holder = reservation("h#1", "holder", [total], {"tokens": 9_900}, 600.0, shards=2)
    assert root.reserve(holder, 0.0).granted
    critical = reservation(
        "c#1", "crit", [total], {"tokens": 1_000}, 600.0, shards=2, priority="critical",
        waits=True, tenant="vip",
    )  # fmt: skip
    assert not root.reserve(critical, 1.0).granted  # queued as a critical waiter
    root.settle(SettleRequest(key="h#1", actual={"tokens": 8_900}), 2.0)  # 1,100 left
    background = reservation(
        "p/a#1", "run", [tenant_limit("acme"), total], {"tokens": 150}, 600.0, shards=2,
        upstream=ROOT, priority="background", waits=True, tenant="acme",
    )  # fmt: skip
    assert not shard.reserve(background, 3.0).granted  # dry
    (call,) = shard.pools.work("shard-0", 3.0)
    assert call.request["priority"] == 4  # background's rank
    result = root.reserve(ReserveRequest.model_validate(call.request), 3.0)
    assert not result.granted  # the capacity is held for the critical waiter


def test_unanswered_asks_back_off_then_are_given_up_without_a_busy_loop() -> None:
    shard = LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    now, gaps = 0.0, []
    while shard.state.pools.demand:
        calls = shard.pools.work("shard-0", now)
        for call in calls:
            shard.pools.unanswered(call, now)
        wake = shard.pools.wake_at(now)
        if wake is None:
            break
        gaps.append(wake - now)
        now = wake
        assert now < 10 * ASK_GIVE_UP_S
    assert shard.state.pools.demand == {}  # given up: nobody asked again
    assert max(gaps) <= MAX_BACKOFF_S + 1e-9
    assert len(gaps) < 20, gaps  # the pause doubled: no loop every half second


def test_a_pool_ask_never_asks_past_the_ledgers_largest_amount() -> None:
    assert MAX_POOL_AMOUNT == MAX_AMOUNT
    shard = LedgerBook()
    shard.reserve(ask("r/a#1", "acme", MAX_AMOUNT / 2, tenant_ceiling=MAX_AMOUNT), now=0.0)
    (call,) = shard.pools.work("shard-0", 0.0)
    ReserveRequest.model_validate(call.request)  # the root would accept it
    assert call.request["amounts"]["tokens"] == MAX_AMOUNT


def dry_wait(shard: LedgerBook, key: str, now: float) -> float | None:
    result = shard.reserve(ask(key, "acme", 100), now=now)
    assert result.refusal is not None and result.refusal.limit == POOL_LIMIT
    return result.refusal.retry_after_s


def test_a_dry_request_waits_only_while_the_shard_is_about_to_ask_the_root() -> None:
    shard = LedgerBook()
    assert dry_wait(shard, "r/a#1", 0.0) == FILL_WAIT_S  # the shard asks now
    (call,) = shard.pools.work("shard-0", 0.0)
    shard.pools.unanswered(call, 0.0)
    assert dry_wait(shard, "r/a#2", 0.1) is None  # the root did not answer: go there now
    (again,) = shard.pools.work("shard-0", 5.0)
    shard.pools.asked(again, None, None, 5.0, 5.0)  # the root refused: its budget is short
    assert dry_wait(shard, "r/a#3", 10.0) is None
    # a thin pool (the root's fair share cut the ask by half or more) is no reason to wait
    thin = LedgerBook()
    dry_wait(thin, "r/b#1", 0.0)
    (ask_call,) = thin.pools.work("shard-1", 0.0)
    assert ask_call.request["amounts"] == {"tokens": 100.0 * POOL_START}
    thin.pools.asked(ask_call, {"tokens": 99.0}, None, 0.0, 0.0)  # under half: short
    assert thin.state.pools.thin
    assert dry_wait(thin, "r/b#2", 0.1) is None


def test_pools_grow_while_they_run_out_and_shrink_when_they_go_idle() -> None:
    shard, root = LedgerBook(), LedgerBook()
    now, sizes = 0.0, []
    for i in range(12):  # a busy shard: every pool runs out, the next asks twice as much
        now += 0.1
        result = shard.reserve(ask(f"r/a#{i}", "acme", 100), now=now)
        if not result.granted:
            tend(shard, "shard-0", root, now)
            sizes.append(next(p for p in shard.state.pools.pools.values() if not p.retired))
            result = shard.reserve(ask(f"r/a#{i}b", "acme", 100), now=now)
            assert result.granted
    granted = [pool.granted["tokens"] for pool in sizes]
    assert granted[:3] == [100.0 * POOL_START, 200.0 * POOL_START, 400.0 * POOL_START]
    scale = shard.pools.scale(sizes[0].signature)
    tend(shard, "shard-0", root, now + POOL_IDLE_S + 1)  # idle: retired, and it shrinks
    assert shard.pools.scale(sizes[0].signature) == scale // 2
    assert scale // 2 >= POOL_MIN and scale <= POOL_MAX


def test_a_pool_nobody_draws_from_is_retired_even_while_a_lease_holds_part_of_it() -> None:
    shard, root = LedgerBook(), LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    tend(shard, "shard-0", root, 0.0)
    assert shard.reserve(ask("r/a#2", "acme", 100, run="light"), now=1.0).granted
    (pool,) = shard.state.pools.pools.values()
    assert shard.pools.wake_at(1.0) == pytest.approx(1.0 + POOL_IDLE_S)
    tend(shard, "shard-0", root, 1.0 + POOL_IDLE_S + 0.1)
    assert pool.retired and pool.key in shard.state.pools.pools  # held: not settled yet
    shard.settle(SettleRequest(key="r/a#2", actual={"tokens": 60}), now=20.0)
    tend(shard, "shard-0", root, 20.0)
    assert shard.state.pools.pools == {} and global_counter(root).committed == 60.0


def test_a_settlement_the_root_did_not_take_is_sent_again_after_a_pause() -> None:
    shard, root = LedgerBook(), LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    tend(shard, "shard-0", root, 0.0)
    (settle,) = shard.pools.work("shard-0", POOL_IDLE_S + 1)
    assert settle.update == "settle"
    shard.pools.unanswered(settle, POOL_IDLE_S + 1)
    assert shard.pools.work("shard-0", POOL_IDLE_S + 1.5) == []  # not in a busy loop
    wake = shard.pools.wake_at(POOL_IDLE_S + 1.5)
    assert wake is not None and wake <= POOL_IDLE_S + 1 + MAX_BACKOFF_S
    assert [c.update for c in shard.pools.work("shard-0", wake)] == ["settle"]


def test_only_terminate_limits_on_leasable_resources_are_drawn_from_a_pool() -> None:
    slots = SharedLimit(
        name="global.max_concurrent_tasks", scope="global", resource="concurrency", ceiling=5
    )
    with pytest.raises(ValidationError, match="cannot be drawn from a pool"):
        reservation("k#1", "run", [slots], {"concurrency": 1}, 600.0, shards=2, upstream=ROOT)
    alert = GLOBAL.model_copy(update={"on_breach": "alert"})
    with pytest.raises(ValidationError, match="cannot be drawn from a pool"):
        reservation("k#1", "run", [alert], {"tokens": 1}, 600.0, shards=2, upstream=ROOT)


def test_an_older_state_loads_and_a_book_without_pools_packs_as_before() -> None:
    book = LedgerBook()
    book.reserve(reservation("k#1", "run", [tenant_limit("acme")], {"tokens": 5}, 600.0), now=0.0)
    packed = book.pack()
    assert "pool" not in LedgerBook.unpack(packed).model_dump_json(exclude_defaults=True)
    assert LedgerBook(packed).state.reservations["k#1"].pool is None


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_shards_drawing_from_pools_never_pass_the_global_ceiling_and_the_root_is_exact(
    seed: int,
) -> None:
    rng = random.Random(seed)
    root = LedgerBook()
    shards = {f"shard-{i}": LedgerBook() for i in range(3)}
    tenants = [f"t{i}" for i in range(6)]
    open_: dict[str, tuple[str, float]] = {}  # key -> (shard, tokens held)
    spent = 0.0
    now = 0.0
    for step in range(300):
        now += rng.choice([0.0, 0.1, 1.0, 5.0])
        name = rng.choice(list(shards))
        shard = shards[name]
        action = rng.random()
        if action < 0.5:
            tokens = float(rng.randint(1, 400))
            key = f"{name}/k#{step}"
            request = ask(key, rng.choice(tenants), tokens, lease_of=rng.choice([0, 0, 5]))
            result = shard.reserve(request, now)
            if result.granted:
                open_[key] = (name, result.amounts["tokens"])
        elif action < 0.85 and open_:
            key = rng.choice(sorted(open_))
            owner, held = open_.pop(key)
            actual = round(held * rng.random(), 3)
            spent += actual
            shards[owner].settle(SettleRequest(key=key, actual={"tokens": actual}), now)
        else:
            tend(shard, name, root, now)
        counter = global_counter(root)
        if counter is not None:
            # the root's window never holds more than its ceiling ...
            assert counter.committed + counter.reserved <= GLOBAL.ceiling + 1e-6
        for book in shards.values():
            for pool in book.state.pools.pools.values():
                # ... and no shard grants more out of a pool than the root granted it
                drawn = pool.used.get("tokens", 0.0) + pool.held.get("tokens", 0.0)
                assert drawn <= pool.granted["tokens"] + 1e-6
    for key, (owner, held) in sorted(open_.items()):
        spent += held
        shards[owner].settle(SettleRequest(key=key, actual={"tokens": held}), now)
    now += 1_000.0  # every pool idle (and past its TTL's half): all settle
    for name, shard in shards.items():
        tend(shard, name, root, now)
        assert shard.state.pools.pools == {}
    assert root.state.reservations == {}
    assert root.state.committed.get("tokens", 0.0) == pytest.approx(spent)


def test_quiet_shards_hold_little_of_the_global_budget_idle_in_their_pools() -> None:
    """Seven quiet shards each lend one run a lease; a hot shard spends the rest."""
    minute = GLOBAL.model_copy(update={"ceiling": 1_000_000.0})

    def lease(key: str, tenant: str, run: str) -> ReserveRequest:
        return reservation(
            key, run, [tenant_limit(tenant), minute], {"tokens": 100.0}, 600.0,
            lease_of=20, shards=8, upstream=ROOT,
        )  # fmt: skip

    root, books = LedgerBook(), [LedgerBook() for _ in range(8)]
    for i, book in enumerate(books[:-1]):
        if not book.reserve(lease(f"light{i}#1", f"t{i}", f"light{i}"), 1.0).granted:
            tend(book, f"shard-{i}", root, 1.0)
            assert book.reserve(lease(f"light{i}#2", f"t{i}", f"light{i}"), 1.0).granted
    hot, spent, now = books[-1], 0.0, 1.0
    for n in range(10_000):
        now += 0.001
        result = hot.reserve(lease(f"hot#{n}", "hot", f"hot{n}"), now)
        if not result.granted:
            tend(hot, "shard-7", root, now)
            result = hot.reserve(lease(f"hot#{n}b", "hot", f"hot{n}"), now)
        if not result.granted:  # as the run does: the root itself, which refuses at the end
            direct = reservation(
                f"hot-root#{n}", f"hot{n}", [minute], {"tokens": 100.0}, 600.0,
                lease_of=20, shards=8,
            )  # fmt: skip
            answer = root.reserve(direct, now)
            if not answer.granted:
                break
            root.settle(SettleRequest(key=answer.key, actual=answer.amounts), now)
            spent += answer.amounts["tokens"]
            continue
        hot.settle(SettleRequest(key=result.key, actual=result.amounts), now)
        spent += result.amounts["tokens"]
    idle = sum(
        pool.left("tokens") for book in books[:-1] for pool in book.state.pools.pools.values()
    )
    assert spent > 0.97 * minute.ceiling, (spent, idle)
    assert idle <= 7 * 2 * 2_000  # a quiet shard's pool: twice the one lease asked of it


def test_an_idle_pool_a_long_run_still_holds_is_trimmed_to_what_it_holds_exactly() -> None:
    shard, root = LedgerBook(), LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 500), now=0.0)
    tend(shard, "shard-0", root, 0.0)
    (pool,) = shard.state.pools.pools.values()
    assert pool.granted == {"tokens": 1000.0}
    assert shard.reserve(ask("r/a#2", "acme", 100, run="long"), now=1.0).granted
    # idle: retired, then trimmed: the root holds what the long run holds, no more
    tend(shard, "shard-0", root, 1.0 + POOL_IDLE_S + 0.1)  # retire, ask for the trim
    tend(shard, "shard-0", root, 1.0 + POOL_IDLE_S + 0.2)  # settle the old pool
    assert pool.key not in shard.state.pools.pools
    (trimmed,) = shard.state.pools.pools.values()
    assert trimmed.granted == {"tokens": 100.0} and trimmed.holders == 1
    assert global_counter(root).reserved == pytest.approx(100.0)
    # the long run ends: its actual lands in the trimmed pool, and the root is exact
    shard.settle(SettleRequest(key="r/a#2", actual={"tokens": 80}), now=3_600.0)
    tend(shard, "shard-0", root, 3_600.0)
    assert shard.state.pools.pools == {} and shard.state.pools.moved == {}
    counter = global_counter(root)
    assert counter.reserved == 0.0 and root.state.committed["tokens"] == 80.0


def test_an_ask_given_up_is_settled_on_the_root_with_nothing_used() -> None:
    shard, root = LedgerBook(), LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    (call,) = shard.pools.work("shard-0", 0.0)
    root.reserve(ReserveRequest.model_validate(call.request), 0.0)  # taken, answer lost
    shard.pools.unanswered(call, 0.0)
    now = 0.0
    while shard.state.pools.demand:  # asked again until given up (every answer lost)
        now = shard.pools.wake_at(now) or now + 1
        for again in shard.pools.work("shard-0", now):
            shard.pools.unanswered(again, now)
    assert shard.state.pools.abandoned == {call.request["key"]: ROOT}
    tend(shard, "shard-0", root, now + 1)
    assert shard.state.pools.abandoned == {}
    assert root.state.reservations == {} and root.state.committed.get("tokens", 0.0) == 0.0


def test_a_refused_asks_demand_does_not_grow_and_stale_entries_are_dropped() -> None:
    shard = LedgerBook()
    shard.reserve(ask("r/a#1", "acme", 100), now=0.0)
    (call,) = shard.pools.work("shard-0", 0.0)
    shard.pools.asked(call, None, None, 0.0, 0.0)  # refused
    (demand,) = shard.state.pools.demand.values()
    before = dict(demand.amounts)
    for i in range(20):
        shard.reserve(ask(f"r/a#{i + 2}", "acme", 100), now=0.5 + i)
    assert demand.amounts == before
    shard.state.pools.thin["gone"] = 1.0
    shard.state.pools.scale["gone"] = 8
    shard.pools.work("shard-0", 100.0)
    assert "gone" not in shard.state.pools.thin and "gone" not in shard.state.pools.scale
