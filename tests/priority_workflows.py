"""Workflows for the priority-with-aging tests (importable for the sandbox)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from temporal_governor.activity import report_usage


@activity.defn
async def hold(seconds: float) -> float:
    """Holds the tool's one slot for `seconds`; reports one token."""
    report_usage(output_tokens=1)
    await asyncio.sleep(seconds)
    return seconds


_T = {"start_to_close_timeout": timedelta(seconds=60)}


@workflow.defn
class Flood:
    """Critical work: `count` dispatches back to back, each asking again at once."""

    @workflow.run
    async def run(self, count: int) -> float:
        done = 0.0
        for _ in range(count):
            done += await workflow.execute_activity(hold, 0.2, **_T)
        return done


@workflow.defn
class Trickle:
    """Background work: one dispatch; returns when it got the slot (workflow time)."""

    @workflow.run
    async def run(self) -> float:
        await workflow.execute_activity(hold, 0.2, **_T)
        return workflow.now().timestamp()


PRIORITY_WORKFLOWS = [Flood, Trickle]
PRIORITY_ACTIVITIES = [hold]
