"""Edge cases of shared budgets found in review: cancels during ledger calls and settling,
workflow-task failures, runs longer than the TTL, a ledger over its size budget.

Workflows here are unsandboxed so they can live in this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

import pytest
import yaml
from temporalio import workflow
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ActivityError
from temporalio.service import RPCError

from shared_workflows import SHARED_ACTIVITIES, SHARED_WORKFLOWS, tracked
from temporal_governor import BreachDetails, Policy, attribution
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS


@workflow.defn(sandboxed=False)
class CancelsOneDispatchEarly:
    """Starts an activity and cancels it right away (a hedge, a timeout in agent code)."""

    @workflow.run
    async def run(self, yields: int) -> str:
        handle = workflow.start_activity(tracked, 10, start_to_close_timeout=timedelta(seconds=20))
        for _ in range(yields):
            await asyncio.sleep(0)  # let the governor's dispatch reach its ledger call
        handle.cancel()
        with contextlib.suppress(ActivityError, asyncio.CancelledError):
            await handle
        return "carried on"


@workflow.defn(sandboxed=False)
class SpendThenWaitForGo:
    """One activity, then waits for a signal before it returns."""

    def __init__(self) -> None:
        self.go = False
        self.spent = False

    @workflow.run
    async def run(self) -> int:
        result = await workflow.execute_activity(
            tracked, 10, start_to_close_timeout=timedelta(seconds=20)
        )
        self.spent = True
        await workflow.wait_condition(lambda: self.go)
        return result

    @workflow.signal
    def go_on(self) -> None:
        self.go = True

    @workflow.query
    def has_spent(self) -> bool:
        return self.spent


@workflow.defn(sandboxed=False)
class LongNap:
    """Runs for `seconds` of workflow time, doing nothing."""

    @workflow.run
    async def run(self, seconds: float) -> str:
        await workflow.sleep(seconds)
        return "awake"


REVIEW_WORKFLOWS = [CancelsOneDispatchEarly, SpendThenWaitForGo, LongNap]
WORKFLOWS = [*ALL_WORKFLOWS, *SHARED_WORKFLOWS, *REVIEW_WORKFLOWS]
ACTIVITIES = [*ALL_ACTIVITIES, *SHARED_ACTIVITIES]


def policy(body: str) -> Policy:
    data = yaml.safe_load(body)
    data.setdefault("shared", {})["ledger_id"] = f"ledger-{uuid.uuid4().hex[:8]}"
    return Policy.from_dict(data)


async def ledger_state(g, scope: str = "") -> dict:
    handle = g.client.get_workflow_handle(g.plugin.policy.shared.ledger_id)
    return await handle.query("state", scope)


@pytest.mark.parametrize("leases", [True, False])
async def test_agent_code_cancelling_a_dispatch_during_its_ledger_call_does_not_kill_the_run(
    governed, leases: bool
) -> None:
    """A cancel that reaches a ledger local activity is no ledger outage.

    `SharedBudget._call` turns every ActivityError into `_unavailable` (GovernanceKilled,
    limit shared.ledger_unavailable); a cancelled local activity resolves as
    ActivityError(cause=CancelledError), so agent code cancelling one of its own activities
    at the wrong moment kills the whole run.
    """
    p = policy(
        f"""
tenants: {{ acme: {{ quotas: {{ max_tokens: 1000 }} }} }}
tools: {{ tracked: {{ estimate: {{ tokens: 10 }} }} }}
shared: {{ leases: {str(leases).lower()} }}
"""
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant="acme"):
            try:
                outcome = await g.run(CancelsOneDispatchEarly.run, 20)
            except WorkflowFailureError as failure:
                details = BreachDetails.from_error(failure)
                outcome = f"failed: {details.limit if details else failure.cause}"
    assert outcome == "carried on"


async def test_a_cancel_that_arrives_during_the_final_release_leaves_nothing_open(
    governed,
) -> None:
    """release_all is exposed to the run's cancellation.

    A cancel delivered while the run-end `release_run` local activity is pending (a slow
    ledger: the worker heartbeats the workflow task, new events arrive) cancels that local
    activity; `release_all` logs it as "ledger unavailable at run end" and clears `open`,
    the run then completes (the cancel request is swallowed) and its lease stays open in
    the ledger until the TTL, when it is charged in full (a whole lease, not what was used).
    """
    from temporal_governor.ledger import _activity as ledger_activity

    p = policy(
        """
tenants: { acme: { quotas: { max_tokens: 1000 } } }
tools: { tracked: { estimate: { tokens: 10 } } }
shared: { reservation_ttl: 120s }
"""
    )
    ledger_id = p.shared.ledger_id
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant="acme"):
            handle = await g.start(SpendThenWaitForGo.run)
        for _ in range(200):
            if await handle.query(SpendThenWaitForGo.has_spent):
                break
            await asyncio.sleep(0.05)
        before = await ledger_state(g)
        assert before["open_reservations"] == 1  # the run's lease
        real_gate = ledger_activity._gates.get(ledger_id)
        ledger_activity._gates[ledger_id] = asyncio.Semaphore(0)  # the ledger is slow now
        try:
            await handle.signal(SpendThenWaitForGo.go_on)
            await asyncio.sleep(1.0)  # the run is in release_all, its release_run pending
            await handle.cancel()
            await asyncio.sleep(2.0)
            # the run settles before it closes, whatever the cancel: still running meanwhile
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        finally:
            ledger_activity._gates[ledger_id] = real_gate or asyncio.Semaphore(5)
        for _ in range(600):  # the ledger answers again: the run settles and closes
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                break
            await asyncio.sleep(0.1)
        status = (await handle.describe()).status
        await asyncio.sleep(1.0)
        after = await ledger_state(g)
    assert status != WorkflowExecutionStatus.RUNNING
    # the run is closed: nothing of it may stay open in the ledger
    assert after["open_reservations"] == 0, (status, after["reserved"])


async def test_a_run_longer_than_the_reservation_ttl_keeps_its_concurrency_slot(
    governed,
) -> None:
    """`max_concurrent_tasks`: a run's slot is a reservation with `reservation_ttl`, never
    renewed; a live run older than the TTL loses it (expiry charges concurrency 0 and frees
    the slot), so a second run starts while the first still runs: the ceiling of 1 is
    passed. The docs promise a slot "frees it when it ends".
    """
    p = policy(
        """
tenants: { acme: { quotas: { max_concurrent_tasks: 1 } } }
shared: { reservation_ttl: 2s }
"""
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant="acme"):
            first = await g.start(LongNap.run, 8.0)
            await asyncio.sleep(4.0)  # the first run is live, past the TTL
            assert (await first.describe()).status == WorkflowExecutionStatus.RUNNING
            second = await g.start(LongNap.run, 0.1)
            try:
                outcome = await second.result()
            except WorkflowFailureError as failure:
                details = BreachDetails.from_error(failure)
                outcome = details.limit if details else "failed"
            first_running = (await first.describe()).status == WorkflowExecutionStatus.RUNNING
        await first.result()
    assert first_running
    assert outcome == "tenants.acme.quotas.max_concurrent_tasks", (
        "a second run started while the first (ceiling 1) still ran"
    )


# -- the book: "bounded by design" ------------------------------------------------------

PAYLOAD_LIMIT = 2 * 1024 * 1024


def _noise(n: int, seed: int) -> str:
    import random
    import string

    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


def test_stored_fleet_controls_are_refused_before_they_pass_the_payload_limit() -> None:
    """1,000 scopes x (kill, resume) x 16 KiB each would pack to ~20 MB (the ledger verifies
    nothing it stores, any client can send `control`): the ledger refuses the ones past its
    byte budget, and its state stays far below the payload limit."""
    from temporal_governor.core.book import (
        MAX_CONTROL_BYTES,
        CapacityError,
        ControlRecordRequest,
        LedgerBook,
    )

    book = LedgerBook()
    refused = 0
    for i in range(1_000):
        for signal in ("governor.kill", "governor.resume"):
            message = {"reason": _noise(MAX_CONTROL_BYTES - 64, i * 2 + len(signal))}
            req = ControlRecordRequest(scope=f"tenant:t{i}", signal=signal, message=message)
            try:
                book.record_control(req, 1_000_000.0)
            except CapacityError:
                refused += 1
    size = len(book.pack()["packed"])
    assert refused > 1_900
    assert size < PAYLOAD_LIMIT / 2, f"packed ledger state {size / 1e6:.1f} MB"


def test_incompressible_counters_are_refused_before_they_pass_the_payload_limit() -> None:
    """Lifetime counters with spend are never pruned; each may carry a 300-character scope
    and limit name. 7,000 of them (the cap is 50,000) would pass the payload limit: past the
    book's packed budget a reservation needing a new counter is refused (`ledger.capacity`),
    and one on existing counters still goes through."""
    from temporal_governor.core.book import (
        CAPACITY_LIMIT,
        LedgerBook,
        ReserveRequest,
        SettleRequest,
    )
    from temporal_governor.core.scopes import SharedLimit

    book = LedgerBook()
    granted: list[SharedLimit] = []
    refusals = 0
    for i in range(7_000):
        lim = SharedLimit(
            name=_noise(300, -i), scope=f"tenant:{_noise(290, i)}", resource="tokens", ceiling=1e6
        )
        key = f"r{i}/a#1"
        req = ReserveRequest(key=key, run=f"r{i}", amounts={"tokens": 1.0}, limits=[lim])
        result = book.reserve(req, 0.0)
        if result.granted:
            granted.append(lim)
            book.settle(SettleRequest(key=key, actual={"tokens": 1.0}), 0.0)
        else:
            assert result.refusal is not None and result.refusal.limit == CAPACITY_LIMIT
            refusals += 1
    assert refusals > 0 and granted
    book.prune(1e6)
    size = len(book.pack()["packed"])
    assert size < PAYLOAD_LIMIT * 0.75, f"packed ledger state {size / 1e6:.1f} MB"
    # over its budget the book refuses any growth, a reservation on known counters too
    again = ReserveRequest(
        key="again/a#1", run="again", amounts={"tokens": 1.0}, limits=[granted[0]]
    )
    refusal = book.reserve(again, 1.0).refusal
    assert refusal is not None and refusal.limit == CAPACITY_LIMIT


BUG = {"on": True}


@workflow.defn(sandboxed=False)
class BuggyThenFixed:
    """Spends, then hits a bug (a workflow task failure, retried until a fix is deployed),
    then spends again."""

    @workflow.run
    async def run(self) -> int:
        first = await workflow.execute_activity(
            tracked, 10, start_to_close_timeout=timedelta(seconds=20)
        )
        if BUG["on"]:
            raise RuntimeError("a bug in agent code: the workflow task fails, the run lives on")
        second = await workflow.execute_activity(
            tracked, 10, start_to_close_timeout=timedelta(seconds=20)
        )
        return first + second


async def test_a_workflow_task_failure_does_not_release_what_a_live_run_holds(governed) -> None:
    """`execute_workflow` awaits `release_all()` before `main.result()` re-raises, for every
    exception of agent code, also one that only fails the workflow *task* (any non-Temporal
    exception). The run lives on (the task is retried until a fix is deployed) but its
    lease is gone from the ledger: after the fix it spends against the lease it still holds
    in memory, and its final release_run reuses the update id of the first one (deduplicated),
    so the second activity's usage is never committed."""
    p = policy(
        """
tenants: { acme: { quotas: { max_tokens: 1000 } } }
tools: { tracked: { estimate: { tokens: 10 } } }
"""
    )
    BUG["on"] = True
    async with governed(p, [*WORKFLOWS, BuggyThenFixed], ACTIVITIES) as g:
        with attribution(tenant="acme"):
            handle = await g.start(BuggyThenFixed.run)
        for _ in range(100):
            raw = (await handle.describe()).raw_description
            if raw.HasField("pending_workflow_task") and raw.pending_workflow_task.attempt >= 2:
                break
            await asyncio.sleep(0.1)
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        while_failing = await ledger_state(g)
        BUG["on"] = False  # the fix is deployed; the workflow task's retry now succeeds
        assert await asyncio.wait_for(handle.result(), 60) == 20
        await asyncio.sleep(0.5)
        after = await ledger_state(g)
    observed = (
        while_failing["open_reservations"],  # the live run's lease: should still be 1
        after["open_reservations"],  # 0
        after["committed"].get("tokens", 0.0),  # what the two activities reported: 20
    )
    assert observed == (1, 0, 20), observed


@workflow.defn(sandboxed=False)
class StubbornChild:
    """Takes 20 s to clean up once cancelled."""

    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.wait_condition(lambda: False)
        except asyncio.CancelledError:
            await workflow.sleep(20)
        return "done"


@workflow.defn(sandboxed=False)
class BreachesWithStubbornChild:
    """Starts a child, then spends until halted."""

    @workflow.run
    async def run(self) -> None:
        await workflow.start_child_workflow(
            StubbornChild.run, id=f"{workflow.info().workflow_id}.child"
        )
        while True:
            await workflow.execute_activity(
                tracked, 100, start_to_close_timeout=timedelta(seconds=20)
            )


async def test_a_cancel_while_a_halted_run_waits_for_its_children_still_settles(governed) -> None:
    """The halt path awaits `_let_children_settle` (up to 30 s) before `release_all()`,
    unshielded: a cancel of the run meanwhile (an operator, the grandparent's parent-close
    policy) ends the run as cancelled, its breach lost, and its lease left open in the
    ledger until the TTL, then charged in full."""
    from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot

    p = policy(
        """
agents:
  BreachesWithStubbornChild: { quotas: { max_tokens_per_task: 500 }, child_allowance: 0.1 }
tenants: { acme: { quotas: { max_tokens: 100000 } } }
tools: { tracked: { estimate: { tokens: 100 } } }
"""
    )
    flows = [*WORKFLOWS, StubbornChild, BreachesWithStubbornChild]
    async with governed(p, flows, ACTIVITIES) as g:
        with attribution(tenant="acme"):
            handle = await g.start(BreachesWithStubbornChild.run)
        for _ in range(200):
            snap = BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))
            if snap.breach is not None:
                break
            await asyncio.sleep(0.05)
        assert snap.breach is not None
        await asyncio.sleep(1.0)  # the halted run waits for its child to settle
        await handle.cancel()
        try:
            await asyncio.wait_for(handle.result(), 60)
            outcome = "completed"
        except WorkflowFailureError as failure:
            details = BreachDetails.from_error(failure)
            outcome = details.limit if details else type(failure.cause).__name__
        await asyncio.sleep(0.5)
        state = await ledger_state(g)
        with contextlib.suppress(RPCError):  # closed by the parent-close policy
            await g.client.get_workflow_handle(f"{handle.id}.child").terminate()
    assert (outcome, state["open_reservations"]) == ("max_tokens_per_task", 0), (
        outcome,
        state["reserved"],
    )


async def test_a_cancel_while_the_run_reads_its_baselines_cancels_the_run(governed, env) -> None:
    """A cancellation that lands while the run waits for the ledger is a cancellation.

    The start-up read of spend baselines fails open (a ledger outage must not stop
    agents), but a cancel of the run arriving during it must not be taken for an outage
    and swallowed: the run ends cancelled, its agent code never started.
    """
    from temporalio.exceptions import CancelledError

    from workflows import Spender, Steps

    ledger_id = f"ledger-{uuid.uuid4().hex[:8]}"
    p = Policy.from_dict(
        {"agents": {"Spender": {"anomaly": {"factor": 5}}}, "shared": {"ledger_id": ledger_id}}
    )
    # a ledger nobody serves: the baselines call waits until the run is cancelled
    await env.client.start_workflow(
        "nobody-serves-this", None, id=ledger_id, task_queue=f"nobody-{uuid.uuid4()}"
    )
    try:
        async with governed(p, [*ALL_WORKFLOWS], [*ALL_ACTIVITIES]) as g:
            handle = await g.start(Spender.run, Steps(tokens=[10]))

            # its first workflow task starts the baselines call, which nothing shows
            await asyncio.sleep(1.5)
            await handle.cancel()
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(handle.result(), 30)
            events = (await handle.fetch_history()).events
    finally:
        await env.client.get_workflow_handle(ledger_id).terminate()
    assert isinstance(failure.value.cause, CancelledError), failure.value.cause
    assert not any(e.HasField("activity_task_scheduled_event_attributes") for e in events)
