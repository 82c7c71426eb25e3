"""Workflows and activities for the shared-ledger tests (importable for the sandbox)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from temporal_governor.activity import report_usage

IN_FLIGHT = {"now": 0, "max": 0}


@activity.defn
async def tracked(tokens: int) -> int:
    """Reports tokens; records how many of its kind run at once in this process."""
    IN_FLIGHT["now"] += 1
    IN_FLIGHT["max"] = max(IN_FLIGHT["max"], IN_FLIGHT["now"])
    try:
        report_usage(output_tokens=tokens)
        await asyncio.sleep(0.2)
        return tokens
    finally:
        IN_FLIGHT["now"] -= 1


@workflow.defn
class FanOut:
    """Dispatches `width` activities at once."""

    @workflow.run
    async def run(self, width: int) -> int:
        results = await asyncio.gather(
            *(
                workflow.execute_activity(tracked, 10, start_to_close_timeout=timedelta(seconds=20))
                for _ in range(width)
            )
        )
        return sum(results)


@workflow.defn
class Paced:
    """Dispatches `count` activities one after another, recording workflow time of each."""

    @workflow.run
    async def run(self, count: int) -> list[float]:
        times = []
        for _ in range(count):
            times.append(workflow.now().timestamp())
            await workflow.execute_activity(
                tracked, 100, start_to_close_timeout=timedelta(seconds=20)
            )
        return times


SHARED_WORKFLOWS = [FanOut, Paced]
SHARED_ACTIVITIES = [tracked]


STARTED = {"spend_then_wait": 0, "cleanup": 0}


@activity.defn
async def spend_then_wait(tokens: int) -> int:
    """Reports tokens at once, then works (heartbeating) until it is cancelled."""
    STARTED["spend_then_wait"] += 1
    report_usage(output_tokens=tokens)
    for _ in range(600):
        activity.heartbeat()
        await asyncio.sleep(0.05)
    return tokens


@activity.defn
async def cleanup() -> None:
    """What agent code runs in its ``finally`` when it is cancelled."""
    STARTED["cleanup"] += 1


@workflow.defn
class CancellableFanOut:
    """Dispatches `width` long activities at once; cleans up in `finally` when cancelled."""

    @workflow.run
    async def run(self, width: int) -> int:
        try:
            results = await asyncio.gather(
                *(
                    workflow.execute_activity(
                        spend_then_wait,
                        100,
                        start_to_close_timeout=timedelta(seconds=60),
                        heartbeat_timeout=timedelta(seconds=5),
                    )
                    for _ in range(width)
                )
            )
            return sum(results)
        finally:
            await workflow.execute_activity(cleanup, start_to_close_timeout=timedelta(seconds=10))


@workflow.defn(name="wedged-ledger-stand-in")
class Wedged:
    """A workflow whose every workflow task fails: stands in for a ledger that cannot go on."""

    @workflow.run
    async def run(self, state: dict | None = None) -> None:
        raise RuntimeError("this workflow task always fails")


SHARED_WORKFLOWS.append(CancellableFanOut)
SHARED_ACTIVITIES.extend([spend_then_wait, cleanup])
