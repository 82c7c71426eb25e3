"""Enforcement on a real dev server: reserve, commit, release, breach, attribution."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot
from workflows import (
    ALL_ACTIVITIES,
    ALL_WORKFLOWS,
    FLAKY_ATTEMPTS,
    FailingAgent,
    LocalSpender,
    Node,
    RetryingAgent,
    ShapedAgent,
    Sleeper,
    Spender,
    Steps,
    Tree,
)

SPENDER_1000 = """
agents:
  Spender:
    quotas:
      max_tokens_per_task: 1000
tools:
  spend:
    estimate: { tokens: 100 }
"""


def breach_of(error: BaseException) -> BreachDetails:
    details = BreachDetails.from_error(error)
    assert details is not None, f"no breach details in {error!r}"
    return details


async def budget(handle: object) -> BudgetSnapshot:
    data = await handle.query(BUDGET_QUERY)  # type: ignore[attr-defined]
    return BudgetSnapshot.model_validate(data)


async def test_token_ceiling_halts_at_the_right_dispatch_with_zero_overdraft(governed) -> None:
    policy = Policy.from_yaml(SPENDER_1000)
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        handle = await g.start(Spender.run, Steps(tokens=[100] * 20))
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        cause = failure.value.cause
        assert isinstance(cause, ApplicationError)
        assert cause.type == "BudgetExceeded"
        assert cause.non_retryable
        details = breach_of(failure.value)
        # ten dispatches of <=100 fit in 1000; the eleventh would make 1100
        assert details.limit == "max_tokens_per_task"
        assert details.resource == "tokens"
        assert details.scope.endswith(handle.id)
        assert details.observed == 1100
        assert details.ceiling == 1000
        assert details.committed == 1000
        assert details.overage == 0
        snap = await budget(handle)
        assert snap.committed["tokens"] == 1000
        assert snap.in_flight == 0
        assert [e.kind for e in snap.recent_events].count("commit") == 10


async def test_actual_above_estimate_refuses_next_dispatch_and_reports_overage(governed) -> None:
    policy = Policy.from_yaml(SPENDER_1000)
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        # estimates are 100 but the third call really uses 900: 100+100+900 = 1100
        handle = await g.start(Spender.run, Steps(tokens=[100, 100, 900, 10]))
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        details = breach_of(failure.value)
        assert details.committed == 1100
        assert details.overage == 100
        assert "overage 100" in str(failure.value.cause)
        snap = await budget(handle)
        kinds = [e.kind for e in snap.recent_events]
        assert "overage" in kinds and kinds[-1] == "breach"
        assert kinds.count("commit") == 3


async def test_explicit_estimate_overrides_policy(governed) -> None:
    policy = Policy.from_yaml(SPENDER_1000)
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        # the policy's estimate (100) would let the second call through (500 + 100);
        # an explicit estimate of 600 does not (500 + 600 > 1000)
        assert await g.run(Spender.run, Steps(tokens=[500, 10])) == 2
        with pytest.raises(WorkflowFailureError) as failure:
            await g.run(Spender.run, Steps(tokens=[500, 10], estimate=600))
        details = breach_of(failure.value)
        assert (details.committed, details.observed) == (500, 1100)


async def test_breach_cannot_be_caught_and_bypassed(governed) -> None:
    policy = Policy.from_yaml(SPENDER_1000)
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        handle = await g.start(Spender.run, Steps(tokens=[300] * 10, estimate=300, catch=True))
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        assert breach_of(failure.value).limit == "max_tokens_per_task"
        assert (await budget(handle)).committed["tokens"] == 900


async def test_alert_mode_continues_and_records_alert(governed) -> None:
    policy = Policy.from_yaml(
        """
agents:
  Spender:
    quotas:
      max_tokens_per_task: { limit: 1000, on_breach: alert, warn_at: 0.5 }
"""
    )
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        handle = await g.start(Spender.run, Steps(tokens=[400] * 4))
        assert await handle.result() == 4
        snap = await budget(handle)
        assert snap.committed["tokens"] == 1600
        assert snap.breach is None
        events = {e.kind: e for e in snap.recent_events}
        assert events["warn"].observed == 800 and events["warn"].ceiling == 1000
        assert events["alert"].limit == "max_tokens_per_task"
        assert events["alert"].observed > 1000


async def test_retries_count_each_attempts_usage_once(governed) -> None:
    policy = Policy.from_yaml("agents: {RetryingAgent: {quotas: {max_tokens_per_task: 10000}}}")
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        handle = await g.start(RetryingAgent.run, 70)
        assert await handle.result() == "ok after 3"
        assert FLAKY_ATTEMPTS[handle.id] == 3
        snap = await budget(handle)
        assert snap.committed["tokens"] == 210  # three real attempts, once each
        assert [e.kind for e in snap.recent_events].count("reserve") == 1  # never re-reserved


async def test_failed_activity_commits_reported_usage_and_keeps_details(governed) -> None:
    policy = Policy.from_yaml("agents: {FailingAgent: {quotas: {max_tokens_per_task: 10000}}}")
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        handle = await g.start(FailingAgent.run, 55)
        # agent code sees its own error unchanged: no governor detail added
        assert await handle.result() == "Broken:[{'why': 'broken'}]"
        assert (await budget(handle)).committed["tokens"] == 55


async def test_local_activity_and_usage_shaped_results(governed) -> None:
    policy = Policy.from_yaml(
        """
models: { m1: { input_per_1k: 1.0, output_per_1k: 2.0 } }
defaults: { quotas: { max_tokens_per_task: 10000 } }
"""
    )
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        local = await g.start(LocalSpender.run, 123)
        assert await local.result() == "spent"
        assert (await budget(local)).committed["tokens"] == 123
        shaped = await g.start(ShapedAgent.run, 500)
        assert (await shaped.result())["text"] == "hi"
        snap = await budget(shaped)
        assert snap.committed["tokens"] == 1000
        assert snap.committed["cost_usd"] == pytest.approx(0.5 * 1.0 + 0.5 * 2.0)


TREE_POLICY = """
agents:
  Node:
    quotas:
      max_tokens_per_task: 1000
      max_subtasks_per_task: 10
    loop_detection: { max_depth: 5 }
tools:
  spend: { estimate: { tokens: 100 } }
"""


async def test_child_cannot_get_fresh_allowance(governed) -> None:
    policy = Policy.from_yaml(TREE_POLICY)
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        # every node spends 100 and has its own 1000 quota, but the tree shares the root's
        # 1000: 1 root + 3 children + 9 grandchildren would need 1300
        handle = await g.start(Node.run, Tree(spend=100, children=3, levels=3))
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        details = breach_of(failure.value)
        assert details.scope == f"run Node/{handle.id}"
        assert details.limit == "max_tokens_per_task"
        # the breach happened below the root, against the root's limit
        assert details.chain[0].workflow_id == handle.id
        assert len(details.chain) > 1
        snap = await budget(handle)
        assert snap.committed["tokens"] <= 1000


async def test_agent_at_budget_spawning_subagents_gets_nothing(governed) -> None:
    policy = Policy.from_yaml(
        """
agents:
  Node:
    quotas: { max_tokens_per_task: 100 }
tools:
  spend: { estimate: { tokens: 100 } }
"""
    )
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        handle = await g.start(Node.run, Tree(spend=100, children=1, levels=2))
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        details = breach_of(failure.value)
        assert details.dispatch == "child Node"
        assert details.committed == 100
        snap = await budget(handle)
        assert snap.committed.get("subtasks", 0) == 0  # the child was never started


async def test_max_depth_is_enforced_at_child_start(governed) -> None:
    policy = Policy.from_yaml("agents: {Node: {loop_detection: {max_depth: 2}}}")
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        with pytest.raises(WorkflowFailureError) as failure:
            await g.run(Node.run, Tree(children=1, levels=5))
        details = breach_of(failure.value)
        assert details.limit == "loop_detection.max_depth"
        assert details.observed == 3 and details.ceiling == 2


async def test_attribution_reaches_activities_of_grandchildren(governed) -> None:
    policy = Policy.from_yaml(TREE_POLICY)
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        with attribution(tenant="acme", owner="alice@acme"):
            result = await g.run(Node.run, Tree(children=1, levels=3))
        grandchild = result["below"][0]["below"][0]["who"]
        assert grandchild == {"tenant": "acme", "owner": "alice@acme", "chain": ["Node"] * 3}
        unattributed = await g.run(Node.run, Tree(levels=1))
        assert unattributed["who"]["tenant"] == "default"


async def test_children_spend_is_charged_to_every_ancestor(governed) -> None:
    policy = Policy.from_yaml(TREE_POLICY.replace("1000", "5000"))
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        handle = await g.start(Node.run, Tree(spend=100, children=2, levels=3))
        await handle.result()
        root = await budget(handle)
        assert root.committed["tokens"] == 700  # 1 + 2 + 4 nodes
        assert root.committed["child_workflows"] == 6
        assert root.committed["subtasks"] == 2
        child = await budget(g.client.get_workflow_handle(f"{handle.id}.0"))
        assert child.committed["tokens"] == 300
        assert [link.agent for link in child.chain] == ["Node", "Node"]
        assert any(limit.scope == f"run Node/{handle.id}" for limit in child.limits)


async def test_breach_cancels_running_children(governed) -> None:
    policy = Policy.from_yaml(
        """
agents:
  Sleeper: { quotas: { max_tokens_per_task: 500 }, child_allowance: 0.1 }
tools:
  spend: { estimate: { tokens: 100 } }
"""
    )
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        handle = await g.start(Sleeper.run, 100)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        waiter = g.client.get_workflow_handle(f"{handle.id}.waiter")
        for _ in range(50):  # the cancellation is delivered asynchronously
            status = (await waiter.describe()).status
            if status is not None and status.name != "RUNNING":
                break
            await asyncio.sleep(0.1)
        assert status is not None and status.name in ("CANCELED", "TERMINATED")
