"""Workflows and activities of the control-plane tests (kill, resume, backpressure, override)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

import temporal_governor.workflow
from temporal_governor.activity import emit_backpressure, report_usage


@dataclass
class Step:
    tokens: int = 10
    seconds: float = 0.0
    backpressure_ms: int = 0
    """If set, the step emits backpressure with this retry_after_ms."""


@activity.defn
async def step(s: Step) -> int:
    """Reports its tokens, taking `seconds` (heartbeating, so a cancel stops it)."""
    end = asyncio.get_running_loop().time() + s.seconds
    while asyncio.get_running_loop().time() < end:
        activity.heartbeat()
        await asyncio.sleep(0.05)
    report_usage(output_tokens=s.tokens)
    if s.backpressure_ms:
        emit_backpressure(
            retry_after_ms=s.backpressure_ms,
            duration_ms=60_000,
            reason="provider said 429",
            source="provider-x",
        )
    return s.tokens


_STEP = {"start_to_close_timeout": timedelta(seconds=30), "heartbeat_timeout": timedelta(seconds=2)}


@dataclass
class Loop:
    steps: int
    tokens: int = 10
    seconds: float = 0.0
    estimate: int | None = None
    backpressure_at: int | None = None
    """Index of the step that emits backpressure (500 ms)."""


@workflow.defn
class Looper:
    """Runs `steps` activities one after the other; returns the tokens they reported."""

    @workflow.run
    async def run(self, loop: Loop) -> int:
        total = 0
        for i in range(loop.steps):
            s = Step(
                tokens=loop.tokens,
                seconds=loop.seconds,
                backpressure_ms=500 if i == loop.backpressure_at else 0,
            )
            if loop.estimate is not None:
                with temporal_governor.workflow.estimate(tokens=loop.estimate):
                    total += await workflow.execute_activity(step, s, **_STEP)
            else:
                total += await workflow.execute_activity(step, s, **_STEP)
        return total


@dataclass
class Branch:
    levels: int
    loop: Loop


@workflow.defn
class Brancher:
    """Loops its own steps while one child (one level down) does the same."""

    @workflow.run
    async def run(self, branch: Branch) -> dict[str, Any]:
        child: Any = None
        if branch.levels > 1:
            child = await workflow.start_child_workflow(
                Brancher.run,
                Branch(levels=branch.levels - 1, loop=branch.loop),
                id=f"{workflow.info().workflow_id}.c",
            )
        own = await workflow.execute_child_workflow(
            Looper.run, branch.loop, id=f"{workflow.info().workflow_id}.loop"
        )
        below = await child if child is not None else None
        return {"own": own, "below": below}


@workflow.defn
class Relay:
    """Starts one Looper child and waits for it (backpressure reaches this parent)."""

    @workflow.run
    async def run(self, loop: Loop) -> dict[str, Any]:
        tokens = await workflow.execute_child_workflow(
            Looper.run, loop, id=f"{workflow.info().workflow_id}.child"
        )
        pressure = temporal_governor.workflow.current_backpressure()
        return {
            "tokens": tokens,
            "source": pressure.source if pressure else None,
            "reduce_batch_to": pressure.reduce_batch_to if pressure else None,
        }


@workflow.defn
class Fanner:
    """Waits for the `go` signal, then runs `steps` activities at once."""

    def __init__(self) -> None:
        self.go = False

    @workflow.signal
    def start_now(self) -> None:
        self.go = True

    @workflow.run
    async def run(self, loop: Loop) -> int:
        await workflow.wait_condition(lambda: self.go)
        s = Step(tokens=loop.tokens, seconds=loop.seconds)
        done = await asyncio.gather(
            *(workflow.execute_activity(step, s, **_STEP) for _ in range(loop.steps))
        )
        return sum(done)


@dataclass
class Hops:
    runs_left: int
    nap: float = 1.0


@workflow.defn
class Hopper:
    """One step, a nap (no dispatch), then continue as new, `runs_left` times."""

    @workflow.run
    async def run(self, hops: Hops) -> int:
        await workflow.execute_activity(step, Step(), **_STEP)
        await workflow.sleep(hops.nap)
        if hops.runs_left <= 1:
            return 10
        workflow.continue_as_new(Hops(hops.runs_left - 1, hops.nap))


@workflow.defn
class Canceller:
    """Starts a step and cancels its handle at once, then runs one more step."""

    @workflow.run
    async def run(self) -> int:
        handle = workflow.start_activity(step, Step(), **_STEP)
        handle.cancel()
        return await workflow.execute_activity(step, Step(), **_STEP)


CONTROL_WORKFLOWS = [Looper, Brancher, Relay, Fanner, Hopper, Canceller]
CONTROL_ACTIVITIES = [step]
