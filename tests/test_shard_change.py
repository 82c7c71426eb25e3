"""Changing a running fleet's shard count (``shared.shards``) is refused, clearly, at once.

A fleet spends on 2 shards; the same ``shared.ledger_id`` with another count would read
fresh shard ledgers (their ids carry the count) and start every tenant budget afresh. The
root records the count, and the next run of the changed fleet halts before it reserves
anything, with a message naming both counts and what to do.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.core.book import SHARDS_LIMIT
from temporal_governor.core.shards import ShardMap
from temporal_governor.errors import GOVERNANCE_KILLED
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot
from test_shared_shards import ACTIVITIES, WORKFLOWS, state_of
from workflows import Spender, Steps


def fleet(root: str, shards: int, fleet_wide: bool, **shared: Any) -> Policy:
    """A tenant quota (and a global one when ``fleet_wide``) on ``shards`` ledgers."""
    document: dict[str, Any] = {
        "shared": {"ledger_id": root, "shards": shards, **shared},
        "tenants": {"default": {"quotas": {"max_tokens": 1000}}},
    }
    if fleet_wide:
        document["global"] = {"max_tokens_per_minute": 10_000_000}
    return Policy.from_dict(document)


def tenant_committed(state: dict[str, Any], tenant: str) -> float:
    return sum(
        c["committed"]
        for c in state["counters"]
        if c["scope"] == f"tenant:{tenant}" and c["resource"] == "tokens"
    )


async def exact(g: Any, ledgers: list[str]) -> dict[str, dict[str, Any] | None]:
    """Every started ledger holds nothing open and balances: committed + released == granted."""
    states = {ledger_id: await state_of(g, ledger_id) for ledger_id in ledgers}
    for ledger_id, state in states.items():
        if state is None:
            continue
        assert state["open_reservations"] == 0, ledger_id
        assert all(c["reserved"] == 0 for c in state["counters"]), ledger_id
        for resource, granted in state["granted"].items():
            balance = state["committed"].get(resource, 0.0) + state["released"].get(resource, 0.0)
            assert balance == pytest.approx(granted), (ledger_id, resource)
    return states


@pytest.mark.parametrize("fleet_wide", [True, False], ids=["global-and-tenant", "tenant-only"])
@pytest.mark.parametrize("new_count", [4, 1])
async def test_a_changed_shard_count_halts_the_next_run_before_it_reserves_anything(
    governed, fleet_wide: bool, new_count: int
) -> None:
    tag = uuid.uuid4().hex[:8]
    tenant = f"acme-{tag}"
    old, new = ShardMap(f"ledger-{tag}", 2), ShardMap(f"ledger-{tag}", new_count)
    every_ledger = sorted(set(old.all_ledgers()) | set(new.all_ledgers()))
    async with governed(fleet(old.root, 2, fleet_wide), WORKFLOWS, ACTIVITIES) as running:
        with attribution(tenant=tenant):
            assert await running.run(Spender.run, Steps([100, 50])) == 2
        before = await exact(running, every_ledger)
        root = before[old.root]
        assert root is not None, "a sharded run registers with the root, tenant limits or not"
        assert root["shards"] == 2
        shard = before[old.ledger_of_tenant(tenant)]
        assert shard is not None and shard["shards"] == 2
        assert tenant_committed(shard, tenant) == 150

        # the changed fleet: would wait or fail open on a budget refusal or an outage, and
        # still halts at once on a changed count (a configuration error never fails open)
        changed = fleet(
            new.root, new_count, fleet_wide, on_refusal="wait", on_unavailable="open", max_wait=60
        )
        async with governed(changed, WORKFLOWS, ACTIVITIES) as moved:
            started = time.monotonic()
            with attribution(tenant=tenant):
                handle = await moved.start(Spender.run, Steps([100]))
            with pytest.raises(WorkflowFailureError) as failed:
                await handle.result()
            assert time.monotonic() - started < 30, "refused at once, never waited for"
            cause = failed.value.cause
            assert isinstance(cause, ApplicationError) and cause.type == GOVERNANCE_KILLED
            assert cause.non_retryable
            details = BreachDetails.from_error(failed.value)
            assert details is not None
            assert details.limit == SHARDS_LIMIT == "shared.shards"
            assert details.scope == f"ledger:{old.root}"
            assert (details.ceiling, details.observed) == (2.0, float(new_count))
            message = str(cause)
            assert "shared.shards: 2" in message
            assert f"shared.shards: {new_count}" in message
            assert "Set shared.shards back to 2" in message
            assert "new shared.ledger_id" in message
            snapshot = BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))
            assert snapshot.committed.get("tokens", 0.0) == 0.0  # its activity never ran

            after = await exact(moved, every_ledger)
            # nothing reserved, nothing leaked: the old ledgers are as they were, and the
            # new count's shards were never even started
            for ledger_id in every_ledger:
                if ledger_id not in old.all_ledgers():
                    assert after[ledger_id] is None, f"{ledger_id} started"
                    continue
                was, now = before[ledger_id], after[ledger_id]
                assert (was is None) == (now is None), ledger_id
                if was is not None and now is not None:
                    assert now["granted"] == was["granted"], ledger_id
                    assert now["committed"] == was["committed"], ledger_id
                    assert now["shards"] == 2
            assert not any(
                c["scope"].startswith(("tenant:", "owner:")) for c in after[old.root]["counters"]
            ), "the root never took a tenant budget"

        # the unchanged count keeps working on the budgets it kept
        with attribution(tenant=tenant):
            assert await running.run(Spender.run, Steps([30])) == 1
        shard = (await exact(running, every_ledger))[old.ledger_of_tenant(tenant)]
        assert shard is not None
        assert tenant_committed(shard, tenant) == 180


async def test_a_root_used_unsharded_refuses_a_fleet_that_shards_it(governed) -> None:
    tag = uuid.uuid4().hex[:8]
    tenant = f"acme-{tag}"
    one, four = ShardMap(f"ledger-{tag}", 1), ShardMap(f"ledger-{tag}", 4)
    async with governed(fleet(one.root, 1, False), WORKFLOWS, ACTIVITIES) as unsharded:
        with attribution(tenant=tenant):
            assert await unsharded.run(Spender.run, Steps([100])) == 1
        root = await state_of(unsharded, one.root)
        assert root is not None and root["shards"] is None
        assert tenant_committed(root, tenant) == 100
        async with governed(fleet(four.root, 4, False), WORKFLOWS, ACTIVITIES) as sharded:
            with attribution(tenant=tenant), pytest.raises(WorkflowFailureError) as failed:
                await sharded.run(Spender.run, Steps([100]))
            details = BreachDetails.from_error(failed.value)
            assert details is not None and details.limit == SHARDS_LIMIT
            assert (details.ceiling, details.observed) == (1.0, 4.0)
            assert "Set shared.shards back to 1" in str(failed.value.cause)
            states = await exact(sharded, four.all_ledgers())
            assert all(states[s] is None for s in four.all_ledgers() if s != four.root)
            root = states[four.root]
            assert root is not None and root["shards"] is None
            assert tenant_committed(root, tenant) == 100
        with attribution(tenant=tenant):  # the unsharded fleet goes on
            assert await unsharded.run(Spender.run, Steps([50])) == 1
