"""Budgets shared across runs, kept by the ledger entity workflow (one worker process)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import yaml
from temporalio.client import WorkflowFailureError
from temporalio.service import RPCError

from conftest import eventually
from shared_workflows import IN_FLIGHT, SHARED_ACTIVITIES, SHARED_WORKFLOWS, FanOut, Paced
from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS, Spender, Steps

WORKFLOWS = [*ALL_WORKFLOWS, *SHARED_WORKFLOWS]
ACTIVITIES = [*ALL_ACTIVITIES, *SHARED_ACTIVITIES]


def policy(body: str) -> Policy:
    """The policy with a ledger of its own, so tests do not share counters."""
    data = yaml.safe_load(body)
    data.setdefault("shared", {})["ledger_id"] = f"ledger-{uuid.uuid4().hex[:8]}"
    return Policy.from_dict(data)


async def ledger_state(g, scope: str = "") -> dict:
    handle = g.client.get_workflow_handle(g.plugin.policy.shared.ledger_id)
    return await handle.query("state", scope)


def counter(state: dict, scope: str, resource: str) -> dict:
    return next(c for c in state["counters"] if c["scope"] == scope and c["resource"] == resource)


async def test_racing_runs_never_overspend_a_tenant_and_strand_nothing(governed) -> None:
    p = policy(
        """
tenants: { acme: { quotas: { max_tokens: 2000 } } }
tools: { spend: { estimate: { tokens: 100 } } }
"""
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant="acme"):
            handles = [await g.start(Spender.run, Steps(tokens=[100] * 4)) for _ in range(20)]
        outcomes = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, WorkflowFailureError)]
        assert refused, "demand (8,000) is four times the ceiling: some runs must be halted"
        for failure in refused:
            details = BreachDetails.from_error(failure)
            assert details is not None and details.scope == "tenant:acme"
            assert details.limit == "tenants.acme.quotas.max_tokens"
        spent_by_runs = 0.0
        for h in handles:
            snap = BudgetSnapshot.model_validate(await h.query(BUDGET_QUERY))
            spent_by_runs += snap.committed.get("tokens", 0.0)
        state = await ledger_state(g, "tenant:acme")
        tokens = counter(state, "tenant:acme", "tokens")
        assert tokens["committed"] <= 2000
        assert tokens["committed"] >= 1500, "leases must not let one run starve the others"
        assert tokens["committed"] == pytest.approx(spent_by_runs)
        assert tokens["reserved"] == 0 and state["open_reservations"] == 0
        for resource, granted in state["granted"].items():
            assert state["committed"].get(resource, 0) + state["released"].get(
                resource, 0
            ) == pytest.approx(granted)


async def test_one_tenant_exhausting_its_budget_changes_nothing_for_another(governed) -> None:
    p = policy(
        """
tenants:
  default: { quotas: { max_tokens: 300 } }
tools: { spend: { estimate: { tokens: 100 } } }
"""
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant="acme"), pytest.raises(WorkflowFailureError) as failure:
            await g.run(Spender.run, Steps(tokens=[100] * 5))
        assert BreachDetails.from_error(failure.value).scope == "tenant:acme"  # type: ignore[union-attr]
        with attribution(tenant="globex"):
            assert await g.run(Spender.run, Steps(tokens=[100] * 3)) == 3
        state = await ledger_state(g)
        assert counter(state, "tenant:acme", "tokens")["committed"] == 300
        assert counter(state, "tenant:globex", "tokens")["committed"] == 300


async def test_concurrency_limit_holds_slots_for_the_activity(governed) -> None:
    p = policy(
        """
tools: { tracked: { max_concurrent_requests: 3 } }
shared: { on_refusal: wait, max_wait: 20s }
"""
    )
    IN_FLIGHT.update(now=0, max=0)
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        assert await g.run(FanOut.run, 10) == 100
        state = await ledger_state(g, "tool:tracked")
    assert 1 <= IN_FLIGHT["max"] <= 3, f"max concurrent observed: {IN_FLIGHT['max']}"
    assert counter(state, "tool:tracked", "concurrency")["reserved"] == 0


async def test_windows_roll_over_and_wait_mode_waits_for_them(governed) -> None:
    p = policy(
        """
tenants: { default: { quotas: { max_tokens_per_second: 200 } } }
tools: { tracked: { estimate: { tokens: 100 } } }
shared: { on_refusal: wait, max_wait: 30s }
"""
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        handle = await g.start(Paced.run, 6)
        times = await handle.result()
        snap = BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))
    # 6 x 100 tokens at 200 per one-second window: at least 3 windows, so >= 2 s of workflow time
    assert times[-1] - times[0] >= 1.9
    per_window: dict[int, int] = {}
    for t in times:
        per_window[int(t)] = per_window.get(int(t), 0) + 100
    assert max(per_window.values()) <= 300  # a dispatch near a boundary may settle in the next
    assert snap.event_count and any(e.kind == "wait" for e in snap.recent_events)


async def test_terminate_on_shared_refusal_names_the_scope(governed) -> None:
    p = policy(
        "global: { max_tokens_per_minute: 250 }\ntools: { spend: { estimate: { tokens: 100 } } }"
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        with pytest.raises(WorkflowFailureError) as failure:
            await g.run(Spender.run, Steps(tokens=[100] * 5))
        details = BreachDetails.from_error(failure.value)
        assert details is not None
        assert (details.scope, details.limit, details.ceiling) == (
            "global",
            "global.max_tokens_per_minute",
            250,
        )
        assert details.committed == 200 and details.observed == 300


async def test_budget_query_and_cli_show_shared_scopes(governed, env) -> None:
    from click.testing import CliRunner

    from temporal_governor.cli import main as cli

    p = policy(
        """
tenants: { acme: { quotas: { max_tokens: 5000, max_tokens_per_minute: 4000 } } }
tools: { spend: { estimate: { tokens: 100 } } }
"""
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant="acme"):
            handle = await g.start(Spender.run, Steps(tokens=[70, 30]))
        assert await handle.result() == 2
        snap = BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))
        assert {limit.name for limit in snap.shared_limits} == {
            "tenants.acme.quotas.max_tokens",
            "tenants.acme.quotas.max_tokens_per_minute",
        }
        assert snap.shared_open == 0
        address = env.client.service_client.config.target_host
        args = [
            "budget",
            "--tenant",
            "acme",
            "--ledger-id",
            p.shared.ledger_id,
            "--address",
            address,
        ]
        result = await asyncio.to_thread(CliRunner().invoke, cli, [*args, "--json"])
        assert result.exit_code == 0, result.output
        counters = {
            (c["scope"], c["resource"], c["window_s"]): c
            for c in json.loads(result.output)["counters"]
        }
        assert counters[("tenant:acme", "tokens", None)]["committed"] == 100
        assert counters[("tenant:acme", "tokens", None)]["ceiling"] == 5000
        assert counters[("tenant:acme", "tokens", 60.0)]["committed"] == 100
        table = await asyncio.to_thread(CliRunner().invoke, cli, args, env={"COLUMNS": "200"})
        assert table.exit_code == 0 and "tenant:acme" in table.output and "5,000" in table.output
        other = await asyncio.to_thread(CliRunner().invoke, cli, [*args[:2], "nobody", *args[3:]])
        assert other.exit_code == 1


async def test_leases_replace_per_dispatch_round_trips(governed) -> None:
    body = """
tenants: { default: { quotas: { max_tokens: 1_000_000 } } }
tools: { spend: { estimate: { tokens: 100 } } }
"""
    calls = {}
    for leases in (True, False):
        p = policy(body + f"shared: {{ leases: {str(leases).lower()} }}\n")
        async with governed(p, WORKFLOWS, ACTIVITIES) as g:
            handle = await g.start(Spender.run, Steps(tokens=[50] * 10))
            assert await handle.result() == 10
            history = await handle.fetch_history()
            calls[leases] = sum(  # ledger calls: local-activity markers (not the patch)
                1
                for e in history.events
                if e.marker_recorded_event_attributes.marker_name == "core_local_activity"
            )
            state = await ledger_state(g)
            assert counter(state, "tenant:default", "tokens")["committed"] == 500
            assert state["open_reservations"] == 0
    # a reserve and a settle per dispatch, and a release_run at the end: a run that
    # reserved sends it even when it holds nothing (release-called)
    assert calls[False] == 21
    assert calls[True] == 2  # one lease, settled when the run ends


async def test_max_concurrent_tasks_limits_runs_at_once(governed) -> None:
    from workflows import Nap, Napper

    p = policy(
        """
tenants: { acme: { quotas: { max_concurrent_tasks: 2 } } }
shared: { on_refusal: wait, max_wait: 30s }
"""
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant="acme"):
            handles = [await g.start(Napper.run, Nap(seconds=0.5)) for _ in range(5)]
        seen = 0.0
        done = asyncio.gather(*(h.result() for h in handles))
        while not done.done():
            try:
                state = await ledger_state(g, "tenant:acme")
            except RPCError:  # the first run has not started the ledger yet
                state = {"counters": []}
            slots = [c for c in state["counters"] if c["resource"] == "concurrency"]
            if slots:
                seen = max(seen, slots[0]["reserved"])
            await asyncio.sleep(0.05)
        assert await done == ["awake"] * 5
        state = await ledger_state(g, "tenant:acme")
    assert seen == 2, f"most runs holding a slot at once: {seen}"
    assert counter(state, "tenant:acme", "concurrency")["reserved"] == 0


async def test_ledger_continues_as_new_with_its_state(governed) -> None:
    p = policy(
        """
tenants: { default: { quotas: { max_tokens: 100_000 } } }
tools: { spend: { estimate: { tokens: 100 } } }
shared: { leases: false, continue_as_new_after: 6 }
"""
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        first = await g.run(Spender.run, Steps(tokens=[10] * 4))  # 8 updates: continues as new
        assert first == 4
        before = await ledger_state(g)
        assert await g.run(Spender.run, Steps(tokens=[10] * 4)) == 4
        after = await ledger_state(g)
        history_runs = [
            wf async for wf in g.client.list_workflows(f'WorkflowId = "{p.shared.ledger_id}"')
        ]
    assert len(history_runs) >= 2, "the ledger should have continued as new"
    assert before["run_id"] != after["run_id"]
    assert counter(after, "tenant:default", "tokens")["committed"] == 80
    assert after["open_reservations"] == 0


async def test_unsettled_reservations_expire_charged_in_full_and_a_late_settle_corrects(
    governed, env
) -> None:
    from temporal_governor.core.scopes import shared_limits
    from temporal_governor.ledger import LEDGER_WORKFLOW

    p = policy("tenants: { default: { quotas: { max_tokens: 1000 } } }")
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        limits = shared_limits(p, tenant="t", owner=None, agent="a", tool="x")
        handle = await g.client.start_workflow(
            LEDGER_WORKFLOW, {}, id=p.shared.ledger_id, task_queue=g.task_queue
        )
        request = {
            "key": "dead-run/activity:1",
            "run": "dead-run",
            "amounts": {"tokens": 400},
            "limits": [limit.model_dump(mode="json") for limit in limits],
            "ttl_s": 1.0,
        }
        assert (await handle.execute_update("reserve", request))["granted"]
        assert counter(await handle.query("state", ""), "tenant:t", "tokens")["reserved"] == 400
        await asyncio.sleep(2.0)  # the ledger's own timer expires the reservation
        expired = await handle.query("state", "")
        late = await handle.execute_update(
            "settle", {"key": "dead-run/activity:1", "actual": {"tokens": 150}}
        )
        again = await handle.execute_update(
            "settle", {"key": "dead-run/activity:1", "actual": {"tokens": 150}}
        )
        corrected = await handle.query("state", "")
    # the run never settled it: what it spent is unknown, so all of it is charged
    tokens = counter(expired, "tenant:t", "tokens")
    assert (tokens["reserved"], tokens["committed"]) == (0, 400)
    assert expired["open_reservations"] == 0
    assert expired["committed"]["tokens"] == expired["granted"]["tokens"] == 400
    # a run that comes back and settles late is charged what it really used, once
    assert late["settled"] and late["late"] and not again["settled"]
    tokens = counter(corrected, "tenant:t", "tokens")
    assert (tokens["reserved"], tokens["committed"]) == (0, 150)
    assert corrected["committed"]["tokens"] == 150
    assert corrected["committed"]["tokens"] + corrected["released"]["tokens"] == 400


async def exact(g, scope: str, reported: float) -> None:
    """The exactness invariant: the ledger committed what activities reported, nothing open."""

    async def settled() -> bool:
        state = await ledger_state(g)
        return state["open_reservations"] == 0 and not any(state["reserved"].values())

    await eventually(settled)
    state = await ledger_state(g)
    assert counter(state, scope, "tokens")["committed"] == pytest.approx(reported)
    assert state["committed"].get("tokens", 0.0) == pytest.approx(reported)
    for resource, granted in state["granted"].items():
        accounted = state["committed"].get(resource, 0.0) + state["released"].get(resource, 0.0)
        assert accounted == pytest.approx(granted)


async def test_parallel_activities_share_a_lease_and_the_tenant_commits_all_they_used(
    governed,
) -> None:
    p = policy(
        """
tenants: { acme: { quotas: { max_tokens: 1000 } } }
tools: { tracked: { estimate: { tokens: 10 } } }
"""
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant="acme"):
            handles = [await g.start(FanOut.run, 8) for _ in range(3)]
            results = await asyncio.gather(*(h.result() for h in handles))
        assert results == [80, 80, 80]
        await exact(g, "tenant:acme", 240)


async def test_parallel_activities_past_the_tenant_ceiling_are_halted_and_counted(
    governed,
) -> None:
    p = policy(
        """
tenants: { acme: { quotas: { max_tokens: 100 } } }
tools: { tracked: { estimate: { tokens: 10 } } }
"""
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant="acme"):
            handles = [await g.start(FanOut.run, 8) for _ in range(3)]
            outcomes = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
        halted = [o for o in outcomes if isinstance(o, WorkflowFailureError)]
        assert halted, "24 x 10 tokens under a 100-token ceiling: runs must be halted"
        spent = 0.0
        for h in handles:
            snap = BudgetSnapshot.model_validate(await h.query(BUDGET_QUERY))
            spent += snap.committed.get("tokens", 0.0)
        assert spent <= 100
        await exact(g, "tenant:acme", spent)


async def test_a_cancelled_run_cancels_its_agent_code_and_settles_every_lease(governed) -> None:
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import WorkflowExecutionStatus

    from shared_workflows import STARTED, CancellableFanOut

    p = policy(
        """
tenants: { acme: { quotas: { max_tokens: 100000 } } }
tools: { spend_then_wait: { estimate: { tokens: 100 } } }
"""
    )
    before = dict(STARTED)
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant="acme"):
            handle = await g.start(CancellableFanOut.run, 6)

        async def all_started() -> bool:
            return STARTED["spend_then_wait"] - before["spend_then_wait"] >= 6

        await eventually(all_started)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
        events = [e.event_type async for e in handle.fetch_history_events()]
        assert events.count(EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED) == 6
        assert STARTED["cleanup"] == before["cleanup"] + 1  # the agent's `finally` ran
        # each cancelled activity reported 100 before it was cut off; unknown to the
        # workflow, each is charged its reservation (100): exact here by construction
        await exact(g, "tenant:acme", 600)


async def test_a_ledger_that_cannot_go_on_stops_runs_at_once_with_a_clear_error(
    governed, env
) -> None:
    from temporalio.worker import Worker

    from shared_workflows import Wedged
    from temporal_governor import GovernanceKilled  # noqa: F401  (the failure type's name)

    p = policy("tenants: { acme: { quotas: { max_tokens: 1000 } } }")
    wedged_queue = f"wedged-{uuid.uuid4()}"
    async with Worker(env.client, task_queue=wedged_queue, workflows=[Wedged]):
        await env.client.start_workflow(
            "wedged-ledger-stand-in", None, id=p.shared.ledger_id, task_queue=wedged_queue
        )
        async with governed(p, WORKFLOWS, ACTIVITIES) as g:
            with attribution(tenant="acme"), pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(g.run(Spender.run, Steps(tokens=[10])), 60)
        await env.client.get_workflow_handle(p.shared.ledger_id).terminate()
    details = BreachDetails.from_error(failure.value)
    assert details is not None, (
        failure.value.cause.type,
        failure.value.cause.details,
        failure.value.cause.cause,
    )
    assert details.limit == "shared.ledger_unavailable"
    assert p.shared.ledger_id in details.scope
    assert "cannot make progress" in failure.value.cause.message


async def test_the_ledger_continues_as_new_with_a_thousand_tenants_and_loses_nothing(
    governed,
) -> None:
    """2,000 updates over 1,000 tenants through a ledger that continues as new every 150."""
    from temporal_governor.core.scopes import shared_limits
    from temporal_governor.ledger import LEDGER_WORKFLOW

    p = policy(
        "tenants: { default: { quotas: { max_tokens: 1000, max_tokens_per_hour: 900 } } }\n"
        "shared: { continue_as_new_after: 150 }\n"
    )
    async with governed(p, WORKFLOWS, ACTIVITIES) as g:
        handle = await g.client.start_workflow(
            LEDGER_WORKFLOW,
            {"continue_as_new_after": 150},
            id=p.shared.ledger_id,
            task_queue=g.task_queue,
        )
        first_run = (await handle.describe()).run_id
        gate = asyncio.Semaphore(8)

        async def spend(tenant: int) -> None:
            limits = shared_limits(p, tenant=f"t{tenant:04d}", owner=None, agent="a", tool="x")
            key = f"run-{tenant}/activity:1"
            request = {
                "key": key,
                "run": f"run-{tenant}",
                "amounts": {"tokens": 100},
                "limits": [limit.model_dump(mode="json") for limit in limits],
            }
            async with gate:
                assert (await handle.execute_update("reserve", request))["granted"]
                settle = {"key": key, "actual": {"tokens": 60 + tenant % 7}}
                assert (await handle.execute_update("settle", settle))["settled"]

        await asyncio.gather(*(spend(t) for t in range(1000)))
        state = await handle.query("state", "")
        latest = (await handle.describe()).run_id
    assert latest != first_run  # it continued as new (more than ten times)
    expected = sum(60 + t % 7 for t in range(1000))
    assert state["committed"]["tokens"] == pytest.approx(expected)
    assert state["open_reservations"] == 0
    assert counter(state, "tenant:t0007", "tokens")["committed"] == 60
    totals = [c for c in state["counters"] if c["resource"] == "tokens" and c["window_s"] is None]
    assert len(totals) == 1000


async def test_a_ledger_too_slow_to_answer_stops_runs_with_replayable_histories(
    governed, env
) -> None:
    """Ledger calls that run out of time leave histories that replay.

    A ledger nobody serves answers no update; with one update in flight per process, three
    runs queue behind each other until the call's deadline ends them. (A local activity's start-to-close expiry made such histories
    non-replayable: "Missing associated machine for LocalActivity".)
    """
    from temporalio.worker import Replayer

    from temporal_governor import GovernorPlugin

    p = policy(
        """
        tenants: { acme: { quotas: { max_tokens: 1000 } } }
        shared: { max_in_flight_updates: 1, call_timeout: 4s }
        """
    )
    await env.client.start_workflow(
        "nobody-serves-this", None, id=p.shared.ledger_id, task_queue=f"nobody-{uuid.uuid4()}"
    )
    try:
        async with governed(p, WORKFLOWS, ACTIVITIES) as g:
            with attribution(tenant="acme"):
                handles = [
                    await g.client.start_workflow(
                        Spender.run,
                        Steps(tokens=[10]),
                        id=f"slow-ledger-{i}-{uuid.uuid4().hex[:6]}",
                        task_queue=g.task_queue,
                    )
                    for i in range(3)
                ]
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in handles), return_exceptions=True), 90
            )
    finally:
        await env.client.get_workflow_handle(p.shared.ledger_id).terminate()
    for outcome in outcomes:
        assert isinstance(outcome, WorkflowFailureError), outcome
        details = BreachDetails.from_error(outcome)
        assert details is not None and details.limit == "shared.ledger_unavailable"
    replayer = Replayer(workflows=WORKFLOWS, plugins=[GovernorPlugin(p)])
    for handle in handles:
        result = await replayer.replay_workflow(
            await handle.fetch_history(), raise_on_replay_failure=False
        )
        assert result.replay_failure is None, (handle.id, result.replay_failure)


async def test_the_ledger_starts_on_the_task_queue_the_policy_names(governed, env) -> None:
    """``shared.task_queue``: the ledger lives on the queue named, not on the caller's."""
    from temporalio.client import Client
    from temporalio.worker import Worker

    from temporal_governor import GovernorPlugin

    ledger_queue = f"ledger-queue-{uuid.uuid4()}"
    p = policy(
        f"""
        tenants: {{ acme: {{ quotas: {{ max_tokens: 1000 }} }} }}
        shared: {{ task_queue: {ledger_queue} }}
        """
    )
    ledger_host = Client(
        env.client.service_client, namespace=env.client.namespace, plugins=[GovernorPlugin(p)]
    )
    async with Worker(ledger_host, task_queue=ledger_queue):
        async with governed(p, WORKFLOWS, ACTIVITIES) as g:
            with attribution(tenant="acme"):
                assert await g.run(Spender.run, Steps(tokens=[100, 50])) == 2
            described = await g.client.get_workflow_handle(p.shared.ledger_id).describe()
            assert described.task_queue == ledger_queue != g.task_queue
            await exact(g, "tenant:acme", 150)
        await env.client.get_workflow_handle(p.shared.ledger_id).terminate()
