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

from shared_workflows import SHARED_ACTIVITIES, SHARED_WORKFLOWS, FanOut
from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.cli import main as cli
from temporal_governor.core.shards import ShardMap
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
        assert shown["committed"]["tokens"] == pytest.approx(
            sum(s["committed"].get("tokens", 0.0) for s in states.values() if s)
        )
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
