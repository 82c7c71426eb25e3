"""A governed worker of the fault suite in an OS process of its own (tests/test_faults.py).

    python tests/fault_worker.py --address A --task-queue Q --policy-file P
        [--namespace N] [--sticky-timeout-seconds T]

Connects with ``GovernorPlugin(Policy.from_yaml(P))``, runs a worker with the workflows
and activities of tests/fault_workflows.py, prints ``ready`` once the worker polls, and
runs until SIGTERM or SIGINT (SIGKILL stops it mid-flight, which is the point).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make `fault_workflows` importable

from temporalio.client import Client
from temporalio.worker import Worker

from fault_workflows import FAULT_ACTIVITIES, FAULT_WORKFLOWS
from temporal_governor import GovernorPlugin, Policy


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--policy-file", required=True)
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
        workflows=FAULT_WORKFLOWS,
        activities=FAULT_ACTIVITIES,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=args.sticky_timeout_seconds),
        graceful_shutdown_timeout=timedelta(seconds=1),
    ):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
