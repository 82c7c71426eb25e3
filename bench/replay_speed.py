"""Replay speed of incident review on a ~10,000-event governed history.

Builds one governed workflow history of about 10,000 events on the dev server (batches of
parallel activities that report tokens) and the ungoverned history of the same workflow,
then, in the same run, replays the ungoverned one with the plain Replayer and the governed
one with `temporal_governor.review.review` (governor in review mode, every decision rebuilt,
report built), several rounds, and prints events per second and the ratio.

    .venv/bin/python bench/replay_speed.py [--events 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

with workflow.unsafe.imports_passed_through():
    from temporal_governor import GovernorPlugin, Policy, report_usage
    from temporal_governor.review import review

POLICY = Policy.from_yaml(
    """
agents:
  Batches: { quotas: { max_tokens_per_task: 1_000_000_000, max_tool_calls_per_task: 1_000_000 } }
tools: { work: { estimate: { tokens: 100 } } }
"""
)
BATCH = 50


@activity.defn
async def work(i: int) -> int:
    report_usage(input_tokens=10 + i % 7, output_tokens=20 + i % 11, model="m")
    return i


@workflow.defn
class Batches:
    @workflow.run
    async def run(self, batches: int) -> int:
        done = 0
        for b in range(batches):
            await asyncio.gather(
                *(
                    workflow.execute_activity(
                        work, b * BATCH + i, start_to_close_timeout=timedelta(seconds=30)
                    )
                    for i in range(BATCH)
                )
            )
            done += BATCH
        return done


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    batches = max(1, args.events // (3 * BATCH + 6))
    binary = Path(sys.executable).parent / "temporal"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary), dev_server_log_level="error"
    )
    try:
        client = Client(
            env.client.service_client,
            namespace=env.client.namespace,
            plugins=[GovernorPlugin(POLICY)],
        )
        async with (
            Worker(client, task_queue="bench", workflows=[Batches], activities=[work]),
            Worker(env.client, task_queue="plain", workflows=[Batches], activities=[work]),
        ):
            handle = await client.start_workflow(
                Batches.run, batches, id="replay-bench", task_queue="bench"
            )
            plain_handle = await env.client.start_workflow(
                Batches.run, batches, id="replay-plain", task_queue="plain"
            )
            await handle.result()
            await plain_handle.result()
        history = await handle.fetch_history()
        plain_history = await plain_handle.fetch_history()
        events, plain_events = len(history.events), len(plain_history.events)
        print(f"governed history: {events} events, {batches * BATCH} governed activities")
        print(f"ungoverned history of the same workflow: {plain_events} events")
        plain = Replayer(workflows=[Batches])
        plain_times, review_times, fast_times = [], [], []
        decisions = 0
        for _ in range(args.rounds):
            started = time.perf_counter()
            await plain.replay_workflow(plain_history)
            plain_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            report = await review(
                "replay-bench", policy=POLICY, workflows=[Batches], histories=[history]
            )
            review_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            await review(
                "replay-bench",
                policy=POLICY,
                workflows=[Batches],
                histories=[history],
                sandboxed=False,
            )
            fast_times.append(time.perf_counter() - started)
            decisions = len(report.decisions)
        plain_s, review_s = statistics.median(plain_times), statistics.median(review_times)
        print(f"{'':<34} {'median s':>9} {'events/s':>10}")
        print(
            f"{'ungoverned, plain Replayer':<34} {plain_s:>9.3f} {plain_events / plain_s:>10,.0f}"
        )
        print(
            f"{'review() with governor + report':<34} {review_s:>9.3f} {events / review_s:>10,.0f}"
        )
        fast_s = statistics.median(fast_times)
        print(f"{'review(sandboxed=False)':<34} {fast_s:>9.3f} {events / fast_s:>10,.0f}")
        print(
            f"decisions rebuilt: {decisions}; review / plain replay ratio: {review_s / plain_s:.2f}"
        )
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
