"""How fast a kill takes effect: signal sent -> run paused (or failed), over many kills.

A governed workflow dispatches short activities (about 20 ms each) one after another; the
script waits until it has dispatched a few, sends a signed ``kill`` with ``ControlClient``
and measures, for each of ``--kills`` runs of each mode:

- ``pause``: from sending the signal to the ``governor.control`` query answering
  ``paused`` (client-observed, polled every 5 ms), and in the run's history from the
  ``WorkflowExecutionSignaled`` event to the ``WorkflowTaskCompleted`` event of the task
  that applied it (server time); and how many activities were scheduled after the signal
  event (a kill must take effect before the next dispatch: the target is 0);
- ``terminate``: from sending the signal to the run being closed as failed with
  ``GovernanceKilled``.

    .venv/bin/python bench/kill_latency.py [--kills 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from temporal_governor import GovernorPlugin, Policy
from temporal_governor.control import CONTROL_QUERY, ControlClient, ControlTarget
from temporal_governor.errors import GOVERNANCE_KILLED

POLICY = """
defaults:
  quotas: { max_tokens_per_task: 1_000_000_000, max_tool_calls_per_task: 1_000_000 }
"""


@activity.defn
async def short_call() -> None:
    await asyncio.sleep(0.02)


@workflow.defn
class Busy:
    @workflow.run
    async def run(self) -> None:
        while True:
            await workflow.execute_activity(
                short_call, start_to_close_timeout=timedelta(seconds=30)
            )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def dispatched(handle: WorkflowHandle[object, object], at_least: int) -> None:
    while True:
        history = [e async for e in handle.fetch_history_events()]
        scheduled = [
            e for e in history if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
        if len(scheduled) >= at_least:
            return
        await asyncio.sleep(0.02)


async def one_pause(
    client: Client, control: ControlClient, task_queue: str
) -> tuple[float, float, int]:
    handle = await client.start_workflow(Busy.run, id=f"busy-{uuid.uuid4()}", task_queue=task_queue)
    await dispatched(handle, 3)
    sent = time.perf_counter()
    await control.kill(ControlTarget.run(handle.id), reason="bench")
    while (await handle.query(CONTROL_QUERY))["state"] != "paused":
        await asyncio.sleep(0.005)
    observed = time.perf_counter() - sent
    await asyncio.sleep(0.3)  # give a wrongly running run time to dispatch again
    history = [e async for e in handle.fetch_history_events()]
    signal = next(
        e for e in history if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    )
    applied = next(
        e
        for e in history
        if e.event_id > signal.event_id
        and e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )
    server = (applied.event_time.ToDatetime() - signal.event_time.ToDatetime()).total_seconds()
    after = sum(
        1
        for e in history
        if e.event_id > signal.event_id
        and e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    )
    await handle.terminate("bench done")
    return observed, server, after


async def one_terminate(client: Client, control: ControlClient, task_queue: str) -> float:
    handle = await client.start_workflow(Busy.run, id=f"busy-{uuid.uuid4()}", task_queue=task_queue)
    await dispatched(handle, 3)
    sent = time.perf_counter()
    await control.kill(ControlTarget.run(handle.id), mode="terminate", reason="bench")
    try:
        await handle.result()
    except WorkflowFailureError as error:
        assert getattr(error.cause, "type", None) == GOVERNANCE_KILLED
    else:
        raise AssertionError("the run was not killed")
    return time.perf_counter() - sent


def summary(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"{name:<46} median {statistics.median(ms):7.1f} ms   p95 {percentile(ms, 0.95):7.1f} ms"
        f"   max {max(ms):7.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("TEMPORAL_GOVERNOR_KEYS", "bench=bench-secret")
    policy = Policy.from_yaml(POLICY)
    binary = Path(sys.executable).parent / "temporal"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary), dev_server_log_level="error"
    )
    try:
        client = Client(
            env.client.service_client,
            namespace=env.client.namespace,
            plugins=[GovernorPlugin(policy, telemetry=False)],
        )
        control = ControlClient(client, policy, issuer="bench")
        task_queue = f"bench-{uuid.uuid4()}"
        async with Worker(client, task_queue=task_queue, workflows=[Busy], activities=[short_call]):
            pauses = [await one_pause(client, control, task_queue) for _ in range(args.kills)]
            terminations = [
                await one_terminate(client, control, task_queue) for _ in range(args.kills)
            ]
        print(f"{args.kills} kills of each mode; runs dispatch ~20 ms activities back to back")
        print(summary("pause: signal sent -> query says paused", [p[0] for p in pauses]))
        print(summary("pause: signal event -> task that applied it", [p[1] for p in pauses]))
        print(summary("terminate: signal sent -> run failed", terminations))
        print(f"activities scheduled after the kill signal: max {max(p[2] for p in pauses)}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
