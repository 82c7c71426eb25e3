"""The control plane on a real dev server: kill, resume, backpressure, override, authorisation."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from conftest import CONTROL_KEY_ID, CONTROL_SECRET, eventually
from control_workflows import (
    CONTROL_ACTIVITIES,
    CONTROL_WORKFLOWS,
    Branch,
    Canceller,
    Fanner,
    Hopper,
    Hops,
    Loop,
    Looper,
    Relay,
)
from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.control import (
    CONTROL_QUERY,
    ControlClient,
    ControlTarget,
    Keyring,
    OverrideMessage,
    ResumeMessage,
)
from temporal_governor.core.shards import ShardMap, shard_of
from temporal_governor.errors import GOVERNANCE_KILLED
from temporal_governor.workflow import BUDGET_QUERY

POLICY = Policy.from_dict(
    {
        "agents": {"Looper": {"quotas": {"max_tokens_per_task": 10_000}}},
        "tools": {"step": {"estimate": {"tokens": 50}}},
    }
)


def controller(g: Any, policy: Policy = POLICY, **kw: Any) -> ControlClient:
    return ControlClient(g.client, policy, issuer="oncall@test", **kw)


async def state_of(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    return await handle.query(CONTROL_QUERY)  # type: ignore[no-any-return]


async def is_paused(handle: WorkflowHandle[Any, Any]) -> bool:
    try:
        return (await state_of(handle))["state"] == "paused"
    except Exception:
        return False  # not started yet


async def events(handle: WorkflowHandle[Any, Any]) -> list[Any]:
    return [e async for e in handle.fetch_history_events()]


def signalled_at(history: list[Any], signal: str) -> list[int]:
    return [
        e.event_id
        for e in history
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        and e.workflow_execution_signaled_event_attributes.signal_name == signal
    ]


def scheduled(history: list[Any]) -> list[Any]:
    return [e for e in history if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_pause_then_authorised_resume_completes_with_correct_spend(governed) -> None:
    async with governed(POLICY, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Looper.run, Loop(steps=6, tokens=10, seconds=0.3))
        await eventually(lambda: _committed(handle, "tool_calls", at_least=1))
        sent = time.monotonic()
        outcome = await controller(g).kill(ControlTarget.run(handle.id), reason="investigating")
        assert outcome.signalled == [handle.id]
        await eventually(lambda: is_paused(handle))
        latency = time.monotonic() - sent
        status = await state_of(handle)
        assert status["paused_by"] == "oncall@test" and status["pause_reason"] == "investigating"
        before = len(scheduled(await events(handle)))
        await asyncio.sleep(1.0)
        assert len(scheduled(await events(handle))) == before, "dispatched while paused"

        await controller(g).resume(ControlTarget.run(handle.id), reason="false alarm")
        assert await handle.result() == 60

        history = await events(handle)
        [kill_at] = signalled_at(history, "governor.kill")
        [resume_at] = signalled_at(history, "governor.resume")
        assert not [e for e in scheduled(history) if kill_at < e.event_id < resume_at]
        status = await state_of(handle)
        kill, resume = status["audit"]
        assert kill["accepted"] and kill["outcome"].startswith("paused")
        assert resume["accepted"] and resume["outcome"] == "resumed"
        assert resume["issuer"] == "oncall@test" and resume["reason"] == "false alarm"
        assert resume["key_id"] == CONTROL_KEY_ID
        cancelled = int(kill["outcome"].split("; ")[1].split()[0])
        assert cancelled in (0, 1)
        budget = await handle.query(BUDGET_QUERY)
        # a cancelled attempt is charged its reservation (50 tokens, 1 call); it ran again
        assert budget["committed"]["tokens"] == 60 + 50 * cancelled
        assert budget["committed"]["tool_calls"] == 6 + cancelled
        print(f"kill to paused, client-observed: {latency * 1000:.0f} ms; cancelled {cancelled}")


async def _committed(handle: WorkflowHandle[Any, Any], resource: str, at_least: float) -> bool:
    try:
        budget = await handle.query(BUDGET_QUERY)
    except Exception:
        return False
    return bool(budget["committed"].get(resource, 0) >= at_least)


async def test_kill_terminate_fails_the_run_with_governance_killed(governed) -> None:
    async with governed(POLICY, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Looper.run, Loop(steps=50, seconds=0.1))
        await eventually(lambda: _committed(handle, "tool_calls", at_least=1))
        await controller(g).kill(
            ControlTarget.run(handle.id), mode="terminate", reason="runaway spend"
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        cause = failure.value.cause
        assert isinstance(cause, ApplicationError)
        assert cause.type == GOVERNANCE_KILLED and cause.non_retryable
        details = BreachDetails.from_error(failure.value)
        assert details is not None
        assert details.killed_by == "oncall@test" and details.kill_reason == "runaway spend"
        assert "killed by oncall@test: runaway spend" in str(cause)
        status = await state_of(handle)
        assert status["state"] == "killed"


async def test_unauthorised_stale_replayed_and_malformed_messages_change_nothing(governed) -> None:
    async with governed(POLICY, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Looper.run, Loop(steps=3, seconds=0.2))
        await controller(g).kill(ControlTarget.run(handle.id), reason="hold")
        await eventually(lambda: is_paused(handle))

        def resume(**kw: Any) -> ResumeMessage:
            fields: dict[str, Any] = {
                "issuer": "mallory",
                "workflow_id": handle.id,
                "issued_at_ms": now_ms(),
                "nonce": uuid.uuid4().hex,
            }
            return ResumeMessage(**{**fields, **kw})

        right = Keyring({CONTROL_KEY_ID: CONTROL_SECRET.encode()})
        override = right.sign(
            OverrideMessage(
                issuer="ops",
                workflow_id=handle.id,
                issued_at_ms=now_ms(),
                nonce=uuid.uuid4().hex,
                limit="max_tokens_per_task",
                value=9_000,
            )
        )
        attempts: list[tuple[str, Any, str]] = [
            ("governor.resume", resume().model_dump(mode="json"), "unsigned resume"),
            (
                "governor.resume",
                Keyring({CONTROL_KEY_ID: b"guessed"}).sign(resume()).model_dump(mode="json"),
                "bad signature",
            ),
            (
                "governor.resume",
                Keyring({"other": b"x"}).sign(resume()).model_dump(mode="json"),
                "unknown key id",
            ),
            (
                "governor.resume",
                right.sign(resume(issued_at_ms=now_ms() - 3_600_000)).model_dump(mode="json"),
                "stale",
            ),
            ("governor.resume", {"issuer": "mallory"}, "malformed"),
            ("governor.override", "raise it please", "malformed"),
            ("governor.override", override.model_dump(mode="json"), ""),
            ("governor.override", override.model_dump(mode="json"), "replayed nonce"),
            (
                "governor.resume",
                right.sign(resume(workflow_id="someone-else")).model_dump(mode="json"),
                "misdirected",
            ),
        ]
        for signal, payload, _ in attempts:
            await handle.signal(signal, payload)
        await eventually(lambda: _audit_size(handle, len(attempts) + 1))
        status = await state_of(handle)
        assert status["state"] == "paused", "a rejected resume resumed the run"
        records = status["audit"][1:]
        for record, (signal, _, why) in zip(records, attempts, strict=True):
            assert record["signal"] == signal
            if why:
                assert not record["accepted"] and why in record["outcome"], record
            else:
                assert record["accepted"], record
        assert status["rejected"] == len(attempts) - 1
        assert [o["value"] for o in status["overrides"]] == [9_000]
        budget = await handle.query(BUDGET_QUERY)
        rejected_events = [e for e in budget["recent_events"] if e["kind"] == "control_rejected"]
        assert len(rejected_events) == len(attempts) - 1

        await controller(g).resume(ControlTarget.run(handle.id))
        assert await handle.result() == 30  # the workflow went on


async def _audit_size(handle: WorkflowHandle[Any, Any], size: int) -> bool:
    return len((await state_of(handle))["audit"]) >= size


async def test_tree_pause_reaches_grandchildren_and_tree_resume_releases_them(governed) -> None:
    async with governed(POLICY, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        root = f"tree-{uuid.uuid4().hex[:8]}"
        handle = await g.start(
            "Brancher", Branch(levels=3, loop=Loop(steps=4, seconds=0.3)), id=root
        )
        runs = [
            root,
            f"{root}.c",
            f"{root}.c.c",
            f"{root}.loop",
            f"{root}.c.loop",
            f"{root}.c.c.loop",
        ]
        handles = [g.client.get_workflow_handle(w) for w in runs]
        await eventually(lambda: _committed(handles[-1], "tool_calls", at_least=1))
        await controller(g).kill(ControlTarget.tree(root), reason="tree hold")
        for each in handles:
            await eventually(lambda each=each: is_paused(each))
        grandchild = await state_of(handles[-1])
        assert grandchild["paused_by"] == "oncall@test"
        assert grandchild["audit"][0]["relay"] == "down"
        await controller(g).resume(ControlTarget.tree(root), reason="carry on")
        result = await handle.result()
        assert result["own"] == 40 and result["below"]["below"]["own"] == 40
        for each in handles:
            assert (await state_of(each))["state"] == "running"


TENANT_POLICY_DATA: dict[str, Any] = {
    "agents": {"Looper": {"quotas": {"max_tokens_per_task": 10_000}}},
    "visibility": {"search_attributes": True},
}


@pytest.mark.parametrize("shards", [1, 4])
async def test_tenant_kill_stops_running_and_later_runs_of_that_tenant_only(
    governed, shards: int
) -> None:
    ledger = f"ledger-{uuid.uuid4().hex[:8]}"
    policy = Policy.from_dict(
        {**TENANT_POLICY_DATA, "shared": {"ledger_id": ledger, "shards": shards}}
    )
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        tenant = f"acme-{uuid.uuid4().hex[:6]}"
        with attribution(tenant=tenant):
            doomed = [await g.start(Looper.run, Loop(steps=100, seconds=0.1)) for _ in range(2)]
        with attribution(tenant="globex"):
            spared = await g.start(Looper.run, Loop(steps=5, seconds=0.1))

        async def listed() -> bool:
            query = f'GovernorTenant = "{tenant}" AND ExecutionStatus = "Running"'
            return len([w async for w in g.client.list_workflows(query)]) == 2

        await eventually(listed)
        control = controller(g, policy, ledger_task_queue=g.task_queue)
        outcome = await control.kill(ControlTarget.tenant(tenant), mode="terminate", reason="fraud")
        assert outcome.stored and sorted(outcome.signalled) == sorted(h.id for h in doomed)
        # the kill is kept by the ledger of the tenant's scopes (its shard when sharded)
        keeper = ShardMap(ledger, shards).ledger_of_tenant(tenant)
        assert keeper == (ledger if shards == 1 else f"{ledger}-shard-{shard_of(tenant, 4)}-of-4")
        kept = await g.client.get_workflow_handle(keeper).query("controls", [f"tenant:{tenant}"])
        assert "governor.kill" in kept[f"tenant:{tenant}"]
        for handle in doomed:
            with pytest.raises(WorkflowFailureError) as failure:
                await handle.result()
            assert failure.value.cause.type == GOVERNANCE_KILLED  # type: ignore[union-attr]
        assert await spared.result() == 50

        with attribution(tenant=tenant):
            late = await g.start(Looper.run, Loop(steps=3))
        with pytest.raises(WorkflowFailureError) as failure:
            await late.result()
        details = BreachDetails.from_error(failure.value)
        assert details is not None and details.scope == f"tenant {tenant}"
        assert not scheduled(await events(late)), "a killed tenant's new run dispatched"
        with attribution(tenant="globex"):
            assert await g.run(Looper.run, Loop(steps=2)) == 20

        await control.resume(ControlTarget.tenant(tenant), reason="cleared")
        with attribution(tenant=tenant):
            assert await g.run(Looper.run, Loop(steps=2)) == 20


HARD = {
    "agents": {"Looper": {"quotas": {"max_tokens_per_task": {"limit": 100, "hard_ceiling": 150}}}},
    "tools": {"step": {"estimate": {"tokens": 30}}},
}


@pytest.mark.parametrize(("mode", "ceiling"), [("reject", 100), ("clamp", 150)])
async def test_override_never_lifts_the_hard_ceiling(governed, mode: str, ceiling: int) -> None:
    policy = Policy.from_dict({**HARD, "control": {"above_ceiling": mode}})
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Looper.run, Loop(steps=10, tokens=30, seconds=0.3))
        await controller(g, policy).override(
            ControlTarget.run(handle.id),
            limit="max_tokens_per_task",
            value=1_000_000,
            reason="the customer said it is fine",
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        details = BreachDetails.from_error(failure.value)
        assert details is not None
        assert details.limit == "max_tokens_per_task" and details.ceiling == ceiling
        assert details.committed == ceiling // 30 * 30
        [record] = (await state_of(handle))["audit"]
        assert record["signal"] == "governor.override"
        assert record["reason"] == "the customer said it is fine"
        if mode == "reject":
            assert not record["accepted"] and "above the hard ceiling 150" in record["outcome"]
        else:
            assert record["accepted"] and "clamped" in record["outcome"]
            assert record["before"]["ceiling"] == 100 and record["after"]["ceiling"] == 150


async def test_override_expires_and_restores_the_limit(governed) -> None:
    policy = Policy.from_dict(HARD)
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Looper.run, Loop(steps=10, tokens=30, seconds=0.3))
        await controller(g, policy).override(
            ControlTarget.run(handle.id), limit="max_tokens_per_task", value=150, duration_s=0.5
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        details = BreachDetails.from_error(failure.value)
        assert details is not None and details.ceiling == 100
        assert (await state_of(handle))["overrides"] == []


async def test_backpressure_spaces_dispatches_in_workflow_time_and_reaches_the_parent(
    governed,
) -> None:
    async with governed(POLICY, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        parent = await g.start(Relay.run, Loop(steps=8, backpressure_at=2))
        result = await parent.result()
        assert result["tokens"] == 80 and result["source"] == "provider-x"
        child = g.client.get_workflow_handle(f"{parent.id}.child")
        child_events = await events(child)
        times = [e.event_time.ToDatetime() for e in scheduled(child_events)]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        after = gaps[2:]
        # before the backpressure no dispatch waits on a timer (judged from history: a
        # wall-clock bound is stretched by a loaded machine) ...
        timers_before = [
            e for e in child_events if e.event_id < scheduled(child_events)[2].event_id
        ]
        assert not [e for e in timers_before if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
        assert min(after) >= 0.45, gaps  # retry_after_ms=500, measured in workflow time
        child_status = await state_of(child)
        assert child_status["backpressure"]["source"] == "provider-x"
        parent_status = await state_of(parent)
        [record] = parent_status["audit"]
        assert record["accepted"] and record["relay"] == "up"
        assert parent_status["backpressure"]["retry_after_ms"] == 500


def most_at_once(history: list[Any]) -> int:
    """The most activities running at the same time, from their started/closed events."""
    started = {
        e.event_id: e.event_time.ToDatetime()
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    }
    spans = []
    for e in history:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attributes = e.activity_task_completed_event_attributes
            spans.append((started[attributes.started_event_id], e.event_time.ToDatetime()))
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("cap", [None, 2])
async def test_backpressure_caps_dispatches_in_flight(governed, cap: int | None) -> None:
    async with governed(POLICY, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Fanner.run, Loop(steps=6, seconds=0.4))
        if cap is not None:
            await controller(g).backpressure(
                ControlTarget.run(handle.id), max_concurrency=cap, duration_ms=30_000
            )
            await eventually(lambda: _audit_size(handle, 1))
        await handle.signal(Fanner.start_now)
        assert await handle.result() == 60
        peak = most_at_once(await events(handle))
        assert peak == (cap or 6), peak


async def test_a_tree_override_reaches_every_run_of_the_tree(governed) -> None:
    policy = Policy.from_dict({**HARD, "control": {"above_ceiling": "clamp"}})
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        root = f"tree-{uuid.uuid4().hex[:8]}"
        handle = await g.start(
            "Brancher", Branch(levels=2, loop=Loop(steps=10, tokens=30, seconds=0.3)), id=root
        )
        looper = g.client.get_workflow_handle(f"{root}.c.loop")
        await eventually(lambda: _committed(looper, "tool_calls", at_least=1))
        await controller(g, policy).override(
            ControlTarget.tree(root), limit="max_tokens_per_task", value=150
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        for loop_id in (f"{root}.loop", f"{root}.c.loop"):
            status = await state_of(g.client.get_workflow_handle(loop_id))
            assert [o["value"] for o in status["overrides"]] == [150], status
        with pytest.raises(WorkflowFailureError) as failure:
            await g.client.get_workflow_handle(f"{root}.loop").result()
        details = BreachDetails.from_error(failure.value)
        assert details is not None and details.ceiling == 150
        # the Brancher runs have no such quota of their own: they record why they did not apply it
        [record] = (await state_of(handle))["audit"]
        assert not record["accepted"] and "is not set for agent Brancher" in record["outcome"]


@pytest.mark.parametrize(
    ("limit", "shards"),
    [("tenant", 1), ("tenant", 4), ("global", 4)],
    ids=["one-ledger", "tenant-shard", "root-only"],
)
async def test_a_tenant_kill_reaches_running_runs_through_the_ledger_without_visibility(
    governed, limit: str, shards: int
) -> None:
    tenant = f"initech-{uuid.uuid4().hex[:6]}"
    limits: dict[str, Any] = (
        {"tenants": {tenant: {"quotas": {"max_tokens": 1_000_000}}}}
        if limit == "tenant"  # the run reserves on its tenant's ledger (shard) only
        else {"global": {"max_tool_calls_per_minute": 1_000_000}}  # on the root only
    )
    ledger = f"ledger-{uuid.uuid4().hex[:8]}"
    policy = Policy.from_dict(
        {**limits, "shared": {"ledger_id": ledger, "leases": False, "shards": shards}}
    )
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        with attribution(tenant=tenant):
            handle = await g.start(Looper.run, Loop(steps=100, seconds=0.1))
        await eventually(lambda: _committed(handle, "tool_calls", at_least=1))
        control = controller(g, policy, ledger_task_queue=g.task_queue)
        outcome = await control.kill(ControlTarget.tenant(tenant), mode="terminate", reason="x")
        assert outcome.stored and outcome.signalled == [] and outcome.warnings
        kind_and_details = await _killed(handle)
        assert kind_and_details.scope == f"tenant {tenant}"
        assert len(scheduled(await events(handle))) < 100
        # where the run reserved: its tenant's shard, or only the root (the shard of a run
        # with no tenant limit never started)
        ledgers = ShardMap(ledger, shards)
        reserved_on = ledgers.root if limit == "global" else ledgers.ledger_of_tenant(tenant)
        state = await g.client.get_workflow_handle(reserved_on).query("state", "")
        assert state["granted"], f"the run reserved nothing on {reserved_on}"


async def _killed(handle: WorkflowHandle[Any, Any]) -> BreachDetails:
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert failure.value.cause.type == GOVERNANCE_KILLED  # type: ignore[union-attr]
    details = BreachDetails.from_error(failure.value)
    assert details is not None
    return details


async def test_a_paused_run_shows_as_paused_in_visibility(governed) -> None:
    policy = Policy.from_dict({**TENANT_POLICY_DATA})
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Looper.run, Loop(steps=3, seconds=0.2))
        await controller(g, policy).kill(ControlTarget.run(handle.id), reason="look")

        async def listed_as(state: str) -> bool:
            query = f'WorkflowId = "{handle.id}" AND GovernorState = "{state}"'
            return len([w async for w in g.client.list_workflows(query)]) == 1

        await eventually(lambda: listed_as("paused"))
        await controller(g, policy).resume(ControlTarget.run(handle.id))
        assert await handle.result() == 30
        await eventually(lambda: listed_as("completed"))


@pytest.mark.parametrize("shards", [1, 4])
async def test_fleet_kill_then_resume_lets_new_runs_go_and_a_newer_agent_pause_holds(
    governed, shards: int
) -> None:
    tenant = f"umbrella-{uuid.uuid4().hex[:6]}"
    policy = Policy.from_dict(
        {
            "tenants": {tenant: {"quotas": {"max_tokens": 1_000_000}}},
            "shared": {"ledger_id": f"ledger-{uuid.uuid4().hex[:8]}", "shards": shards},
        }
    )
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        control = controller(g, policy, ledger_task_queue=g.task_queue)
        await control.kill(ControlTarget.tenant(tenant), reason="hold")
        await control.resume(ControlTarget.tenant(tenant), reason="cleared")
        with attribution(tenant=tenant):
            # the header and the first reservation both carry the old kill and its resume
            assert await g.run(Looper.run, Loop(steps=3)) == 30
        await control.kill(ControlTarget.agent("Looper"), reason="bad prompt release")
        with attribution(tenant=tenant):
            held = await g.start(Looper.run, Loop(steps=2))
        await eventually(lambda: is_paused(held))  # the tenant's older resume does not lift it
        assert (await state_of(held))["paused_by"] == "oncall@test"
        await control.resume(ControlTarget.agent("Looper"), reason="fixed")
        assert await held.result() == 20


async def test_a_pause_survives_continue_as_new(governed) -> None:
    async with governed(POLICY, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Hopper.run, Hops(runs_left=2, nap=1.0))
        first_run = (await handle.describe()).run_id
        await eventually(lambda: _committed(handle, "tool_calls", at_least=1))
        await controller(g).kill(ControlTarget.run(handle.id), reason="hold over the hop")

        async def hopped_and_paused() -> bool:
            latest = g.client.get_workflow_handle(handle.id)
            if (await latest.describe()).run_id == first_run:
                return False
            return await is_paused(latest)

        await eventually(hopped_and_paused)
        latest = g.client.get_workflow_handle(handle.id)
        assert (await state_of(latest))["audit"][0][
            "outcome"
        ] == "still paused after continue-as-new"
        await controller(g).resume(ControlTarget.run(handle.id))
        assert await latest.result() == 10


async def test_a_dispatch_cancelled_before_it_ran_releases_its_reservation(governed) -> None:
    async with governed(POLICY, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Canceller.run)
        assert await handle.result() == 10
        budget = await handle.query(BUDGET_QUERY)
        assert budget["reserved"] == {} and budget["in_flight"] == 0
        assert budget["committed"]["tool_calls"] == 2


async def test_a_run_resting_in_a_fleet_pause_finds_the_fleet_resume_in_the_ledger(
    governed,
) -> None:
    tenant = f"hooli-{uuid.uuid4().hex[:6]}"
    policy = Policy.from_dict(
        {
            "shared": {"ledger_id": f"ledger-{uuid.uuid4().hex[:8]}"},
            "control": {"fleet_poll_interval": "1s"},
        }
    )
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        control = controller(g, policy, ledger_task_queue=g.task_queue)
        await control.kill(ControlTarget.tenant(tenant), reason="hold")
        with attribution(tenant=tenant):
            held = await g.start(Looper.run, Loop(steps=2))
        await eventually(lambda: is_paused(held))
        outcome = await control.resume(ControlTarget.tenant(tenant), reason="go")
        assert outcome.signalled == []  # no visibility: only the ledger can tell it
        assert await held.result() == 20
        [kill, resume] = [r for r in (await state_of(held))["audit"] if r["accepted"]]
        assert kill["outcome"].startswith("paused") and resume["outcome"] == "resumed"
