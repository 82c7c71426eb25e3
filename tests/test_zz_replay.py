"""Runs last: replays every history the suite produced, with the governor installed.

Any non-determinism in the governor's workflow-side code (or in the test workflows)
fails this test, naming the workflow. The sweep replays without the workflow sandbox: the
sandbox re-imports the workflow's modules for every run, which made this sweep the
slowest test of the suite, and it only guards against calls that would already have
failed the live run; the commands compared are the same. The replay tests of incident
review and adoption (tests/test_replay.py, tests/test_adoption.py) replay sandboxed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from conftest import RECORDED, Recorded
from temporal_governor import GovernorPlugin

REPLAYS_AT_ONCE = 8
"""Task queues replayed side by side: a replay worker's start and stop, not the replay,
is most of the time of a small one."""


async def test_every_history_of_the_session_replays_deterministically(
    env: WorkflowEnvironment,
) -> None:
    assert RECORDED, "no governed workers ran in this session"
    client = Client(env.client.service_client, namespace=env.client.namespace)
    gate = asyncio.Semaphore(REPLAYS_AT_ONCE)

    async def replay(recorded: Recorded) -> tuple[int, list[str]]:
        async with gate:
            histories = [
                await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
                async for wf in client.list_workflows(f'TaskQueue="{recorded.task_queue}"')
            ]
            if not histories:
                return 0, []
            replayer = Replayer(
                workflows=recorded.workflows,
                plugins=[GovernorPlugin(recorded.policy)],
                workflow_runner=UnsandboxedWorkflowRunner(),
            )
            results = await replayer.replay_workflows(
                _each(histories), raise_on_replay_failure=False
            )
        failed = [
            f"{recorded.task_queue} run {run_id}: {failure!r}"
            for run_id, failure in results.replay_failures.items()
        ]
        return len(histories), failed

    outcomes = await asyncio.gather(*(replay(recorded) for recorded in RECORDED))
    replayed = sum(count for count, _ in outcomes)
    failures = [line for _, failed in outcomes for line in failed]
    assert not failures, "non-deterministic replay:\n" + "\n".join(failures)
    assert replayed >= len(RECORDED)


async def _each(histories: list[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history
