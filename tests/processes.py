"""Governed workers in OS processes of their own (tests/worker_process.py), for the tests.

`WorkerProcesses` spawns a worker process, waits until it polls (it prints ``ready``),
keeps its stderr in a log file next to the policy file, and `close()` stops every worker
it started (SIGTERM, then SIGKILL), leaving none behind.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

from temporalio.testing import WorkflowEnvironment

WORKER = Path(__file__).resolve().parent / "worker_process.py"
ROOT = WORKER.parents[1]
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class WorkerProcesses:
    """Governed workers in OS processes of their own; `close()` leaves none behind.

    `workflows` names what the workers run: ``shared`` (tests/workflows.py) or
    ``faults`` (tests/fault_workflows.py).
    """

    def __init__(
        self,
        address: str,
        namespace: str,
        task_queue: str,
        policy_file: Path,
        workflows: str = "shared",
    ) -> None:
        self.address, self.namespace = address, namespace
        self.task_queue, self.policy_file = task_queue, policy_file
        self.workflows = workflows
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.log_paths: list[Path] = []

    @classmethod
    def on(
        cls,
        env: WorkflowEnvironment,
        task_queue: str,
        policy_file: Path,
        workflows: str = "shared",
    ) -> WorkerProcesses:
        """Workers on the server and namespace of `env`."""
        address = env.client.service_client.config.target_host
        return cls(address, env.client.namespace, task_queue, policy_file, workflows)

    async def start(
        self, slow_activity_seconds: float = 0.0, sticky_timeout_seconds: float = 10.0
    ) -> subprocess.Popen[bytes]:
        """Spawns one more worker and returns once it polls; fails with its output if not."""
        index = len(self.procs)
        log_path = self.policy_file.parent / f"worker-{index}.log"
        log = log_path.open("wb")
        self.logs.append(log)
        self.log_paths.append(log_path)
        proc = subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "--address",
                self.address,
                "--namespace",
                self.namespace,
                "--task-queue",
                self.task_queue,
                "--policy-file",
                str(self.policy_file),
                "--workflows",
                self.workflows,
                "--slow-activity-seconds",
                str(slow_activity_seconds),
                "--sticky-timeout-seconds",
                str(sticky_timeout_seconds),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), READY_TIMEOUT)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            proc.kill()
            raise AssertionError(f"worker process did not start:\n{self.output(index)[-3000:]}")
        return proc

    def output(self, index: int) -> str:
        """What the `index`-th worker wrote to stderr so far."""
        self.logs[index].flush()
        return self.log_paths[index].read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        for log in self.logs:
            log.close()


@asynccontextmanager
async def worker_processes(
    env: WorkflowEnvironment,
    task_queue: str,
    policy_file: Path,
    count: int = 1,
    workflows: str = "shared",
) -> AsyncIterator[WorkerProcesses]:
    """`count` workers on the server of `env`, started side by side, closed on exit."""
    workers = WorkerProcesses.on(env, task_queue, policy_file, workflows)
    try:
        await asyncio.gather(*(workers.start() for _ in range(count)))
        yield workers
    finally:
        workers.close()
