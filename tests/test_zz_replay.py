"""Runs last: replays every history the suite produced, with the governor installed.

Any non-determinism in the governor's workflow-side code (or in the test workflows)
fails this test, naming the workflow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from conftest import RECORDED
from temporal_governor import GovernorPlugin


async def test_every_history_of_the_session_replays_deterministically(
    env: WorkflowEnvironment,
) -> None:
    assert RECORDED, "no governed workers ran in this session"
    replayed = 0
    failures: list[str] = []
    for recorded in RECORDED:
        client = Client(env.client.service_client, namespace=env.client.namespace)
        histories = [
            await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
            async for wf in client.list_workflows(f'TaskQueue="{recorded.task_queue}"')
        ]
        if not histories:
            continue
        replayer = Replayer(workflows=recorded.workflows, plugins=[GovernorPlugin(recorded.policy)])
        results = await replayer.replay_workflows(_each(histories), raise_on_replay_failure=False)
        for run_id, failure in results.replay_failures.items():
            failures.append(f"{recorded.task_queue} run {run_id}: {failure!r}")
        replayed += len(histories)
    assert not failures, "non-deterministic replay:\n" + "\n".join(failures)
    assert replayed >= len(RECORDED)


async def _each(histories: list[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history
