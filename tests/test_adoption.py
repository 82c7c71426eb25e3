"""Safe adoption, rollback and upgrade (issue 15, item 3), on the session's dev server.

- histories recorded without the governor replay under it, and runs started plain are
  finished plain by a governed worker (and answer queries there when closed);
- runs started governed are finished governed by a worker whose governor is switched off
  (``govern_new_runs=False``), which runs new runs plain;
- histories recorded by the previous release (0.1.0, commit e570692, run in a subprocess
  with that release's code) replay under this one, and its open runs are finished here.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import CancelledError
from temporalio.worker import Replayer, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

import adoption_workflows as aw
from conftest import RECORDED, Recorded, source_at
from previous_release import wait_for_event, wait_for_running_activity
from temporal_governor import GovernorPlugin, Policy
from temporal_governor.interceptors import GOVERNED_PATCH, GovernanceInterceptor
from temporal_governor.interceptors._versions import KEY_ON_ASK_PATCH
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot

PREVIOUS_RELEASE = "e570692"
"""The commit of the previous release (0.1.0): its histories carry no governor marker."""

HISTORIES = Path(__file__).parent / "histories" / "previous-release"
"""Histories recorded by the previous release, kept in the repository (see README there)."""

GOVERNOR_EVENTS = {
    EventType.EVENT_TYPE_MARKER_RECORDED,  # the patch markers and the ledger's local activities
    EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED,  # the memo
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
}


def policy(ledger: str | None = None) -> Policy:
    """The adoption policy (shared limits for every run) with a ledger of its own."""
    data = yaml.safe_load(aw.POLICY)
    data.setdefault("shared", {})["ledger_id"] = ledger or f"ledger-{uuid.uuid4().hex[:8]}"
    return Policy.from_dict(data)


def _client(env: Any, *plugins: GovernorPlugin) -> Client:
    return Client(env.client.service_client, namespace=env.client.namespace, plugins=[*plugins])


@asynccontextmanager
async def _worker(client: Client, task_queue: str) -> AsyncIterator[None]:
    async with Worker(
        client, task_queue=task_queue, workflows=aw.WORKFLOWS, activities=aw.ACTIVITIES
    ):
        yield


async def _histories(client: Client, workflow_ids: Sequence[str]) -> list[WorkflowHistory]:
    """Every run's history of the workflow ids (continue-as-new chains followed)."""
    found = []
    for workflow_id in workflow_ids:
        description = await client.get_workflow_handle(workflow_id).describe()
        run_id = description.raw_description.workflow_execution_info.first_run_id
        while run_id:
            history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
            found.append(history)
            attributes = history.events[-1].workflow_execution_continued_as_new_event_attributes
            run_id = attributes.new_execution_run_id
    return found


async def _replay_failures(histories: Sequence[WorkflowHistory], **replayer: Any) -> list[str]:
    results = await Replayer(workflows=aw.WORKFLOWS, **replayer).replay_workflows(
        _each(histories), raise_on_replay_failure=False
    )
    return [f"{run}: {failure!r}"[:400] for run, failure in results.replay_failures.items()]


async def _each(histories: Sequence[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history


def _patches(history: WorkflowHistory) -> list[str]:
    """The patch ids the run recorded, in order."""
    ids = []
    for event in history.events:
        details = event.marker_recorded_event_attributes.details
        if "patch-data" in details:
            ids.append(json.loads(details["patch-data"].payloads[0].data)["id"])
    return ids


def _governed_patches(history: WorkflowHistory) -> list[str]:
    """The patch ids a run governed by this release from its start records.

    The marker first; then, at its first activity dispatch, the key numbering's
    (``KEY_ON_ASK_PATCH``: runs recorded with the marker before it keep theirs).
    """
    dispatched = any(
        e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED for e in history.events
    )
    return [GOVERNED_PATCH, *([KEY_ON_ASK_PATCH] if dispatched else [])]


def _governor_events(history: WorkflowHistory) -> list[HistoryEvent]:
    return [e for e in history.events if e.event_type in GOVERNOR_EVENTS]


def _task_failures(history: WorkflowHistory) -> list[str]:
    return [
        e.workflow_task_failed_event_attributes.failure.message
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]


async def _done(outcome: Awaitable[Any]) -> Any:
    """A run's outcome, or a failure instead of a hang (a non-deterministic run never ends)."""
    return await asyncio.wait_for(outcome, timeout=60)


async def _fetch(client: Client, workflow_id: str) -> WorkflowHistory:
    return await client.get_workflow_handle(workflow_id).fetch_history()


async def _run_representatives(client: Client, task_queue: str) -> list[str]:
    """Run every adoption workflow to its end; the workflow ids (children included)."""
    prefix = f"{task_queue}-"

    async def start(workflow: Any, arg: Any, name: str) -> Any:
        return await client.start_workflow(workflow, arg, id=prefix + name, task_queue=task_queue)

    conversation = await start(aw.Conversation.run, "weather", "conversation")
    await conversation.signal(aw.Conversation.say, "and tomorrow?")
    await conversation.signal(aw.Conversation.finish)
    assert await _done(conversation.result()) == ["answer to weather", "answer to and tomorrow?"]
    assert await _done((await start(aw.Team.run, ["a", "b"], "team")).result()) == [
        "answer to a",
        "answer to b",
    ]
    assert len(await _done((await start(aw.Parallel.run, 4, "parallel")).result())) == 4
    assert (
        await _done((await start(aw.Continuing.run, 2, "continuing")).result())
        == "answer to left 0"
    )
    assert await _done((await start(aw.Overspender.run, 3, "overspender")).result()) == 4
    with pytest.raises(WorkflowFailureError):
        await _done((await start(aw.Failing.run, "x", "failing")).result())
    cancellable = await start(aw.Cancellable.run, 10.0, "cancellable")
    await wait_for_running_activity(client, cancellable.id)
    await cancellable.cancel()
    with pytest.raises(WorkflowFailureError) as failure:
        await _done(cancellable.result())
    assert isinstance(failure.value.cause, CancelledError)
    names = ["conversation", "team", "team-0", "team-1", "team-w", "parallel", "continuing"]
    names += ["overspender", "failing", "cancellable"]
    return [prefix + name for name in names]


# -- (i) histories recorded plain replay under the governor --------------------------------


async def test_histories_recorded_plain_replay_under_the_governor(env) -> None:
    task_queue = f"plain-{uuid.uuid4()}"
    async with _worker(env.client, task_queue):
        ids = await _run_representatives(env.client, task_queue)
    histories = await _histories(env.client, ids)
    assert len(histories) == len(ids) + 2  # continuing: three runs
    assert f"{task_queue}-cancellable" in aw.CLEANED
    p = policy()
    assert await _replay_failures(histories, plugins=[GovernorPlugin(p)]) == []
    assert (
        await _replay_failures(histories, plugins=[GovernorPlugin(p, govern_new_runs=False)]) == []
    )
    # the interceptor alone, assembled by hand (docs/concepts.md)
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("temporal_governor")
    )
    interceptor = GovernanceInterceptor(p)
    failures = await _replay_failures(histories, interceptors=[interceptor], workflow_runner=runner)
    assert failures == []
    # and a plain replayer, for comparison: the governor adds nothing to these histories
    assert await _replay_failures(histories) == []


# -- (ii) and (iv): plain runs continued and queried on a governed worker -----------------


async def test_a_run_started_plain_is_finished_plain_by_a_governed_worker(env) -> None:
    task_queue = f"adopt-{uuid.uuid4()}"
    p = policy()
    RECORDED.append(Recorded(task_queue, p, aw.WORKFLOWS))
    prefix = f"{task_queue}-"
    async with _worker(env.client, task_queue):
        conversation = await env.client.start_workflow(
            aw.Conversation.run, "hello", id=prefix + "conversation", task_queue=task_queue
        )
        await conversation.signal(aw.Conversation.say, "more")
        cancellable = await env.client.start_workflow(
            aw.Cancellable.run, 20.0, id=prefix + "cancellable", task_queue=task_queue
        )
        team = await env.client.start_workflow(
            aw.Team.run, ["x"], id=prefix + "team", task_queue=task_queue
        )
        assert await _done(team.result()) == ["answer to x"]
        await wait_for_event(env.client, conversation.id, "TIMER_FIRED")
        await wait_for_running_activity(env.client, cancellable.id)
    # the plain worker is gone; the governed one takes over the same task queue
    governed = _client(env, GovernorPlugin(p))
    async with _worker(governed, task_queue):
        handle = governed.get_workflow_handle(conversation.id)
        await handle.signal(aw.Conversation.say, "and more")
        await handle.signal(aw.Conversation.finish)
        assert await _done(handle.result()) == [
            "answer to hello",
            "answer to more",
            "answer to and more",
        ]
        await governed.get_workflow_handle(cancellable.id).cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await _done(governed.get_workflow_handle(cancellable.id).result())
        assert isinstance(failure.value.cause, CancelledError)
        assert cancellable.id in aw.CLEANED  # its finally ran, as it would have plain
        # (iv) queries to closed runs, replayed from their start on the governed worker
        assert await handle.query(aw.Conversation.transcript) == ["more", "and more"]
        # a new run on the same worker is governed
        fresh = await governed.start_workflow(
            aw.Parallel.run, 2, id=prefix + "fresh", task_queue=task_queue
        )
        assert len(await _done(fresh.result())) == 2
        snapshot = BudgetSnapshot.model_validate(await fresh.query(BUDGET_QUERY))
        assert snapshot.committed.get("tokens", 0) > 0
        with pytest.raises(Exception, match=r"governor\.budget"):
            await handle.query(BUDGET_QUERY)  # the plain run has no governor handlers
    for workflow_id in [conversation.id, cancellable.id, team.id]:
        history = await _fetch(env.client, workflow_id)
        assert _task_failures(history) == [], workflow_id
        assert _governor_events(history) == [], f"{workflow_id} got governor commands"
    fresh_history = await _fetch(env.client, fresh.id)
    assert _patches(fresh_history) == _governed_patches(fresh_history)
    assert _task_failures(fresh_history) == []


async def test_a_closed_plain_run_answers_queries_on_a_governed_worker(env) -> None:
    task_queue = f"query-{uuid.uuid4()}"
    p = policy()
    RECORDED.append(Recorded(task_queue, p, aw.WORKFLOWS))
    async with _worker(env.client, task_queue):
        handle = await env.client.start_workflow(
            aw.Conversation.run, "q", id=f"{task_queue}-c", task_queue=task_queue
        )
        await handle.signal(aw.Conversation.say, "one")
        await handle.signal(aw.Conversation.finish)
        await _done(handle.result())
    governed = _client(env, GovernorPlugin(p))
    async with _worker(governed, task_queue):
        closed = governed.get_workflow_handle(handle.id)
        assert await closed.query(aw.Conversation.transcript) == ["one"]
    assert _task_failures(await _fetch(env.client, handle.id)) == []


# -- (iii) rollback: governed runs finished with the governor switched off ----------------


async def test_runs_started_governed_are_finished_governed_with_the_switch_off(env) -> None:
    task_queue = f"rollback-{uuid.uuid4()}"
    p = policy()
    RECORDED.append(Recorded(task_queue, p, aw.WORKFLOWS))
    prefix = f"{task_queue}-"
    on = _client(env, GovernorPlugin(p))
    async with _worker(on, task_queue):
        conversation = await on.start_workflow(
            aw.Conversation.run, "hi", id=prefix + "conversation", task_queue=task_queue
        )
        delegator = await on.start_workflow(
            aw.Delegator.run, "sub", id=prefix + "delegator", task_queue=task_queue
        )
        await wait_for_event(on, conversation.id, "TIMER_FIRED")
        await wait_for_event(on, delegator.id, "WORKFLOW_TASK_COMPLETED")
    off = _client(env, GovernorPlugin(p, govern_new_runs=False))
    async with _worker(off, task_queue):
        handle = off.get_workflow_handle(conversation.id)
        await handle.signal(aw.Conversation.say, "bye")
        await handle.signal(aw.Conversation.finish)
        assert await _done(handle.result()) == ["answer to hi", "answer to bye"]
        snapshot = BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))
        assert snapshot.committed["tokens"] == 10 + 2 + 10 + 3  # both calls, counted
        # the child a governed parent starts now is governed with it (the tree stays whole)
        await off.get_workflow_handle(delegator.id).signal(aw.Delegator.finish)
        assert await _done(off.get_workflow_handle(delegator.id).result()) == "answer to sub"
        parent = BudgetSnapshot.model_validate(
            await off.get_workflow_handle(delegator.id).query(BUDGET_QUERY)
        )
        assert parent.committed["tokens"] == 10 + 3  # what the child spent, not its carve
        # a new run is plain
        fresh = await off.start_workflow(
            aw.Parallel.run, 2, id=prefix + "fresh", task_queue=task_queue
        )
        assert len(await _done(fresh.result())) == 2
    for workflow_id in [conversation.id, delegator.id, f"{delegator.id}-helper"]:
        history = await _fetch(env.client, workflow_id)
        assert _task_failures(history) == [], workflow_id
        assert _patches(history) == _governed_patches(history), workflow_id
        memo = [
            e
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED
        ]
        assert len(memo) == 1, f"{workflow_id} did not publish its spend at the end"
    fresh_history = await _fetch(env.client, fresh.id)
    assert _governor_events(fresh_history) == []
    assert _task_failures(fresh_history) == []


# -- (v) upgrade: histories and open runs of the previous release --------------------------


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's ``src`` folder, from git (skips where git cannot give it)."""
    return source_at(PREVIOUS_RELEASE, tmp_path_factory.mktemp("previous-release"))


async def test_the_previous_release_histories_replay_and_its_open_runs_finish(
    env, previous_release: Path, tmp_path: Path
) -> None:
    task_queue = f"previous-{uuid.uuid4()}"
    ledger = f"ledger-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "histories"
    python_path = os.pathsep.join([str(previous_release), str(Path(__file__).parent)])
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).parent / "previous_release.py"),
        env.client.service_client.config.target_host,
        env.client.namespace,
        task_queue,
        ledger,
        str(out),
        env={**os.environ, "PYTHONPATH": python_path},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(done.communicate(), timeout=180)
    assert done.returncode == 0, output.decode()[-3000:]
    opened = json.loads((out / "open.json").read_text())
    assert opened["release"].startswith(str(previous_release)), "not the previous release's code"

    # its closed histories replay under this release, told that unmarked runs were governed
    histories = _load(out)
    assert len(histories) >= 12
    p = policy(ledger)
    previous = GovernorPlugin(p, unmarked_runs="governed")
    assert await _replay_failures(histories, plugins=[previous]) == []
    # ... and only then: by default a history without the marker is a plain one
    assert await _replay_failures(histories, plugins=[GovernorPlugin(p)]) != []

    # its open runs (and its ledger) are finished by this release
    client = _client(env, previous)
    async with _worker(client, task_queue):
        before = await client.get_workflow_handle(ledger).query("state", "")
        conversation = client.get_workflow_handle(opened["conversation"])
        await conversation.signal(aw.Conversation.finish)
        assert await _done(conversation.result()) == ["answer to open", "answer to later"]
        cancellable = client.get_workflow_handle(opened["cancellable"])
        await cancellable.cancel()
        with pytest.raises(WorkflowFailureError):
            await _done(cancellable.result())
        assert cancellable.id in aw.CLEANED, "the cancellation reaches agent code now"
        after = await client.get_workflow_handle(ledger).query("state", "")
        fresh = await client.start_workflow(
            aw.Parallel.run, 3, id=f"{task_queue}-fresh", task_queue=task_queue
        )
        assert len(await _done(fresh.result())) == 3
    # the two open runs released what they held (the previous release left a cancelled
    # run's lease to expire; that one stays open until its TTL)
    assert after["open_reservations"] == before["open_reservations"] - 2
    finished = {
        "conversation": await _fetch(client, conversation.id),
        "cancellable": await _fetch(client, cancellable.id),
        "fresh": await _fetch(client, fresh.id),
        "ledger": await _fetch(client, ledger),
    }
    for name, history in finished.items():
        assert _task_failures(history) == [], name
    # the changes the open runs reached live are recorded as their own patches
    assert _patches(finished["conversation"]) == ["temporal-governor/release-run-v1"]
    assert _patches(finished["cancellable"]) == [
        "temporal-governor/cancel-to-agent-v1",
        "temporal-governor/release-run-v1",
    ]
    assert _patches(finished["fresh"]) == _governed_patches(finished["fresh"])
    failures = await _replay_failures(
        [finished["conversation"], finished["cancellable"], finished["fresh"]],
        plugins=[previous],
    )
    assert failures == []


async def test_kept_histories_of_the_previous_release_replay() -> None:
    """The histories kept in the repository (no git history needed)."""
    histories = _load(HISTORIES)
    assert len(histories) >= 12
    p = policy()
    assert (
        await _replay_failures(histories, plugins=[GovernorPlugin(p, unmarked_runs="governed")])
        == []
    )


def _load(folder: Path) -> list[WorkflowHistory]:
    """The ``<workflow id>.run<n>.json`` histories of a folder."""
    return [
        WorkflowHistory.from_json(path.name.rsplit(".run", 1)[0], path.read_text())
        for path in sorted(folder.glob("*.run*.json"))
    ]


def test_patch_ids_are_stable() -> None:
    """Patch ids are part of every history made: renaming one breaks replay."""
    from temporal_governor.interceptors import _versions

    assert _versions.GOVERNED_PATCH == "temporal-governor"
    assert [change.split("/")[1] for change in _versions.CHANGES] == [
        "cancel-to-agent-v1",
        "halt-grace-v1",
        "close-children-v1",
        "lease-lock-v1",
        "renew-v1",
        "release-run-v1",
        "one-ledger-call-v1",
    ]
