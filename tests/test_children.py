"""Children and the default ``child_allowance: auto`` (#15 item 4), on the dev server.

Under a policy far from its ceiling, parallel children (a gather, a window of handles,
Temporal's ``batch_sliding_window`` shape) are never refused; a tree that would pass the
root's ceiling is halted, and what its activities really reported (``WITNESS``, counted
outside the governor) never passes it.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.worker import Replayer

from children_workflows import (
    CHILDREN_ACTIVITIES,
    CHILDREN_WORKFLOWS,
    WITNESS,
    Batch,
    Fan,
    FanOut,
    Level,
    SlidingWindow,
    TreeNode,
    Work,
)
from conftest import eventually
from temporal_governor import BreachDetails, GovernorPlugin, Policy
from temporal_governor.interceptors._run import CHILD_SHARE_PATCH
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot

# the case: one million tokens per task for every workflow type, leaves that
# spend a few hundred; nowhere near the ceiling
GENEROUS = """
defaults:
  quotas: { max_tokens_per_task: 1_000_000 }
tools:
  leaf_spend: { estimate: { tokens: 1000 } }
"""


async def budget(handle: WorkflowHandle) -> BudgetSnapshot:  # type: ignore[type-arg]
    return BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))


def refusals(snap: BudgetSnapshot) -> list[str]:
    return [f"{e.kind} {e.key}" for e in snap.recent_events if e.kind in ("refuse", "breach")]


async def settled(client: Client, task_queue: str) -> None:
    """Wait until no run of the task queue is open (children cancelled by a halt included)."""

    async def nothing_open() -> bool:
        query = f'TaskQueue="{task_queue}" AND ExecutionStatus="Running"'
        return [wf async for wf in client.list_workflows(query)] == []

    await eventually(nothing_open, timeout=60)


# -- parallel children under a generous policy are never refused ------------------------


# ``auto`` carves the k-th of a gather F / (k (k + 1)); children that need at most 1,000
# (the leaf activity's estimate) fit while N (N + 1) 1,000 <= 1,000,000: N <= 31
@pytest.mark.parametrize("children", [10, 30])
async def test_gathered_children_under_a_generous_policy_are_never_refused(
    governed, children: int
) -> None:
    async with governed(Policy.from_yaml(GENEROUS), CHILDREN_WORKFLOWS, CHILDREN_ACTIVITIES) as g:
        handle = await g.start(FanOut.run, Fan(children=children, work=Work(tokens=300)))
        assert await handle.result() == [300] * children
        snap = await budget(handle)
        assert refusals(snap) == []
        assert snap.committed["tokens"] == 300 * children
        assert snap.committed["subtasks"] == children
        assert snap.in_flight == 0 and snap.reserved == {}
        assert sum(WITNESS[handle.id]) == 300 * children


async def test_a_wide_fan_out_of_children_with_their_own_quota_is_never_refused(
    governed,
) -> None:
    """A child is never carved more than its own quota: F / (2 Q) of them get all of it."""
    policy = Policy.from_yaml(
        GENEROUS + "agents:\n  Leaf: { quotas: { max_tokens_per_task: 5000 } }\n"
    )
    async with governed(policy, CHILDREN_WORKFLOWS, CHILDREN_ACTIVITIES) as g:
        handle = await g.start(FanOut.run, Fan(children=100, work=Work(tokens=300)))
        assert await handle.result() == [300] * 100
        snap = await budget(handle)
        assert refusals(snap) == []
        assert snap.committed["tokens"] == 30_000
        last = await budget(g.client.get_workflow_handle(f"{handle.id}.99"))
        assert _allowance_of(last, handle.id) == 5000


async def test_the_former_default_still_refuses_the_second_parallel_child(governed) -> None:
    """An explicit ``child_allowance: 1.0`` works as before: the first child takes it all."""
    policy = Policy.from_yaml(
        """
defaults:
  quotas: { max_tokens_per_task: 1_000_000 }
  child_allowance: 1.0
tools:
  leaf_spend: { estimate: { tokens: 1000 } }
"""
    )
    async with governed(policy, CHILDREN_WORKFLOWS, CHILDREN_ACTIVITIES) as g:
        handle = await g.start(FanOut.run, Fan(children=2, work=Work(tokens=300)))
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        details = BreachDetails.from_error(failure.value)
        assert details is not None
        assert details.dispatch == "child Leaf"
        assert details.limit == "max_tokens_per_task"
        assert details.committed == 0  # nowhere near the ceiling, and refused


async def test_children_started_as_others_finish_are_never_refused(governed) -> None:
    async with governed(Policy.from_yaml(GENEROUS), CHILDREN_WORKFLOWS, CHILDREN_ACTIVITIES) as g:
        handle = await g.start(FanOut.run, Fan(children=30, window=5, work=Work(tokens=300)))
        assert sorted(await handle.result()) == [300] * 30
        snap = await budget(handle)
        assert refusals(snap) == []
        assert snap.committed["tokens"] == 9000
        assert sum(WITNESS[handle.id]) == 9000


async def test_the_batch_sliding_window_shape_is_never_refused(governed) -> None:
    """Abandoned children that signal completion, continue-as-new after each page."""
    async with governed(Policy.from_yaml(GENEROUS), CHILDREN_WORKFLOWS, CHILDREN_ACTIVITIES) as g:
        batch = Batch(records=30, window=5, page_size=10, work=Work(tokens=300))
        handle = await g.start(SlidingWindow.run, batch)
        assert await handle.result() == 30
        await settled(g.client, g.task_queue)
        assert sum(WITNESS[handle.id]) == 9000
        runs = await _runs_of(g.client, handle.id, g.task_queue, 3)  # two continue-as-new
        for run_id in runs:
            snap = await budget(g.client.get_workflow_handle(handle.id, run_id=run_id))
            assert refusals(snap) == []
        for record in range(30):
            child = g.client.get_workflow_handle(f"{handle.id}.record-{record}")
            assert await child.result() == 300


async def _runs_of(client: Client, workflow_id: str, task_queue: str, count: int) -> list[str]:
    runs: list[str] = []

    async def listed() -> bool:
        query = f'WorkflowId="{workflow_id}" AND TaskQueue="{task_queue}"'
        runs[:] = [wf.run_id async for wf in client.list_workflows(query)]
        return len(runs) == count

    await eventually(listed)
    return runs


# -- the rule, exactly -----------------------------------------------------------------


def _allowance_of(snap: BudgetSnapshot, root: str) -> float:
    carved = [lim for lim in snap.limits if lim.scope == f"run FanOut/{root}"]
    assert len(carved) == 1, snap.limits
    return carved[0].ceiling


@pytest.mark.parametrize(
    ("fan_out", "carves"),
    [
        # auto: 1/2 of what is left, then 1/3 of the rest (one child running), then 1/4
        ("FanOut: { quotas: { max_tokens_per_task: 1200 } }", [600, 200, 100]),
        # auto, but never more than the child's own quota: it could not spend more
        (
            "FanOut: { quotas: { max_tokens_per_task: 1200 } }\n"
            "  Leaf: { quotas: { max_tokens_per_task: 150 } }",
            [150, 150, 150],
        ),
        # an explicit fraction is carved exactly as before
        (
            "FanOut: { quotas: { max_tokens_per_task: 1200 }, child_allowance: 0.5 }",
            [600, 300, 150],
        ),
        # with an estimate: the share is of what is left after it, and at least the estimate
        (
            "FanOut: { quotas: { max_tokens_per_task: 1200 } }\n"
            "  Leaf: { estimate: { tokens: 200 } }",
            [500, 200, 200],
        ),
    ],
    ids=["auto", "auto-capped-by-child-quota", "fraction-0.5", "auto-with-estimate"],
)
async def test_auto_carves_follow_the_documented_rule(
    governed, fan_out: str, carves: list[float]
) -> None:
    policy = Policy.from_yaml(f"agents:\n  {fan_out}\n")
    async with governed(policy, CHILDREN_WORKFLOWS, CHILDREN_ACTIVITIES) as g:
        handle = await g.start(FanOut.run, Fan(children=3, work=Work(hold_s=0.5)))
        await handle.result()
        got = [
            _allowance_of(await budget(g.client.get_workflow_handle(f"{handle.id}.{i}")), handle.id)
            for i in range(3)
        ]
        assert got == pytest.approx(carves)
        assert sum(carves) <= 1200


# -- the ceiling still holds for the whole tree ------------------------------------------

TIGHT = """
agents:
  FanOut: { quotas: { max_tokens_per_task: 10_000 } }
  TreeNode: { quotas: { max_tokens_per_task: 10_000 } }
tools:
  leaf_spend: { estimate: { tokens: 2000 } }
"""


@pytest.mark.parametrize(
    ("workflow", "arg"),
    [
        (FanOut.run, Fan(children=10, work=Work(tokens=2000))),
        (FanOut.run, Fan(children=10, work=Work(tokens=2000), own_tokens=2000)),
        (FanOut.run, Fan(children=20, window=3, work=Work(tokens=2000))),
        (TreeNode.run, Level(tokens=2000, children=4, levels=3)),
    ],
    ids=["gather", "gather-after-own-spend", "window", "three-levels"],
)
async def test_a_tree_past_the_ceiling_is_halted_and_never_passes_it(
    governed, workflow: object, arg: object
) -> None:
    async with governed(Policy.from_yaml(TIGHT), CHILDREN_WORKFLOWS, CHILDREN_ACTIVITIES) as g:
        handle = await g.start(workflow, arg)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        details = BreachDetails.from_error(failure.value)
        assert details is not None, repr(failure.value)
        root_type = "TreeNode" if isinstance(arg, Level) else "FanOut"
        assert details.scope == f"run {root_type}/{handle.id}"  # the root's limit, carved down
        assert details.ceiling <= 10_000
        await settled(g.client, g.task_queue)
        assert sum(WITNESS.get(handle.id, [])) <= 10_000
        snap = await budget(handle)
        assert snap.committed["tokens"] <= 10_000


# -- replay of histories recorded under the former default ------------------------------


def _patches(history: WorkflowHistory) -> list[str]:
    """The patch ids of the history's patch markers, in order."""
    ids = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            attributes = event.marker_recorded_event_attributes
            if attributes.marker_name == "core_patch" and "patch-data" in attributes.details:
                ids.append(json.loads(attributes.details["patch-data"].payloads[0].data)["id"])
    return ids


async def test_a_history_of_the_former_default_replays_under_auto(governed) -> None:
    """A run carved under ``1.0`` (as every run was before ``auto``) replays under ``auto``.

    Without the ``CHILD_SHARE_PATCH`` marker check the replay would carve half, start
    the second child where the history refused it, and fail as non-deterministic.
    """
    limited = "agents:\n  FanOut: { quotas: { max_tokens_per_task: 1000 } }\n"
    former = Policy.from_yaml(limited.replace("1000 } }", "1000 }, child_allowance: 1.0 }"))
    auto = Policy.from_yaml(limited)
    async with governed(former, CHILDREN_WORKFLOWS, CHILDREN_ACTIVITIES) as g:
        handle = await g.start(FanOut.run, Fan(children=2, work=Work()))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        refused = await handle.fetch_history()
        await settled(g.client, g.task_queue)
    assert CHILD_SHARE_PATCH not in _patches(refused)
    replayer = Replayer(workflows=CHILDREN_WORKFLOWS, plugins=[GovernorPlugin(auto)])
    await replayer.replay_workflow(refused)

    async with governed(auto, CHILDREN_WORKFLOWS, CHILDREN_ACTIVITIES) as g:
        handle = await g.start(FanOut.run, Fan(children=2, work=Work()))
        assert await handle.result() == [0, 0]
        history = await handle.fetch_history()
    assert _patches(history).count(CHILD_SHARE_PATCH) == 1  # recorded once, at the first carve
    await replayer.replay_workflow(history)


async def test_a_parent_without_carved_limits_records_no_marker(governed) -> None:
    async with governed(Policy.from_dict({}), CHILDREN_WORKFLOWS, CHILDREN_ACTIVITIES) as g:
        handle = await g.start(FanOut.run, Fan(children=3, work=Work()), id=f"bare-{uuid.uuid4()}")
        assert await handle.result() == [0, 0, 0]
        assert CHILD_SHARE_PATCH not in _patches(await handle.fetch_history())


async def test_parallel_trees_of_a_generous_policy_complete(governed) -> None:
    """Three levels of gathered children (1 + 4 + 16 runs), all spending, none refused."""
    async with governed(Policy.from_yaml(GENEROUS), CHILDREN_WORKFLOWS, CHILDREN_ACTIVITIES) as g:
        handles = [
            await g.start(TreeNode.run, Level(tokens=100, children=4, levels=3)) for _ in range(2)
        ]
        assert await asyncio.gather(*(h.result() for h in handles)) == [2100, 2100]
        for handle in handles:
            snap = await budget(handle)
            assert refusals(snap) == []
            assert snap.committed["tokens"] == 2100
            assert snap.committed["child_workflows"] == 20
