"""Fan-out workflows for tests/test_children.py (importable: the sandbox re-imports them).

``Leaf`` children spend through the ``leaf_spend`` activity, which appends every amount it
reports to ``WITNESS`` under the root workflow id: what the activities really reported,
counted outside the governor, so a test can hold the tree's real total against the root's
ceiling without trusting the governor's own numbers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ParentClosePolicy

from temporal_governor.activity import current_context, report_usage

_TIMEOUT = timedelta(seconds=30)
_ONCE = RetryPolicy(maximum_attempts=1)

WITNESS: dict[str, list[int]] = {}
"""Root workflow id -> every token amount an activity of its tree reported."""


@activity.defn
async def leaf_spend(tokens: int) -> int:
    """Reports ``tokens`` and records them in ``WITNESS`` under the tree's root."""
    context = current_context()
    root = context.chain[0].workflow_id if context and context.chain else "?"
    report_usage(output_tokens=tokens)
    WITNESS.setdefault(root, []).append(tokens)
    return tokens


async def _spend(tokens: int) -> int:
    return await workflow.execute_activity(
        leaf_spend, tokens, start_to_close_timeout=_TIMEOUT, retry_policy=_ONCE
    )


@dataclass
class Work:
    """What one leaf does: spend ``tokens`` (if any), then sleep ``hold_s`` seconds."""

    tokens: int = 0
    hold_s: float = 0.0
    parent_id: str | None = None
    """Signal ``report_completion`` to this workflow when done (the sliding-window sample)."""
    record: int = 0


@workflow.defn
class Leaf:
    @workflow.run
    async def run(self, work: Work) -> int:
        spent = 0
        if work.tokens:
            spent = await _spend(work.tokens)
        if work.hold_s:
            await workflow.sleep(work.hold_s)
        if work.parent_id:
            parent = workflow.get_external_workflow_handle(work.parent_id)
            await parent.signal("report_completion", work.record)
        return spent


@dataclass
class Fan:
    """A parent's fan-out: ``children`` leaves, all at once or ``window`` at a time."""

    children: int = 10
    work: Work = field(default_factory=Work)
    window: int = 0
    """0: ``asyncio.gather`` of all of them; n: at most n in flight, a new one as one ends."""
    own_tokens: int = 0
    """The parent's own spend before it fans out."""


@workflow.defn
class FanOut:
    """Starts leaves in parallel: a gather of all of them, or a sliding window of handles."""

    @workflow.run
    async def run(self, fan: Fan) -> list[int]:
        me = workflow.info().workflow_id
        if fan.own_tokens:
            await _spend(fan.own_tokens)
        if not fan.window:
            return list(
                await asyncio.gather(
                    *(
                        workflow.execute_child_workflow(Leaf.run, fan.work, id=f"{me}.{i}")
                        for i in range(fan.children)
                    )
                )
            )
        results: list[int] = []
        pending: set[asyncio.Future[int]] = set()
        for i in range(fan.children):
            if len(pending) >= fan.window:
                done, rest = await workflow.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                results += [d.result() for d in done]
                pending = set(rest)
            pending.add(await workflow.start_child_workflow(Leaf.run, fan.work, id=f"{me}.{i}"))
        if pending:
            done, _ = await workflow.wait(pending)
            results += [d.result() for d in done]
        return results


@dataclass
class Batch:
    """The input of ``SlidingWindow``, shaped after Temporal's ``batch_sliding_window``."""

    records: int = 30
    window: int = 5
    page_size: int = 10
    offset: int = 0
    work: Work = field(default_factory=Work)
    in_flight: list[int] = field(default_factory=list)
    done: int = 0


@workflow.defn
class SlidingWindow:
    """Temporal's ``batch_sliding_window`` sample in miniature.

    One child per record, at most ``window`` in flight, started with
    ``ParentClosePolicy.ABANDON``; each child signals ``report_completion`` when it is done
    (the parent never awaits the child handles), and after each page of records the
    parent continues as new, carrying the records still in flight.
    """

    @workflow.init
    def __init__(self, batch: Batch) -> None:
        # from the input at once: a child's completion signal sent while the previous
        # run continued as new arrives with the start, before the run method begins
        self.in_flight: set[int] = set(batch.in_flight)
        self.done = batch.done

    @workflow.signal
    def report_completion(self, record: int) -> None:
        if record in self.in_flight:
            self.in_flight.discard(record)
            self.done += 1

    @workflow.run
    async def run(self, batch: Batch) -> int:
        me = workflow.info().workflow_id
        end = min(batch.records, batch.offset + batch.page_size)
        for record in range(batch.offset, end):
            await workflow.wait_condition(lambda: len(self.in_flight) < batch.window)
            work = Work(
                tokens=batch.work.tokens, hold_s=batch.work.hold_s, parent_id=me, record=record
            )
            # in flight before the start: a child that ends at once can signal its
            # completion in the same activation as its start, and signals come first
            self.in_flight.add(record)
            await workflow.start_child_workflow(
                Leaf.run,
                work,
                id=f"{me}.record-{record}",
                parent_close_policy=ParentClosePolicy.ABANDON,
            )
        if end < batch.records:
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(
                Batch(
                    records=batch.records,
                    window=batch.window,
                    page_size=batch.page_size,
                    offset=end,
                    work=batch.work,
                    in_flight=sorted(self.in_flight),
                    done=self.done,
                )
            )
        await workflow.wait_condition(lambda: not self.in_flight)
        return self.done


@dataclass
class Level:
    """A tree: every node spends ``tokens``, then gathers ``children`` nodes below it."""

    tokens: int = 0
    children: int = 0
    levels: int = 1


@workflow.defn
class TreeNode:
    @workflow.run
    async def run(self, level: Level) -> int:
        me = workflow.info().workflow_id
        spent = 0
        if level.tokens:
            spent += await _spend(level.tokens)
        if level.levels > 1:
            below = Level(tokens=level.tokens, children=level.children, levels=level.levels - 1)
            spent += sum(
                await asyncio.gather(
                    *(
                        workflow.execute_child_workflow(TreeNode.run, below, id=f"{me}.{i}")
                        for i in range(level.children)
                    )
                )
            )
        return spent


CHILDREN_WORKFLOWS: list[type] = [Leaf, FanOut, SlidingWindow, TreeNode]
CHILDREN_ACTIVITIES: list[Any] = [leaf_spend]
