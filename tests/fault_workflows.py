"""Workflows and activities of the fault suite (tests/test_faults.py), importable for the sandbox.

The activity `fault_spend` reports usage with `report_usage` and then appends what it
reported to a witness file (one JSON line per event, appended and flushed), so the
tests know what the activities really reported even when the workers are other OS
processes, are killed, or lose their server. Lines of the witness:

    {"kind": "started",  ...}   an attempt began (before anything is reported)
    {"kind": "reported", ...}   the attempt reported `tokens` (report_usage has returned)
    {"kind": "cancelled", ...}  the attempt saw its cancellation and returns at once

each with `workflow_id`, `run_id`, `activity_id`, `attempt`, `tokens` and `pid`.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from temporal_governor.activity import report_usage

FAULT_ACTIVITY = "fault_spend"


@dataclass
class Job:
    """One call of `fault_spend`."""

    tokens: int
    witness: str
    """The witness file (a path in the test's tmp_path)."""
    wait_s: float = 0.0
    """First attempt only: heartbeat this long *before* reporting (a window to kill it in)."""
    hold_s: float = 0.0
    """First attempt only: heartbeat this long *after* reporting; a cancel ends it at once
    and the activity completes normally, so its usage comes back with the result."""


@dataclass
class Plan:
    """What a `FaultAgent` run does: batches one after another, each batch in parallel."""

    batches: list[list[Job]] = field(default_factory=list)
    wait_for_go: bool = False
    """Wait for the `go` signal before the first batch."""


def witness(path: str, kind: str, tokens: int = 0) -> None:
    """Append one event of the current activity attempt to the witness file."""
    info = activity.info()
    line = json.dumps(
        {
            "kind": kind,
            "workflow_id": info.workflow_id,
            "run_id": info.workflow_run_id,
            "activity_id": info.activity_id,
            "attempt": info.attempt,
            "tokens": tokens,
            "pid": os.getpid(),
        }
    )
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()


async def _heartbeat_for(seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        activity.heartbeat()
        left = deadline - loop.time()
        if left <= 0:
            return
        await asyncio.sleep(min(0.2, left))


@activity.defn(name=FAULT_ACTIVITY)
async def fault_spend(job: Job) -> int:
    """Reports `job.tokens` once per attempt and witnesses it; returns the attempt number."""
    attempt = activity.info().attempt
    witness(job.witness, "started")
    if attempt == 1 and job.wait_s > 0:
        await _heartbeat_for(job.wait_s)  # a kill here leaves nothing reported
    report_usage(output_tokens=job.tokens)
    witness(job.witness, "reported", job.tokens)
    if attempt == 1 and job.hold_s > 0:
        try:
            await _heartbeat_for(job.hold_s)
        except asyncio.CancelledError:
            witness(job.witness, "cancelled")
            return attempt  # completes normally: the usage travels on the result
    return attempt


_ACTIVITY_OPTIONS = {
    "start_to_close_timeout": timedelta(seconds=60),
    "heartbeat_timeout": timedelta(seconds=2),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(milliseconds=100),
        maximum_interval=timedelta(seconds=1),
        maximum_attempts=10,
    ),
    # a cancel waits for the activity, which completes at once with its usage: the
    # usage of a cancelled run is exactly known, so the tests can ask for exactness
    "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
}


@workflow.defn
class FaultAgent:
    """Runs the plan's batches one after another, the jobs of a batch in parallel."""

    def __init__(self) -> None:
        self.go = False

    @workflow.signal
    def proceed(self) -> None:
        self.go = True

    @workflow.run
    async def run(self, plan: Plan) -> int:
        if plan.wait_for_go:
            await workflow.wait_condition(lambda: self.go)
        calls = 0
        for batch in plan.batches:
            await asyncio.gather(
                *(
                    workflow.execute_activity(fault_spend, job, **_ACTIVITY_OPTIONS)  # type: ignore[arg-type]
                    for job in batch
                )
            )
            calls += len(batch)
        return calls


@dataclass
class TreePlan:
    """A parent with two children started in parallel."""

    steady: Plan
    """The first child: spends within its carve."""
    breacher: Plan
    """The second child: waits for `go`, then spends past its carve."""


@workflow.defn
class FaultTree:
    """Starts `steady`, then `breacher`, and waits for both (`<id>.steady`, `<id>.breacher`)."""

    @workflow.run
    async def run(self, plan: TreePlan) -> list[int]:
        me = workflow.info().workflow_id
        steady = await workflow.start_child_workflow(FaultAgent.run, plan.steady, id=f"{me}.steady")
        breacher = await workflow.start_child_workflow(
            FaultAgent.run, plan.breacher, id=f"{me}.breacher"
        )
        return list(await asyncio.gather(steady, breacher))


FAULT_WORKFLOWS = [FaultAgent, FaultTree]
FAULT_ACTIVITIES = [fault_spend]
