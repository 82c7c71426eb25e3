"""A burst of governed starts reads the ledger's stored kills once, not once per start.

Before each start a governed client reads the stored kills and resumes of the run's
tenant and workflow type (``control.check_kills_at_start``) into the start header. Starts
that ask the same ledger for the same scopes while a lookup is in flight share it: the
kill still reaches every one of them, with one query per ledger.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    QueryWorkflowInput,
    WorkflowHandle,
)

from conftest import eventually
from control_workflows import CONTROL_ACTIVITIES, CONTROL_WORKFLOWS, Loop, Looper
from temporal_governor import Policy, attribution
from temporal_governor.control import ControlTarget
from temporal_governor.interceptors import GovernanceInterceptor
from temporal_governor.plugin import governed_data_converter
from test_control import controller, is_paused

STARTS = 12


class CountingQueries(Interceptor):
    """Counts the ``controls`` queries that reach the server, per ledger."""

    def __init__(self) -> None:
        self.controls: dict[str, int] = {}
        self.go = asyncio.Event()
        """The queries wait for it (set: they go at once)."""
        self.go.set()

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        counts, go = self.controls, self.go

        class Outbound(OutboundInterceptor):
            async def query_workflow(self, input: QueryWorkflowInput) -> Any:
                if input.query == "controls":
                    counts[input.id] = counts.get(input.id, 0) + 1
                    await go.wait()
                return await super().query_workflow(input)

        return Outbound(next)

    async def sent(self, queries: int) -> bool:
        """Whether at least ``queries`` ``controls`` queries reached this interceptor."""
        return sum(self.controls.values()) >= queries


def counting_client(g: Any, policy: Policy) -> tuple[Client, CountingQueries]:
    """A governed client (the governor's interceptor by hand) whose queries are counted."""
    counting = CountingQueries()
    client = Client(
        g.client.service_client,
        namespace=g.client.namespace,
        interceptors=[GovernanceInterceptor(policy), counting],
        data_converter=governed_data_converter(),
    )
    return client, counting


def start_looper(client: Client, g: Any, name: str, steps: int = 1) -> Any:
    """Start a ``Looper`` run of ``steps`` through ``client`` on the test's queue."""
    return client.start_workflow(
        Looper.run, Loop(steps=steps), id=f"{name}-{uuid.uuid4().hex[:6]}", task_queue=g.task_queue
    )


def fleet_policy(tenant: str, shards: int) -> Policy:
    return Policy.from_dict(
        {
            "tenants": {tenant: {"quotas": {"max_tokens": 1_000_000}}},
            "shared": {"ledger_id": f"ledger-{uuid.uuid4().hex[:8]}", "shards": shards},
            "control": {"fleet_poll_interval": "1s"},
        }
    )


@pytest.mark.parametrize("shards", [1, 4])
async def test_a_burst_of_starts_shares_one_lookup_per_ledger_and_every_run_gets_the_kill(
    governed: Any, shards: int
) -> None:
    """Twelve starts of one tenant at once: one ``controls`` query per ledger (the
    tenant's and, sharded, the root for the workflow type), and every run starts paused
    by the tenant's stored kill; the tenant's resume then lets all of them finish."""
    tenant = f"burst-{uuid.uuid4().hex[:6]}"
    policy = fleet_policy(tenant, shards)
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        control = controller(g, policy, ledger_task_queue=g.task_queue)
        await control.kill(ControlTarget.tenant(tenant), reason="hold the burst")
        client, counting = counting_client(g, policy)
        with attribution(tenant=tenant):
            handles: list[WorkflowHandle[Any, Any]] = await asyncio.gather(
                *(start_looper(client, g, f"burst-{i}", steps=2) for i in range(STARTS))
            )
        ledgers = 1 if shards == 1 else 2  # the tenant's shard, and the root
        assert len(counting.controls) == ledgers, counting.controls
        assert all(n == 1 for n in counting.controls.values()), counting.controls
        for handle in handles:
            await eventually(lambda handle=handle: is_paused(handle))
        await control.resume(ControlTarget.tenant(tenant), reason="go")
        assert await asyncio.gather(*(h.result() for h in handles)) == [20] * STARTS


async def test_a_start_given_up_does_not_cancel_the_lookup_another_start_waits_for(
    governed: Any,
) -> None:
    """Two starts share a lookup; the first is cancelled while it waits: the second still
    gets the stored kill from the one query, and a later start sends a new query."""
    tenant = f"giveup-{uuid.uuid4().hex[:6]}"
    policy = fleet_policy(tenant, 1)
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        control = controller(g, policy, ledger_task_queue=g.task_queue)
        await control.kill(ControlTarget.tenant(tenant), reason="hold")
        client, counting = counting_client(g, policy)
        counting.go.clear()  # the lookup is held in flight until both starts wait for it
        with attribution(tenant=tenant):
            given_up = asyncio.ensure_future(start_looper(client, g, "given-up"))
            kept = asyncio.ensure_future(start_looper(client, g, "kept"))
            await eventually(lambda: counting.sent(1))
            await asyncio.sleep(0.2)  # both starts reach the lookup in a few loop steps
            assert not given_up.done() and not kept.done()
            given_up.cancel()
            await asyncio.sleep(0.1)
            counting.go.set()
            handle = await kept
        assert given_up.cancelled()
        assert sum(counting.controls.values()) == 1, counting.controls
        await eventually(lambda: is_paused(handle))
        with attribution(tenant=tenant):
            later = await start_looper(client, g, "later")  # the lookup is over: a fresh one
        assert sum(counting.controls.values()) == 2, counting.controls
        await eventually(lambda: is_paused(later))
        await control.resume(ControlTarget.tenant(tenant), reason="go")
        assert await handle.result() == 10 and await later.result() == 10


async def test_a_start_after_a_kill_never_joins_a_lookup_sent_before_the_kill(
    governed: Any,
) -> None:
    """A start's lookup is held in flight; a tenant kill is stored; a second start then
    sends a query of its own (it does not join the one sent before the kill) and starts
    paused by the kill."""
    tenant = f"late-{uuid.uuid4().hex[:6]}"
    policy = fleet_policy(tenant, 1)
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        control = controller(g, policy, ledger_task_queue=g.task_queue)
        client, counting = counting_client(g, policy)
        counting.go.clear()
        with attribution(tenant=tenant):
            early = asyncio.ensure_future(start_looper(client, g, "early"))
            await eventually(lambda: counting.sent(1))
            await control.kill(ControlTarget.tenant(tenant), reason="after the first lookup")
            late = asyncio.ensure_future(start_looper(client, g, "late"))
            await eventually(lambda: counting.sent(2))
            assert sum(counting.controls.values()) == 2, counting.controls
            counting.go.set()
            handles = [await early, await late]
        await eventually(lambda: is_paused(handles[1]))
        await control.resume(ControlTarget.tenant(tenant), reason="go")
        assert [await h.result() for h in handles] == [10, 10]
