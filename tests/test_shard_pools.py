"""Hierarchical leases on the dev server: tenant shards lease the global budget from the root."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError

from conftest import eventually
from shared_workflows import SHARED_ACTIVITIES, SHARED_WORKFLOWS, FanOut
from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.core.leases import reservation
from temporal_governor.core.scopes import SharedLimit
from temporal_governor.core.shards import ShardMap
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot
from test_shared_shards import committed_of, state_of
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS, Spender, Steps

GLOBAL_LIMIT = SharedLimit(
    name="global.max_tokens_per_minute", scope="global", resource="tokens", ceiling=1e9, window_s=60
)
WORKFLOWS = [*ALL_WORKFLOWS, *SHARED_WORKFLOWS]
ACTIVITIES = [*ALL_ACTIVITIES, *SHARED_ACTIVITIES]


def pooled_policy(ledgers: ShardMap, global_per_minute: float) -> Policy:
    return Policy.from_dict(
        {
            "shared": {
                "ledger_id": ledgers.root,
                "shards": ledgers.shards,
                "hierarchical_leases": True,
            },
            "global": {"max_tokens_per_minute": global_per_minute},
            "tenants": {"default": {"quotas": {"max_tokens": 100_000}}},
            "tools": {
                "spend": {"estimate": {"tokens": 100}},
                "tracked": {"estimate": {"tokens": 10}},
            },
        }
    )


async def root_reserves(g: Any, root: str) -> dict[str, int]:
    """The root's reserve updates by who sent them: runs' reservations, registrations, pools."""
    counts = {"runs": 0, "registrations": 0, "pools": 0}
    handle = g.client.get_workflow_handle(root)
    async for event in handle.fetch_history_events():
        if event.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            continue
        attrs = event.workflow_execution_update_accepted_event_attributes
        if attrs.accepted_request.input.name != "reserve":
            continue
        (payload,) = attrs.accepted_request.input.args.payloads
        request = json.loads(payload.data)
        if request["run"].endswith("/pools"):
            counts["pools"] += 1
        elif not request["limits"]:
            counts["registrations"] += 1
        else:
            counts["runs"] += 1
    return counts


async def spend_of(handles: list[Any]) -> list[float]:
    spent = []
    for handle in handles:
        snapshot = BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))
        spent.append(snapshot.committed.get("tokens", 0.0))
    return spent


async def test_runs_draw_the_global_budget_from_their_shards_pools_and_the_root_is_exact(
    governed,
) -> None:
    tag = uuid.uuid4().hex[:8]
    ledgers = ShardMap(f"pools-{tag}", 4)
    policy = pooled_policy(ledgers, 100_000_000)
    tenants = [f"t{i}-{tag}" for i in range(8)]
    async with governed(policy, WORKFLOWS, ACTIVITIES) as g:
        handles: list[tuple[str, Any]] = []
        for wave in range(2):  # the second wave finds the shards' pools filled
            started = []
            for tenant in tenants:
                with attribution(tenant=tenant, owner="alice"):
                    started.append((tenant, await g.start(Spender.run, Steps([100] * 6))))
                    started.append((tenant, await g.start(FanOut.run, 8)))
            await asyncio.gather(*(h.result() for _, h in started))
            handles += started
            if wave == 0:
                await eventually(lambda: _has_pools(g, ledgers), timeout=20)
        spent = await spend_of([h for _, h in handles])
        assert sum(spent) == pytest.approx(len(tenants) * 2 * (600 + 80))

        counts = await root_reserves(g, ledgers.root)
        assert counts["pools"] >= 1
        # the root no longer sees a reservation per run: the shards' pools cover most
        assert counts["runs"] < len(handles) // 2, counts

        # once the pools are idle they are settled: the root committed every token, once
        root = await settled_root(g, ledgers.root)
        assert root["committed"]["tokens"] == pytest.approx(sum(spent))
        by_tenant: dict[str, float] = {}
        for (tenant, _), value in zip(handles, spent, strict=True):
            by_tenant[tenant] = by_tenant.get(tenant, 0.0) + value
        for ledger_id in ledgers.all_ledgers():
            state = await state_of(g, ledger_id)
            if state is None:
                continue
            assert state["open_reservations"] == 0 and state["pools"] == []
            for resource, granted in state["granted"].items():
                assert state["committed"].get(resource, 0.0) + state["released"].get(
                    resource, 0.0
                ) == pytest.approx(granted)
        for tenant, total in by_tenant.items():
            shard = await state_of(g, ledgers.ledger_of_tenant(tenant))
            assert shard is not None
            assert committed_of(shard, f"tenant:{tenant}") == pytest.approx(total)

        # a shard draws only from pools of its own root: another root is a malformed request
        shard_id = ledgers.ledger_of_tenant(tenants[0])
        bogus = reservation(
            f"bogus-{tag}#1", "bogus", [GLOBAL_LIMIT], {"tokens": 1.0}, 600.0, shards=4,
            upstream="somebody-else",
        )  # fmt: skip
        with pytest.raises(WorkflowUpdateFailedError) as failed:
            await g.client.get_workflow_handle(shard_id).execute_update("reserve", bogus.wire())
        assert "is not the root of" in str(failed.value.cause)
        shard = await state_of(g, shard_id)
        assert shard is not None and shard["pools"] == [] and shard["open_reservations"] == 0


async def settled_root(g: Any, root_id: str) -> dict[str, Any]:
    """The root's state once the shards' pools are idle and settled there."""

    async def settled() -> bool:
        root = await state_of(g, root_id)
        return root is not None and root["open_reservations"] == 0

    await eventually(settled, timeout=40)
    root = await state_of(g, root_id)
    assert root is not None
    return root


async def _has_pools(g: Any, ledgers: ShardMap) -> bool:
    for ledger_id in ledgers.all_ledgers()[:-1]:
        state = await state_of(g, ledger_id)
        if state is not None and state["pools"]:
            return True
    return False


async def test_the_global_ceiling_holds_exactly_when_shards_pools_run_dry(governed) -> None:
    # the window is a wall-clock minute: start early in one so the race ends inside it
    into_minute = time.time() % 60
    if into_minute > 30:
        await asyncio.sleep(60 - into_minute + 0.5)
    tag = uuid.uuid4().hex[:8]
    ledgers = ShardMap(f"dry-{tag}", 4)
    ceiling = 3_000.0
    policy = pooled_policy(ledgers, ceiling)
    tenants = [f"t{i}-{tag}" for i in range(8)]
    async with governed(policy, WORKFLOWS, ACTIVITIES) as g:
        handles = []
        for tenant in tenants:  # 8 x 800 tokens of demand against 3,000 a minute
            with attribution(tenant=tenant, owner="alice"):
                handles.append(await g.start(Spender.run, Steps([100] * 8)))
        outcomes = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
        halted = [o for o in outcomes if isinstance(o, BaseException)]
        assert halted, "the global ceiling must halt some runs"
        for outcome in halted:
            assert isinstance(outcome, WorkflowFailureError), outcome
            details = BreachDetails.from_error(outcome)
            assert details is not None and details.scope == "global", details
        spent = await spend_of(handles)
        assert sum(spent) <= ceiling + 1e-6
        assert sum(spent) >= ceiling * 0.5  # pools held back little of the ceiling

        root = await settled_root(g, ledgers.root)
        assert root["committed"]["tokens"] == pytest.approx(sum(spent))
