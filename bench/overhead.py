"""Per-dispatch overhead of the governor inside one workflow: governed vs ungoverned.

One workflow runs N sequential trivial activities. The same workflow runs on a governed
worker and on an ungoverned one, on the same dev server in the same process, alternating,
for several rounds; the script prints each round and the median ratio.

    .venv/bin/python bench/overhead.py [--activities 300] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from temporal_governor import GovernorPlugin, Policy

POLICY = """
defaults:
  quotas: { max_tokens_per_task: 1_000_000_000, max_tool_calls_per_task: 1_000_000 }
"""


@activity.defn
async def trivial() -> None:
    return None


@workflow.defn
class Sequential:
    @workflow.run
    async def run(self, n: int) -> int:
        for _ in range(n):
            await workflow.execute_activity(trivial, start_to_close_timeout=timedelta(seconds=30))
        return n


async def timed(client: Client, task_queue: str, n: int) -> tuple[float, float]:
    """Wall seconds of one run, and CPU seconds this process (client + worker) spent on it."""
    started, cpu = time.perf_counter(), time.process_time()
    await client.execute_workflow(
        Sequential.run, n, id=f"bench-{uuid.uuid4()}", task_queue=task_queue
    )
    return time.perf_counter() - started, time.process_time() - cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activities", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    binary = Path(sys.executable).parent / "temporal"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary), dev_server_log_level="error"
    )
    try:
        plain = env.client
        governed = Client(
            plain.service_client,
            namespace=plain.namespace,
            plugins=[GovernorPlugin(Policy.from_yaml(POLICY))],
        )
        async with (
            Worker(plain, task_queue="plain", workflows=[Sequential], activities=[trivial]),
            Worker(governed, task_queue="governed", workflows=[Sequential], activities=[trivial]),
        ):
            await timed(plain, "plain", 20)  # warm up both workers
            await timed(governed, "governed", 20)
            ratios, cpu_ratios, cpu_extra = [], [], []
            n = args.activities
            print(f"{n} sequential trivial activities per run; wall time and worker CPU time")
            print(
                f"{'round':>5} {'ungoverned s':>13} {'governed s':>11} {'ratio':>6}"
                f" {'cpu ms/dispatch':>16} {'governed':>9} {'cpu ratio':>9}"
            )
            for round_no in range(1, args.rounds + 1):
                if round_no % 2:
                    base, base_cpu = await timed(plain, "plain", n)
                    gov, gov_cpu = await timed(governed, "governed", n)
                else:
                    gov, gov_cpu = await timed(governed, "governed", n)
                    base, base_cpu = await timed(plain, "plain", n)
                ratios.append(gov / base)
                cpu_ratios.append(gov_cpu / base_cpu)
                cpu_extra.append((gov_cpu - base_cpu) / n * 1000)
                print(
                    f"{round_no:>5} {base:>13.3f} {gov:>11.3f} {gov / base:>6.3f}"
                    f" {base_cpu / n * 1000:>16.3f} {gov_cpu / n * 1000:>9.3f}"
                    f" {gov_cpu / base_cpu:>9.3f}",
                    flush=True,
                )
            print(f"median wall-time ratio governed/ungoverned: {statistics.median(ratios):.3f}")
            print(
                f"median worker-CPU ratio governed/ungoverned: {statistics.median(cpu_ratios):.3f}"
            )
            print(f"median extra worker CPU per dispatch: {statistics.median(cpu_extra):.3f} ms")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
