"""Every per-task limit on a real dev server: cost, tool calls, subtasks, wall time, carry-over."""

from __future__ import annotations

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from conftest import RECORDED, Recorded
from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.interceptors import GovernanceInterceptor
from temporal_governor.workflow import BUDGET_QUERY
from workflows import (
    ALL_ACTIVITIES,
    ALL_WORKFLOWS,
    Chain,
    Continuer,
    Nap,
    Napper,
    Node,
    Priced,
    Spender,
    Steps,
    Tree,
    Trivial,
)


def breach_of(error: BaseException) -> BreachDetails:
    details = BreachDetails.from_error(error)
    assert details is not None, f"no breach details in {error!r}"
    return details


async def test_cost_ceiling_from_the_price_table(governed) -> None:
    policy = Policy.from_yaml(
        """
models: { m1: { input_per_1k: 0.01, output_per_1k: 0.03 } }
agents: { Priced: { quotas: { max_cost_usd_per_task: 0.10 } } }
tools: { spend: { estimate: { cost_usd: 0.04 } } }
"""
    )
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        # each call costs 0.01 + 0.03 = 0.04: two fit in 0.10, the third would make 0.12
        with pytest.raises(WorkflowFailureError) as failure:
            await g.run(Priced.run, 5)
        details = breach_of(failure.value)
        assert details.limit == "max_cost_usd_per_task"
        assert details.committed == pytest.approx(0.08)
        assert details.observed == pytest.approx(0.12)


async def test_tool_call_ceiling_counts_dispatches(governed) -> None:
    policy = Policy.from_yaml("agents: {Trivial: {quotas: {max_tool_calls_per_task: 5}}}")
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        assert await g.run(Trivial.run, 5) == 5
        with pytest.raises(WorkflowFailureError) as failure:
            await g.run(Trivial.run, 6)
        details = breach_of(failure.value)
        assert (details.limit, details.observed, details.ceiling) == (
            "max_tool_calls_per_task",
            6,
            5,
        )


async def test_tool_marked_as_model_call_is_not_a_tool_call(governed) -> None:
    policy = Policy.from_yaml(
        """
agents: {Trivial: {quotas: {max_tool_calls_per_task: 1}}}
tools: {noop: {counts_as_tool_call: false}}
"""
    )
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        assert await g.run(Trivial.run, 4) == 4


async def test_subtask_ceiling(governed) -> None:
    policy = Policy.from_yaml("agents: {Node: {quotas: {max_subtasks_per_task: 2}}}")
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        with pytest.raises(WorkflowFailureError) as failure:
            await g.run(Node.run, Tree(children=3, levels=2))
        details = breach_of(failure.value)
        assert (details.limit, details.observed, details.ceiling) == ("max_subtasks_per_task", 3, 2)


async def test_child_workflow_ceiling_covers_the_whole_subtree(governed) -> None:
    policy = Policy.from_yaml("agents: {Node: {quotas: {max_child_workflows_per_task: 3}}}")
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        # root -> 2 children -> 2 grandchildren each = 6 descendants > 3
        with pytest.raises(WorkflowFailureError) as failure:
            await g.run(Node.run, Tree(children=2, levels=3))
        details = breach_of(failure.value)
        assert details.limit == "max_child_workflows_per_task"
        # the root's ceiling, or a child's share of it carved under `child_allowance: auto`
        assert 1 <= details.ceiling <= 3


async def test_wall_time_is_checked_before_each_dispatch(governed) -> None:
    policy = Policy.from_yaml("agents: {Napper: {quotas: {max_wall_time_per_task: 3s}}}")
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        assert await g.run(Napper.run, Nap(seconds=0.1)) == "awake"
        with pytest.raises(WorkflowFailureError) as failure:
            await g.run(Napper.run, Nap(seconds=3.5))
        details = breach_of(failure.value)
        assert details.limit == "max_wall_time_per_task"
        assert details.resource == "wall_time_s"
        assert details.ceiling == 3 and details.observed >= 3.5


async def test_continue_as_new_does_not_get_a_fresh_budget(governed) -> None:
    policy = Policy.from_yaml(
        """
agents: {Continuer: {quotas: {max_tokens_per_task: 1000}}}
tools: {spend: {estimate: {tokens: 300}}}
"""
    )
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        # 300 per run: runs 1-3 spend 900; run 4 cannot reserve 300 more
        with pytest.raises(WorkflowFailureError) as failure:
            await g.run(Continuer.run, Chain(tokens=300, runs_left=5))
        details = breach_of(failure.value)
        assert details.committed == 900 and details.observed == 1200


async def test_interceptor_assembled_by_hand(env: WorkflowEnvironment) -> None:
    policy = Policy.from_yaml(
        """
agents: {Spender: {quotas: {max_tokens_per_task: 250}}}
tools: {spend: {estimate: {tokens: 100}}}
"""
    )
    interceptor = GovernanceInterceptor(policy)
    client = Client(
        env.client.service_client, namespace=env.client.namespace, interceptors=[interceptor]
    )
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("temporal_governor")
    )
    RECORDED.append(Recorded("hand-assembled", policy, ALL_WORKFLOWS))
    async with Worker(
        client,
        task_queue="hand-assembled",
        workflows=ALL_WORKFLOWS,
        activities=ALL_ACTIVITIES,
        workflow_runner=runner,
    ):
        with attribution(tenant="globex"):
            handle = await client.start_workflow(
                Spender.run, Steps(tokens=[100] * 5), id="hand-1", task_queue="hand-assembled"
            )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        details = breach_of(failure.value)
        assert details.tenant == "globex"
        assert details.committed == 200
        snapshot = await handle.query(BUDGET_QUERY)
        assert snapshot["tenant"] == "globex"
        assert snapshot["limits"][0]["remaining"] == 50
