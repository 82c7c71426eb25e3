"""Record histories with whatever temporal_governor is importable (the previous release).

tests/test_adoption.py runs this in a subprocess with the previous release's ``src`` first
on ``PYTHONPATH`` (``git archive e570692 src``); it can also be run by hand::

    PYTHONPATH=/tmp/old/src:tests python tests/previous_release.py localhost:7233 default \\
        tq-old ledger-old tests/histories/previous-release

It runs a governed worker on the task queue, runs the adoption workflows to their end,
writes each closed run's history (and the ledger's, still open) to
``OUT/<workflow id>.run<n>.json``, leaves two runs open
(``open-conversation`` waiting for its ``finish`` signal, ``open-cancellable`` in a long
activity) and writes ``OUT/open.json`` with their ids, then stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import yaml
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

import temporal_governor
from adoption_workflows import (
    ACTIVITIES,
    POLICY,
    WORKFLOWS,
    Cancellable,
    Continuing,
    Conversation,
    Failing,
    Overspender,
    Parallel,
    Team,
)
from temporal_governor import GovernorPlugin, Policy


async def record(target: str, namespace: str, task_queue: str, ledger: str, out: Path) -> None:
    data = yaml.safe_load(POLICY)
    data.setdefault("shared", {})["ledger_id"] = ledger
    policy = Policy.from_dict(data)
    client = await Client.connect(target, namespace=namespace, plugins=[GovernorPlugin(policy)])
    out.mkdir(parents=True, exist_ok=True)
    closed: list[str] = []

    async def start(workflow: object, arg: object, id: str) -> object:
        closed.append(id)
        return await client.start_workflow(
            workflow,  # type: ignore[arg-type]
            arg,
            id=f"{task_queue}-{id}",
            task_queue=task_queue,
        )

    async with Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        conversation = await start(Conversation.run, "weather", "conversation")
        await conversation.signal(Conversation.say, "and tomorrow?")  # type: ignore[attr-defined]
        await conversation.signal(Conversation.finish)  # type: ignore[attr-defined]
        await conversation.result()  # type: ignore[attr-defined]
        for workflow, arg, id in [
            (Team.run, ["a", "b"], "team"),
            (Parallel.run, 4, "parallel"),
            (Continuing.run, 2, "continuing"),
        ]:
            await (await start(workflow, arg, id)).result()  # type: ignore[attr-defined]
        for workflow, arg, id in [
            (Overspender.run, 10, "overspender"),
            (Failing.run, "x", "failing"),
        ]:
            with contextlib.suppress(WorkflowFailureError):
                await (await start(workflow, arg, id)).result()  # type: ignore[attr-defined]
        cancelled = await start(Cancellable.run, 5.0, "cancellable")
        await asyncio.sleep(1.0)
        await cancelled.cancel()  # type: ignore[attr-defined]
        with contextlib.suppress(WorkflowFailureError):
            await cancelled.result()  # type: ignore[attr-defined]

        # left open: a conversation waiting for its signal, a cancellable in its activity
        open_conversation = await client.start_workflow(
            Conversation.run, "open", id=f"{task_queue}-open-conversation", task_queue=task_queue
        )
        await open_conversation.signal(Conversation.say, "later")
        open_cancellable = await client.start_workflow(
            Cancellable.run, 25.0, id=f"{task_queue}-open-cancellable", task_queue=task_queue
        )
        await wait_for_event(client, open_conversation.id, "TIMER_FIRED")
        await wait_for_running_activity(client, open_cancellable.id)

    for id in [*closed, "team-0", "team-1", "team-w"]:
        await _write_chain(client, f"{task_queue}-{id}", out)
    await _write_chain(client, ledger, out)  # the ledger, still running
    opened = {"conversation": open_conversation.id, "cancellable": open_cancellable.id}
    (out / "open.json").write_text(
        json.dumps({"release": temporal_governor.__file__, "ledger": ledger, **opened})
    )


async def _write_chain(client: Client, workflow_id: str, out: Path) -> None:
    """Write the history of every run of a workflow id (continue-as-new followed).

    The files are ``<workflow id>.run<n>.json`` (a replay needs the workflow id).
    """
    description = await client.get_workflow_handle(workflow_id).describe()
    run_id = description.raw_description.workflow_execution_info.first_run_id or None
    number = 0
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        (out / f"{workflow_id}.run{number}.json").write_text(history.to_json())
        last = history.events[-1]
        run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        number += 1


async def wait_for_running_activity(client: Client, workflow_id: str) -> None:
    """Wait until an activity of the run has started (its worker holds it)."""
    for _ in range(300):
        description = await client.get_workflow_handle(workflow_id).describe()
        pending = description.raw_description.pending_activities
        if any(a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED for a in pending):
            await asyncio.sleep(0.5)
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no activity of {workflow_id} started")


async def wait_for_event(client: Client, workflow_id: str, event: str) -> None:
    """Wait until the run's history has the event (the run is where it should be left)."""
    for _ in range(300):
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        if any(e.event_type == _event_type(event) for e in history.events):
            await asyncio.sleep(0.5)  # let the workflow task that follows complete
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{workflow_id} never reached {event}")


def _event_type(name: str) -> int:
    return int(EventType.Value(f"EVENT_TYPE_{name}"))


if __name__ == "__main__":
    target, namespace, task_queue, ledger, out = sys.argv[1:6]
    asyncio.run(record(target, namespace, task_queue, ledger, Path(out)))
