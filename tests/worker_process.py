"""A governed worker in an OS process of its own (tests/processes.py starts it).

    python tests/worker_process.py --address A --task-queue Q --policy-file P
        [--namespace N] [--workflows shared|faults] [--slow-activity-seconds S]
        [--sticky-timeout-seconds T]

Connects with ``GovernorPlugin(Policy.from_yaml(P))``, runs a worker with the workflows
and activities of tests/workflows.py (``shared``, for tests/test_shared_processes.py) or
of tests/fault_workflows.py (``faults``, for tests/test_faults.py), prints ``ready`` on
stdout once the worker polls, and runs until SIGTERM or SIGINT (SIGKILL, of course, stops
it mid-flight, which is the point).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make the workflow modules importable

from temporalio.client import Client
from temporalio.worker import Worker

import workflows
from fault_workflows import FAULT_ACTIVITIES, FAULT_WORKFLOWS
from temporal_governor import GovernorPlugin, Policy

WORKFLOW_SETS = {
    "shared": (
        [*workflows.ALL_WORKFLOWS, workflows.SlowSpender],
        [*workflows.ALL_ACTIVITIES, workflows.slow_spend],
    ),
    "faults": (FAULT_WORKFLOWS, FAULT_ACTIVITIES),
}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--policy-file", required=True)
    parser.add_argument(
        "--workflows",
        choices=sorted(WORKFLOW_SETS),
        default="shared",
        help="which workflows and activities the worker runs",
    )
    parser.add_argument(
        "--slow-activity-seconds",
        type=float,
        default=0.0,
        help="how long `slow_spend` (shared) sleeps, heartbeating, after it reported its usage",
    )
    parser.add_argument(
        "--sticky-timeout-seconds",
        type=float,
        default=10.0,
        help="how long a run's next workflow task waits for this worker before any worker "
        "may take it (short when the test kills workers)",
    )
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    workflow_classes, activities = WORKFLOW_SETS[args.workflows]
    workflows.SLOW_SPEND_SECONDS = args.slow_activity_seconds
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = await Client.connect(
        args.address,
        namespace=args.namespace,
        plugins=[GovernorPlugin(Policy.from_yaml(args.policy_file))],
    )
    async with Worker(
        client,
        task_queue=args.task_queue,
        workflows=workflow_classes,
        activities=activities,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=args.sticky_timeout_seconds),
        graceful_shutdown_timeout=timedelta(seconds=1),
    ):
        print("ready", flush=True)
        # temporalio's core writes its warnings to fd 1, and nobody reads the pipe after
        # "ready": a full pipe (64 KiB) would block core's threads and freeze the worker
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
