"""Shared budgets on sharded ledgers (``shared.shards``): tenants on shards, fleet on the root."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from temporalio.client import WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from conftest import eventually
from control_workflows import CONTROL_ACTIVITIES, CONTROL_WORKFLOWS, Loop, Looper
from shared_workflows import SHARED_ACTIVITIES, SHARED_WORKFLOWS, FanOut
from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.cli import main as cli
from temporal_governor.control import ControlClient, ControlTarget
from temporal_governor.core.shards import ShardMap
from temporal_governor.top import fleet_controls, read_ledgers
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS, Spender, Steps

WORKFLOWS = [*ALL_WORKFLOWS, *SHARED_WORKFLOWS]
ACTIVITIES = [*ALL_ACTIVITIES, *SHARED_ACTIVITIES]


async def state_of(g: Any, ledger_id: str) -> dict[str, Any] | None:
    """A ledger's state, or ``None`` if it never started (a shard no tenant used)."""
    try:
        state: dict[str, Any] = await g.client.get_workflow_handle(ledger_id).query("state", "")
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return state


def committed_of(state: dict[str, Any], scope: str) -> float:
    return sum(
        c["committed"]
        for c in state["counters"]
        if c["scope"] == scope and c["resource"] == "tokens" and c["window_s"] is None
    )


async def test_racing_runs_of_eight_tenants_on_four_shards_never_overspend_and_are_exact(
    governed, env
) -> None:
    tag = uuid.uuid4().hex[:8]
    ledgers = ShardMap(f"ledger-{tag}", 4)
    policy = Policy.from_dict(
        {
            "shared": {"ledger_id": ledgers.root, "shards": ledgers.shards},
            "global": {"max_tokens_per_minute": 10_000_000},
            "tenants": {
                "default": {"quotas": {"max_tokens": 1000}, "per_owner": {"max_tokens": 600}}
            },
            "tools": {
                "spend": {"estimate": {"tokens": 100}},
                "tracked": {"estimate": {"tokens": 10}},
            },
        }
    )
    tenants = [f"t{i}-{tag}" for i in range(8)]
    assert len({ledgers.ledger_of_tenant(t) for t in tenants}) > 1, "the tenants must spread"
    async with governed(policy, WORKFLOWS, ACTIVITIES) as g:
        started: list[tuple[str, str, Any]] = []
        for tenant in tenants:
            for _ in range(2):  # 1,200 tokens of demand by alice: over her 600 and near 1,000
                with attribution(tenant=tenant, owner="alice"):
                    started.append((tenant, "alice", await g.start(Spender.run, Steps([100] * 6))))
            with attribution(tenant=tenant, owner="bob"):  # ten parallel dispatches at once
                started.append((tenant, "bob", await g.start(FanOut.run, 10)))
        outcomes = await asyncio.gather(
            *(h.result() for _, _, h in started), return_exceptions=True
        )
        spent: dict[tuple[str, str], float] = {}
        for (tenant, owner, handle), outcome in zip(started, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, WorkflowFailureError), outcome
                details = BreachDetails.from_error(outcome)
                assert details is not None
                assert details.scope in (f"tenant:{tenant}", f"owner:{tenant}/{owner}")
            snapshot = BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))
            spent[tenant, owner] = spent.get((tenant, owner), 0.0) + snapshot.committed.get(
                "tokens", 0.0
            )
        assert any(isinstance(o, BaseException) for o in outcomes), "alice's demand must be cut"

        states = {i: await state_of(g, i) for i in ledgers.all_ledgers()}
        root = states[ledgers.root]
        assert root is not None
        for tenant in tenants:
            shard = states[ledgers.ledger_of_tenant(tenant)]
            assert shard is not None
            tenant_total = spent[tenant, "alice"] + spent[tenant, "bob"]
            # never overspent, and exact: the shard committed what the runs really spent
            assert committed_of(shard, f"tenant:{tenant}") == pytest.approx(tenant_total)
            assert tenant_total <= 1000
            assert committed_of(shard, f"owner:{tenant}/alice") == pytest.approx(
                spent[tenant, "alice"]
            )
            assert spent[tenant, "alice"] <= 600
            assert spent[tenant, "bob"] == 100
        # each ledger keeps only its own scopes: tenants on their shard, the fleet on the root
        for ledger_id, state in states.items():
            if state is None:
                continue
            for c in state["counters"]:
                scope = c["scope"]
                expected = ledgers.root if scope == "global" else None
                for tenant in tenants:
                    if scope in (f"tenant:{tenant}",) or scope.startswith(f"owner:{tenant}/"):
                        expected = ledgers.ledger_of_tenant(tenant)
                assert expected == ledger_id, f"{scope} found on {ledger_id}"
            assert state["open_reservations"] == 0
            for resource, granted in state["granted"].items():
                assert state["committed"].get(resource, 0.0) + state["released"].get(
                    resource, 0.0
                ) == pytest.approx(granted)
        # the root's global counter saw every token of every tenant
        assert root["committed"]["tokens"] == pytest.approx(sum(spent.values()))

        # operators read the fleet as one: budget and top read every shard and the root
        address = env.client.service_client.config.target_host
        runner = CliRunner()
        budget = await asyncio.to_thread(
            runner.invoke,
            cli,
            ["budget", "--ledger-id", ledgers.root, "--shards", "4", "--json",
             "--address", address],
        )  # fmt: skip
        assert budget.exit_code == 0, budget.output
        shown = json.loads(budget.output)
        assert {f"tenant:{t}" for t in tenants} <= {c["scope"] for c in shown["counters"]}
        # totals: the shards' (each dispatch once; it is on the root too, for the global
        # limit), and each ledger's own beside them
        assert shown["committed"]["tokens"] == pytest.approx(sum(spent.values()))
        assert shown["ledgers"][ledgers.root]["committed"]["tokens"] == pytest.approx(
            sum(spent.values())
        )
        assert shown["open_reservations"] == 0 and shown["granted"] and shown["released"]
        one = tenants[0]
        top = await asyncio.to_thread(
            runner.invoke,
            cli,
            ["top", "--once", "--json", "--ledger-id", ledgers.root, "--shards", "4",
             "--tenant", one, "--address", address],
        )  # fmt: skip
        assert top.exit_code == 0, top.output
        frame = json.loads(top.output)
        rows = {(r["scope"], r["window_s"]) for r in frame["counters"]}
        assert (f"tenant:{one}", None) in rows and (f"owner:{one}/alice", None) in rows
        assert not [w for w in frame["warnings"] if "ledger" in w], frame["warnings"]


async def test_a_fleet_with_tenant_limits_only_registers_with_the_root_and_reads_cleanly(
    governed,
) -> None:
    ledgers = ShardMap(f"ledger-{uuid.uuid4().hex[:8]}", 4)
    tenant = f"acme-{uuid.uuid4().hex[:6]}"
    policy = Policy.from_dict(
        {
            "shared": {"ledger_id": ledgers.root, "shards": ledgers.shards},
            "tenants": {"default": {"quotas": {"max_tokens": 100_000}}},
        }
    )
    async with governed(policy, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant=tenant):
            assert await g.run(Spender.run, Steps([10, 20])) == 2
        root = await state_of(g, ledgers.root)
        assert root is not None and root["shards"] == ledgers.shards
        assert root["counters"] == [] and root["granted"] == {}, "no fleet-wide limit: none kept"
        control = ControlClient(g.client, policy, issuer="oncall@test")
        await control.kill(ControlTarget.tenant(tenant), mode="terminate", reason="fraud")
        state, warnings = await read_ledgers(g.client, ledgers, [], 5.0)
        assert state is not None and not warnings, warnings
        assert state["committed"] == {"tokens": 30.0}
        assert set(state["ledgers"]) == {ledgers.ledger_of_tenant(tenant), ledgers.root}
        found = await fleet_controls(g.client, ledgers, [f"tenant:{tenant}", "agent:Spender"], 5.0)
        assert [(c.scope, c.action, c.reason) for c in found] == [
            (f"tenant:{tenant}", "kill", "fraud")
        ]


@pytest.mark.parametrize("shards", [1, 4])
async def test_the_budget_query_counts_open_reservations_on_every_ledger(
    governed, shards: int
) -> None:
    ledgers = ShardMap(f"ledger-{uuid.uuid4().hex[:8]}", shards)
    policy = Policy.from_dict(
        {
            "shared": {"ledger_id": ledgers.root, "shards": shards, "leases": False},
            "global": {"max_tool_calls_per_minute": 10_000_000},
            "tenants": {"default": {"quotas": {"max_tool_calls": 100_000}}},
        }
    )
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        with attribution(tenant=f"t-{uuid.uuid4().hex[:6]}"):
            handle = await g.start(Looper.run, Loop(steps=1, seconds=3.0))

        async def holding() -> bool:
            return int((await handle.query(BUDGET_QUERY))["shared_open"]) > 0

        await eventually(holding)
        shown = int((await handle.query(BUDGET_QUERY))["shared_open"])
        state, _ = await read_ledgers(g.client, ledgers, [], 5.0)
        assert state is not None
        held = [s["open_reservations"] for s in state.get("ledgers", {"": state}).values()]
        # one reservation per ledger the step reserves in: its tenant's, and the root's
        assert shown == sum(held) == (1 if shards == 1 else 2)
        assert await handle.result() == 10
