"""Cancelling and terminating a dispatch in the middle of its two-part reserve.

With ``shared.shards`` a dispatch reserves its tenant part on the tenant's shard ledger
first, then its fleet-wide part (a global limit, a tool's slot) on the root ledger. With
``on_refusal: wait`` a dispatch the root refuses waits while its tenant part stays
reserved on the shard (docs/shared.md, "Sharded ledgers"). These tests cut such a
dispatch off while it waits: by cancelling its run, by terminating its run, and by agent
code cancelling one of several parallel dispatches. Every test ends with the ledgers
exact: nothing reserved or open, every grant committed or released, and what was
committed equals what the activities reported (or, for the terminated run, what it
reserved, charged in full at its TTL).

Workflows here are unsandboxed so they can live in this file.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ActivityError, CancelledError

from conftest import GovernedFactory, eventually
from control_workflows import CONTROL_ACTIVITIES, CONTROL_WORKFLOWS, Loop, Looper, Step, step
from temporal_governor import Policy, attribution
from temporal_governor.core.shards import ShardMap
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot
from test_shared_processes import assert_balanced
from test_shared_shards import committed_of, state_of

ESTIMATE = 50
"""Tokens the policy reserves for one ``step`` dispatch."""
REPORTED = 30
"""Tokens each ``step`` reports (below its estimate: a charge in full would show)."""
HOLD_S = 3.0
"""How long the dispatch that holds the tool's one slot runs."""
STEP_TIMEOUT = timedelta(seconds=30)
HEARTBEAT = timedelta(seconds=2)


@workflow.defn(sandboxed=False)
class CancelsOneOfThree:
    """Holds the tool's slot with one dispatch, starts two more that must wait for it,
    cancels the last of them on a signal, and gathers all three."""

    def __init__(self) -> None:
        self.more = False
        self.cut = False

    @workflow.run
    async def run(self) -> dict[str, Any]:
        first = workflow.start_activity(
            step,
            Step(tokens=REPORTED, seconds=HOLD_S),
            start_to_close_timeout=STEP_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
        )
        await workflow.wait_condition(lambda: self.more)
        second = workflow.start_activity(
            step,
            Step(tokens=REPORTED),
            start_to_close_timeout=STEP_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
        )
        third = workflow.start_activity(
            step,
            Step(tokens=REPORTED),
            start_to_close_timeout=STEP_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
        )
        await workflow.wait_condition(lambda: self.cut)
        third.cancel()
        outcomes = await asyncio.gather(first, second, third, return_exceptions=True)
        cancelled = isinstance(outcomes[2], ActivityError | asyncio.CancelledError)
        ran = [o for o in outcomes if isinstance(o, int)]
        return {"total": sum(ran), "ran": len(ran), "third_cancelled": cancelled}

    @workflow.signal
    def start_more(self) -> None:
        self.more = True

    @workflow.signal
    def cancel_third(self) -> None:
        self.cut = True


WORKFLOWS = [*CONTROL_WORKFLOWS, CancelsOneOfThree]


def sharded_policy(
    ledgers: ShardMap, *, leases: bool, ttl_s: float = 600.0, pooled: bool = False
) -> Policy:
    """Tenant tokens on the shards; a global token limit and one ``step`` slot on the root."""
    return Policy.from_dict(
        {
            "shared": {
                "ledger_id": ledgers.root,
                "shards": ledgers.shards,
                "on_refusal": "wait",
                "max_wait": 30,
                "leases": leases,
                "reservation_ttl": ttl_s,
                "hierarchical_leases": pooled,
            },
            "global": {"max_tokens_per_minute": 1_000_000},
            "tenants": {"default": {"quotas": {"max_tokens": 100_000}}},
            "tools": {"step": {"estimate": {"tokens": ESTIMATE}, "max_concurrent_requests": 1}},
        }
    )


def tenants_on_two_shards(ledgers: ShardMap, tag: str) -> tuple[str, str]:
    """Two tenant names that live on different shards (each shard then shows one run)."""
    first = f"holder-{tag}"
    for i in range(100):
        other = f"waiter{i}-{tag}"
        if ledgers.ledger_of_tenant(other) != ledgers.ledger_of_tenant(first):
            return first, other
    raise AssertionError("no two tenants on different shards")


async def snapshot(handle: WorkflowHandle[Any, Any]) -> BudgetSnapshot:
    return BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))


def waits_on(snap: BudgetSnapshot, scope: str) -> set[str]:
    """Keys of the run's dispatches that were told to wait on ``scope``."""
    return {e.key for e in snap.recent_events if e.kind == "wait" and e.scope == scope}


async def scheduled_activities(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    return sum(
        1 for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    )


async def ledger(g: Any, ledger_id: str) -> dict[str, Any]:
    state = await state_of(g, ledger_id)
    assert state is not None, f"{ledger_id} never started"
    return state


async def assert_every_ledger_balanced(g: Any, ledgers: ShardMap) -> None:
    for ledger_id in ledgers.all_ledgers():
        state = await state_of(g, ledger_id)
        if state is not None:
            assert_balanced(state)


async def wait_until_waiting_on_root(
    g: Any, waiter: WorkflowHandle[Any, Any], shard: str, ledgers: ShardMap
) -> None:
    """Until the waiter's dispatch holds its tenant part on ``shard`` and waits on the root."""

    async def waiting() -> bool:
        snap = await snapshot(waiter)
        state = await state_of(g, shard)
        root = await state_of(g, ledgers.root)
        return (
            bool(waits_on(snap, "tool:step"))
            and snap.shared_open >= 1
            and state is not None
            and state["open_reservations"] >= 1
            and root is not None
            and root["waiters"] >= 1
        )

    await eventually(waiting)


async def root_holds_a_slot(g: Any, ledgers: ShardMap) -> bool:
    """Whether a dispatch holds the tool's one slot on the root."""
    root = await state_of(g, ledgers.root)
    return root is not None and root["reserved"].get("concurrency", 0.0) >= 1


async def start_holder_then_waiter(
    g: Any, ledgers: ShardMap, holder_tenant: str, waiter_tenant: str
) -> tuple[WorkflowHandle[Any, Any], WorkflowHandle[Any, Any]]:
    """The holder's first dispatch takes the tool's slot for ``HOLD_S``; the waiter's
    dispatch then holds its tenant part on its shard and waits on the root."""
    with attribution(tenant=holder_tenant):
        holder = await g.start(Looper.run, Loop(steps=2, tokens=REPORTED, seconds=HOLD_S))
    await eventually(lambda: root_holds_a_slot(g, ledgers))
    with attribution(tenant=waiter_tenant):
        waiter = await g.start(Looper.run, Loop(steps=1, tokens=REPORTED))
    await wait_until_waiting_on_root(g, waiter, ledgers.ledger_of_tenant(waiter_tenant), ledgers)
    return holder, waiter


def assert_holder_exact(
    held: BudgetSnapshot, holder_shard: dict[str, Any], root: dict[str, Any], tenant: str
) -> None:
    """The holder's run, its shard and the root committed what its two activities
    reported, and it holds nothing."""
    assert held.committed["tokens"] == 2 * REPORTED
    assert committed_of(holder_shard, f"tenant:{tenant}") == 2 * REPORTED
    assert root["committed"]["tokens"] == 2 * REPORTED
    assert held.shared_open == 0


@pytest.mark.parametrize("leases", [False, True])
async def test_cancelling_a_run_while_its_dispatch_waits_on_the_root_gives_back_its_shard_part(
    governed: GovernedFactory, leases: bool
) -> None:
    """A run cancelled while its dispatch holds its tenant part on a shard and waits for a
    tool slot on the root ends cancelled, and the ledgers are exact afterwards.

    The waiter's shard part is given back uncharged (its activity was never scheduled),
    nothing stays reserved or open on the shard or the root, every grant is committed or
    released, and its place in the root's line is gone at once: the other run's second
    dispatch takes the slot without waiting. The other run's usage is exactly what its
    activities reported, on its shard and on the root.
    """
    tag = uuid.uuid4().hex[:8]
    ledgers = ShardMap(f"ledger-{tag}", 4)
    holder_tenant, waiter_tenant = tenants_on_two_shards(ledgers, tag)
    waiter_shard = ledgers.ledger_of_tenant(waiter_tenant)
    async with governed(sharded_policy(ledgers, leases=leases), WORKFLOWS, CONTROL_ACTIVITIES) as g:
        holder, waiter = await start_holder_then_waiter(g, ledgers, holder_tenant, waiter_tenant)
        assert (await ledger(g, waiter_shard))["reserved"].get("tokens", 0.0) >= ESTIMATE
        assert (await holder.describe()).status == WorkflowExecutionStatus.RUNNING

        await waiter.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(waiter.result(), 30)
        assert isinstance(failure.value.cause, CancelledError), failure.value.cause

        assert await asyncio.wait_for(holder.result(), 30) == 2 * REPORTED
        held = await snapshot(holder)
        waited = await snapshot(waiter)
        assert await scheduled_activities(waiter) == 0, "the waiter's activity never ran"
        await assert_every_ledger_balanced(g, ledgers)
        shard = await ledger(g, waiter_shard)
        root = await ledger(g, ledgers.root)
        holder_shard = await ledger(g, ledgers.ledger_of_tenant(holder_tenant))

    # the waiter really held a tenant part on its shard, and gave it all back
    assert shard["granted"].get("tokens", 0.0) >= ESTIMATE
    assert committed_of(shard, f"tenant:{waiter_tenant}") == 0.0
    assert waited.committed.get("tokens", 0.0) == 0.0 and waited.shared_open == 0
    # the cancelled run left the root's line at once: the holder never waited
    assert root["waiters"] == 0
    assert not waits_on(held, "tool:step"), "the holder waited behind a cancelled run"
    # exactness: the holder's ledgers committed what its activities reported
    assert_holder_exact(held, holder_shard, root, holder_tenant)


async def test_a_run_terminated_while_its_dispatch_waits_on_the_root_is_charged_at_its_ttl(
    governed: GovernedFactory,
) -> None:
    """A run terminated while its dispatch holds its tenant part on a shard and waits on
    the root cannot settle: its shard part stays reserved until ``reservation_ttl``, then
    it is charged in full (its estimate) and nothing stays open on the shard or the root.

    The root never granted the terminated dispatch anything, so the root's tokens are the
    other run's alone; the other run completes (a dead waiter does not block the line for
    good) and its usage is exactly what its activities reported.
    """
    tag = uuid.uuid4().hex[:8]
    ledgers = ShardMap(f"ledger-{tag}", 2)
    holder_tenant, waiter_tenant = tenants_on_two_shards(ledgers, tag)
    waiter_shard = ledgers.ledger_of_tenant(waiter_tenant)
    ttl_s = 3.0
    async with governed(
        sharded_policy(ledgers, leases=False, ttl_s=ttl_s), WORKFLOWS, CONTROL_ACTIVITIES
    ) as g:
        holder, waiter = await start_holder_then_waiter(g, ledgers, holder_tenant, waiter_tenant)
        before = await ledger(g, waiter_shard)
        assert before["open_reservations"] == 1
        assert before["reserved"].get("tokens", 0.0) == ESTIMATE

        await waiter.terminate("cut off mid-reserve")
        assert (await waiter.describe()).status == WorkflowExecutionStatus.TERMINATED

        async def expired() -> bool:
            state = await ledger(g, waiter_shard)
            return int(state["open_reservations"]) == 0

        await eventually(expired, timeout=ttl_s + 10.0)
        assert await asyncio.wait_for(holder.result(), 40) == 2 * REPORTED
        held = await snapshot(holder)
        assert await scheduled_activities(waiter) == 0, "the waiter's activity never ran"
        await assert_every_ledger_balanced(g, ledgers)
        shard = await ledger(g, waiter_shard)
        root = await ledger(g, ledgers.root)
        holder_shard = await ledger(g, ledgers.ledger_of_tenant(holder_tenant))

    # the terminated run's shard part expired, charged in full: the governor never
    # assumes money was not spent by a run that could not say
    assert shard["expired_unsettled"] == 1
    assert committed_of(shard, f"tenant:{waiter_tenant}") == ESTIMATE
    # exactness: the holder's ledgers committed what its activities reported, and the
    # root holds nothing of the terminated run (it was never granted there)
    assert_holder_exact(held, holder_shard, root, holder_tenant)


async def test_agent_code_cancelling_one_of_parallel_dispatches_mid_reserve_keeps_ledgers_exact(
    governed: GovernedFactory,
) -> None:
    """Three parallel dispatches of one run on a tool with one slot: the first holds it,
    the other two hold their tenant parts on the shard and wait on the root; agent code
    cancels the third. The run goes on: the second gets the slot, the run completes, the
    third's activity is never scheduled and its shard part is given back uncharged.
    Afterwards nothing is open on the shard or the root, every grant is committed or
    released, and the run's usage on both is exactly what its two activities reported.
    """
    tag = uuid.uuid4().hex[:8]
    ledgers = ShardMap(f"ledger-{tag}", 4)
    tenant = f"fan-{tag}"
    shard_id = ledgers.ledger_of_tenant(tenant)
    async with governed(sharded_policy(ledgers, leases=False), WORKFLOWS, CONTROL_ACTIVITIES) as g:
        with attribution(tenant=tenant):
            handle = await g.start(CancelsOneOfThree.run)

        await eventually(lambda: root_holds_a_slot(g, ledgers))
        await handle.signal(CancelsOneOfThree.start_more)

        async def both_wait() -> bool:
            snap = await snapshot(handle)
            shard = await state_of(g, shard_id)
            root = await state_of(g, ledgers.root)
            return (
                len(waits_on(snap, "tool:step")) == 2
                and shard is not None
                and shard["open_reservations"] == 3  # the first's part and both waiters'
                and root is not None
                and root["waiters"] >= 2
            )

        await eventually(both_wait)
        await handle.signal(CancelsOneOfThree.cancel_third)
        outcome = await asyncio.wait_for(handle.result(), 30)
        snap = await snapshot(handle)
        assert await scheduled_activities(handle) == 2, "the cancelled dispatch never ran"
        await assert_every_ledger_balanced(g, ledgers)
        shard = await ledger(g, shard_id)
        root = await ledger(g, ledgers.root)

    assert outcome == {"total": 2 * REPORTED, "ran": 2, "third_cancelled": True}
    # all three held a tenant part on the shard; the cancelled one's was given back
    assert shard["granted"]["tokens"] == 3 * ESTIMATE
    assert root["waiters"] == 0
    # exactness: shard and root committed what the two activities reported
    assert snap.committed["tokens"] == 2 * REPORTED
    assert committed_of(shard, f"tenant:{tenant}") == 2 * REPORTED
    assert root["committed"]["tokens"] == 2 * REPORTED
    assert snap.shared_open == 0


async def test_cancelling_one_of_parallel_dispatches_drawn_from_a_pool_keeps_ledgers_exact(
    governed: GovernedFactory,
) -> None:
    """The same three parallel dispatches with hierarchical leases: their global token part
    is drawn from the shard's pool, the tool's slot is still on the root. Agent code cancels
    the third while it waits for the slot; once the pool is settled on the root, every
    ledger is balanced and the shard and the root committed what the two activities
    reported."""
    tag = uuid.uuid4().hex[:8]
    ledgers = ShardMap(f"ledger-{tag}", 4)
    tenant = f"fan-{tag}"
    shard_id = ledgers.ledger_of_tenant(tenant)
    policy = sharded_policy(ledgers, leases=False, pooled=True)
    async with governed(policy, WORKFLOWS, CONTROL_ACTIVITIES) as g:
        with attribution(tenant=tenant):
            handle = await g.start(CancelsOneOfThree.run)
        await eventually(lambda: root_holds_a_slot(g, ledgers))
        await handle.signal(CancelsOneOfThree.start_more)

        async def both_wait() -> bool:
            return len(waits_on(await snapshot(handle), "tool:step")) == 2

        await eventually(both_wait)
        await handle.signal(CancelsOneOfThree.cancel_third)
        outcome = await asyncio.wait_for(handle.result(), 30)
        snap = await snapshot(handle)
        assert await scheduled_activities(handle) == 2, "the cancelled dispatch never ran"

        async def pools_settled() -> bool:  # once idle for 10 s
            shard, root = await state_of(g, shard_id), await state_of(g, ledgers.root)
            return (
                shard is not None
                and not shard["pools"]
                and root is not None
                and root["open_reservations"] == 0
            )

        await eventually(pools_settled, timeout=40)
        await assert_every_ledger_balanced(g, ledgers)
        shard = await ledger(g, shard_id)
        root = await ledger(g, ledgers.root)

    assert outcome == {"total": 2 * REPORTED, "ran": 2, "third_cancelled": True}
    assert shard["pools_asked"] >= 1, "the global part was never drawn from a pool"
    assert root["waiters"] == 0
    assert snap.committed["tokens"] == 2 * REPORTED
    assert committed_of(shard, f"tenant:{tenant}") == 2 * REPORTED
    assert root["committed"]["tokens"] == 2 * REPORTED
    assert snap.shared_open == 0
