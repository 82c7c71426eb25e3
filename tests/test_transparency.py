"""Transparency (#15 item 5): ordinary workflows behave the same plain and governed.

Every scenario runs three times on the dev server: on a plain worker (no plugin,
``env.client``), on a governed worker with an empty policy, and on a governed worker with
a generous policy that names every workflow and activity (so every dispatch is reserved,
committed and carved, far from any ceiling). What a client can observe must be equal:
results, failures (class, message, type, details, non-retryable, heartbeat details, all
the way down the cause chain), query and update results, memos, and the histories.

Histories are compared as the sequence of their events (type, plus the activity, child,
signal, update, marker or timer each one names), leaving out:

- workflow task events (scheduled, started, completed): how events fall into workflow
  tasks is timing, not behaviour;
- the governor's footprint, the explicit allow-list below (:data:`FOOTPRINT` and the
  ``TemporalChangeVersion`` rule in :func:`events`), and nothing else:

  - a memo upsert that writes only the memo key ``governor`` (its spend summary);
  - a search-attribute upsert of only ``GovernorTenant`` / ``GovernorState``;
  - a patch marker whose id is the governor's (``temporal-governor``,
    ``temporal-governor/...``), and the SDK's ``TemporalChangeVersion`` upsert that
    comes with it (the governor's ids are also left out of the user's own upserts);
  - a local-activity marker of the ledger's activity ``temporal_governor.ledger``.

  Outside histories, two more: the memo key ``governor`` in ``describe()``, and the
  governor's query names in the SDK's message for a query to a handler that does not
  exist (it lists every handler). Anything else the governor adds, removes or changes is
  a difference.

What is not compared, and why: event ids, run ids, identities and timestamps (they
differ between any two runs); headers and payload metadata (the governor's
``temporal-governor`` header on starts and dispatches and its ``temporal-governor-usage``
metadata on results are part of its documented footprint: converters ignore them).

The governed task queues come from the ``governed`` fixture, so the session's last test
replays their histories with the governor; the pydantic scenario, whose client needs its
own data converter, replays its histories here.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from conftest import eventually
from temporal_governor import GovernorPlugin, Policy
from transparency_workflows import (
    CLEANUPS,
    STARTED,
    TOKENS,
    TRANSPARENCY_ACTIVITIES,
    TRANSPARENCY_WORKFLOWS,
    Approval,
    Cancellable,
    Heartbeats,
    Hopper,
    Hops,
    Inbox,
    LocalWork,
    PaidFailure,
    PaidFailureCaught,
    Parent,
    Patched,
    Quick,
    Ticket,
    Triager,
    failure_of,
)

# -- the governor's footprint in a history: the allow-list ------------------------------

GOVERNOR_MEMO_KEY = "governor"
"""The run's spend summary, written into its memo when it ends (``visibility.memo``)."""
GOVERNOR_SEARCH_ATTRIBUTES = frozenset({"GovernorTenant", "GovernorState"})
"""Set only with ``visibility.search_attributes`` (off by default)."""
GOVERNOR_PATCH_PREFIX = "temporal-governor"
"""Patch ids of the governor's own commands (``temporal-governor``,
``temporal-governor/<change>-v<n>``): recorded with Temporal's patching."""
GOVERNOR_LEDGER_ACTIVITY = "temporal_governor.ledger"
"""The ledger's local activity (shared limits, anomaly baselines, fleet-wide kills)."""


def _memo_upsert_of_the_governor(event: HistoryEvent) -> bool:
    """A memo upsert that writes nothing but the governor's key."""
    fields = event.workflow_properties_modified_event_attributes.upserted_memo.fields
    return set(fields) <= {GOVERNOR_MEMO_KEY}


def _search_attributes_of_the_governor(event: HistoryEvent) -> bool:
    """A search-attribute upsert of the governor's attributes only."""
    attributes = event.upsert_workflow_search_attributes_event_attributes
    return set(attributes.search_attributes.indexed_fields) <= GOVERNOR_SEARCH_ATTRIBUTES


CHANGE_VERSION = "TemporalChangeVersion"
"""The search attribute the SDK keeps the run's patch ids in. The SDK upserts it for every
patch a run records, the governor's too: an upsert that adds only governor patch ids is
footprint, and the governor's ids are left out of the others."""


def _is_governor_patch(patch: str) -> bool:
    return patch == GOVERNOR_PATCH_PREFIX or patch.startswith(GOVERNOR_PATCH_PREFIX + "/")


def _marker_of_the_governor(event: HistoryEvent) -> bool:
    """A patch marker of the governor's own commands, or its ledger's local activity."""
    patch = _patch_id(event)
    if patch is not None:
        return _is_governor_patch(patch)
    return _local_activity_type(event) == GOVERNOR_LEDGER_ACTIVITY


FOOTPRINT: dict[int, Callable[[HistoryEvent], bool]] = {
    EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED: _memo_upsert_of_the_governor,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: _search_attributes_of_the_governor,
    EventType.EVENT_TYPE_MARKER_RECORDED: _marker_of_the_governor,
}
"""What the governor may add to a history, by event type: an event of one of these types
that the predicate accepts is left out of the comparison. Nothing else is: timers the
governor starts (throttles, pacing, halt grace) would be a difference here, since the
policies of this suite pace nothing and halt nothing."""

GOVERNOR_HANDLERS = frozenset(
    {
        "governor.budget",
        "governor.control",
        "governor.kill",
        "governor.resume",
        "governor.backpressure",
        "governor.override",
    }
)
"""The governor's own query and signal names, listed by the SDK in the message of a
query to a handler that does not exist."""

_TIMING = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    }
)


def _patch_id(event: HistoryEvent) -> str | None:
    attributes = event.marker_recorded_event_attributes
    if attributes.marker_name != "core_patch" or "patch-data" not in attributes.details:
        return None
    return str(json.loads(attributes.details["patch-data"].payloads[0].data)["id"])


def _local_activity_type(event: HistoryEvent) -> str | None:
    attributes = event.marker_recorded_event_attributes
    if attributes.marker_name != "core_local_activity" or "data" not in attributes.details:
        return None
    return str(json.loads(attributes.details["data"].payloads[0].data).get("activity_type"))


def events(history: WorkflowHistory) -> list[str]:
    """The history as compared: one line per event outside timing and the footprint."""
    lines = []
    user_patches: list[str] = []  # TemporalChangeVersion without the governor's patch ids
    for event in history.events:
        if event.event_type in _TIMING:
            continue
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
            if CHANGE_VERSION in fields.indexed_fields:
                ids = json.loads(fields.indexed_fields[CHANGE_VERSION].data)
                mine = [i for i in ids if not _is_governor_patch(i)]
                others = set(fields.indexed_fields) - {CHANGE_VERSION}
                if mine == user_patches and others <= GOVERNOR_SEARCH_ATTRIBUTES:
                    continue  # the SDK's upsert for one of the governor's patches
                user_patches = mine
                lines.append(f"UPSERT_WORKFLOW_SEARCH_ATTRIBUTES {CHANGE_VERSION}={mine}")
                continue
        accept = FOOTPRINT.get(event.event_type)
        if accept is not None and accept(event):
            continue
        name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        lines.append(f"{name} {_what(event)}".rstrip())
    return lines


def _what(event: HistoryEvent) -> str:
    """What an event names: its activity, child, signal, update, marker or timer."""
    kind = event.event_type
    if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        return event.activity_task_scheduled_event_attributes.activity_type.name
    if kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
        return event.start_child_workflow_execution_initiated_event_attributes.workflow_type.name
    if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
        return event.workflow_execution_signaled_event_attributes.signal_name
    if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
        return event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
    if kind == EventType.EVENT_TYPE_MARKER_RECORDED:
        name = event.marker_recorded_event_attributes.marker_name
        return f"{name} {_patch_id(event) or _local_activity_type(event) or ''}".rstrip()
    if kind == EventType.EVENT_TYPE_TIMER_STARTED:
        timeout = event.timer_started_event_attributes.start_to_fire_timeout
        return f"{timeout.seconds}s"
    if kind == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED:
        return ",".join(
            sorted(event.workflow_properties_modified_event_attributes.upserted_memo.fields)
        )
    return ""


async def history_of(client: Client, workflow_id: str, run_id: str | None = None) -> list[str]:
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    return events(await handle.fetch_history())


async def user_memo(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    """The run's memo without the governor's key."""
    memo = await (await handle.describe()).memo()
    return {key: value for key, value in memo.items() if key != GOVERNOR_MEMO_KEY}


def client_failure(error: BaseException) -> list[dict[str, Any]]:
    """What a client sees of a failure (the cause chain, like ``failure_of``)."""
    return failure_of(error)


# -- the three setups -------------------------------------------------------------------

EMPTY = Policy.from_dict({})


def _generous() -> Policy:
    quotas = {
        "max_tokens_per_task": 1_000_000,
        "max_cost_usd_per_task": 1_000,
        "max_tool_calls_per_task": 10_000,
        "max_subtasks_per_task": 100,
        "max_child_workflows_per_task": 100,
        "max_wall_time_per_task": "1h",
    }
    return Policy.from_dict(
        {
            "agents": {wf.__name__: {"quotas": quotas} for wf in TRANSPARENCY_WORKFLOWS},
            "tools": {
                act.__name__: {"estimate": {"tokens": 100, "cost_usd": 0.01}}
                for act in TRANSPARENCY_ACTIVITIES
            },
            "models": {"m1": {"input_per_1k": 0.001, "output_per_1k": 0.002}},
        }
    )


GENEROUS = _generous()

Scenario = Callable[[Client, str], Awaitable[dict[str, Any]]]


async def three_ways(
    env: WorkflowEnvironment, governed: Any, scenario: Scenario
) -> dict[str, dict[str, Any]]:
    """What ``scenario`` observes plain, governed with an empty and with a generous policy.

    The three run side by side, each on a task queue of its own.
    """

    async def plain() -> dict[str, Any]:
        task_queue = f"plain-{uuid.uuid4()}"
        async with Worker(
            env.client,
            task_queue=task_queue,
            workflows=TRANSPARENCY_WORKFLOWS,
            activities=TRANSPARENCY_ACTIVITIES,
        ):
            return await scenario(env.client, task_queue)

    async def under(policy: Policy) -> dict[str, Any]:
        async with governed(policy, TRANSPARENCY_WORKFLOWS, TRANSPARENCY_ACTIVITIES) as g:
            return await scenario(g.client, g.task_queue)

    observed = await asyncio.gather(plain(), under(EMPTY), under(GENEROUS))
    return dict(zip(("plain", "empty policy", "generous policy"), observed, strict=True))


def assert_transparent(seen: dict[str, dict[str, Any]], keys: Sequence[str] = ()) -> None:
    """Every governed observation equals the plain one (only ``keys``, if given)."""
    plain = seen["plain"]
    for name, observed in seen.items():
        for key in keys or plain:
            assert observed[key] == plain[key], f"{key}: governed ({name}) differs from plain"


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


# -- scenarios -----------------------------------------------------------------------------


async def continue_as_new(client: Client, task_queue: str) -> dict[str, Any]:
    handle = await client.start_workflow(
        Hopper.run, Hops(left=2, seen=[]), id=_id("hopper"), task_queue=task_queue
    )
    result = await handle.result()
    runs: list[list[str]] = []
    run_id: str | None = handle.first_execution_run_id or handle.result_run_id
    while run_id:
        history = await client.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
        runs.append(events(history))
        last = history.events[-1]
        run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return {"result": result, "histories": runs}


async def async_completion(client: Client, task_queue: str) -> dict[str, Any]:
    workflow_id = _id("approval")
    handle = await client.start_workflow(Approval.run, id=workflow_id, task_queue=task_queue)
    for key in ("approve", "deny"):
        token_key = f"{workflow_id}:{key}"

        async def arrived(token_key: str = token_key) -> bool:
            return token_key in TOKENS

        await eventually(arrived)
        activity = client.get_async_activity_handle(task_token=TOKENS[token_key])
        await activity.heartbeat("reviewing")
        if key == "approve":
            await activity.complete("approved by alice")
        else:
            await activity.fail(ApplicationError("denied", {"by": "bob"}, type="Denied"))
    return {"result": await handle.result(), "history": await history_of(client, workflow_id)}


async def heartbeats(client: Client, task_queue: str) -> dict[str, Any]:
    workflow_id = _id("heartbeats")
    result = await client.execute_workflow(Heartbeats.run, id=workflow_id, task_queue=task_queue)
    return {"result": result, "history": await history_of(client, workflow_id)}


async def signals_queries_updates(client: Client, task_queue: str) -> dict[str, Any]:
    workflow_id = _id("inbox")
    handle = await client.start_workflow(
        Inbox.run, id=workflow_id, task_queue=task_queue, memo={"owner": "qa", "n": 1}
    )
    seen: dict[str, Any] = {}
    await handle.signal(Inbox.add, "a")
    seen["query"] = await handle.query(Inbox.items_so_far)
    seen["update"] = await handle.execute_update(Inbox.put, "b")
    with pytest.raises(WorkflowUpdateFailedError) as rejected:
        await handle.execute_update(Inbox.put, "")
    seen["rejected update"] = client_failure(rejected.value)
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await handle.execute_update(Inbox.fail_update, "no")
    seen["failed update"] = client_failure(failed.value)
    with pytest.raises(WorkflowQueryFailedError) as unknown:
        await handle.query("no_such_query")
    # footprint: the SDK lists every query handler the run has, the governor's too
    words = str(unknown.value).split(" ")
    seen["unknown query"] = " ".join(w for w in words if w.strip("[]") not in GOVERNOR_HANDLERS)
    seen["query after"] = await handle.query(Inbox.items_so_far)
    await handle.signal(Inbox.close)
    seen["result"] = await handle.result()
    seen["memo"] = await user_memo(handle)
    seen["history"] = await history_of(client, workflow_id)
    return seen


async def local_activities(client: Client, task_queue: str) -> dict[str, Any]:
    workflow_id = _id("local")
    result = await client.execute_workflow(LocalWork.run, id=workflow_id, task_queue=task_queue)
    return {"result": result, "history": await history_of(client, workflow_id)}


async def child_workflows(client: Client, task_queue: str) -> dict[str, Any]:
    workflow_id = _id("parent")
    result = await client.execute_workflow(Parent.run, id=workflow_id, task_queue=task_queue)
    return {
        "result": result,
        "history": await history_of(client, workflow_id),
        "child history": await history_of(client, f"{workflow_id}.ok"),
        "failed child history": await history_of(client, f"{workflow_id}.fail"),
    }


async def patching(client: Client, task_queue: str) -> dict[str, Any]:
    workflow_id = _id("patched")
    result = await client.execute_workflow(Patched.run, id=workflow_id, task_queue=task_queue)
    return {"result": result, "history": await history_of(client, workflow_id)}


async def eager_start(client: Client, task_queue: str) -> dict[str, Any]:
    workflow_id = _id("eager")
    handle = await client.start_workflow(
        Quick.run, "fast", id=workflow_id, task_queue=task_queue, request_eager_start=True
    )
    return {
        "eagerly started": getattr(handle, "__temporal_eagerly_started", None),
        "result": await handle.result(),
        "history": await history_of(client, workflow_id),
    }


async def cancellation(client: Client, task_queue: str) -> dict[str, Any]:
    workflow_id = _id("cancel")
    handle = await client.start_workflow(Cancellable.run, id=workflow_id, task_queue=task_queue)

    async def running() -> bool:
        return STARTED.get(workflow_id, 0) > 0

    await eventually(running)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    return {
        "failure": client_failure(failure.value),
        "cleanups": CLEANUPS.get(workflow_id, []),
        "history": await history_of(client, workflow_id),
    }


async def paid_failure(client: Client, task_queue: str) -> dict[str, Any]:
    workflow_id = _id("paid-failure")
    with pytest.raises(WorkflowFailureError) as failure:
        await client.execute_workflow(PaidFailure.run, id=workflow_id, task_queue=task_queue)
    caught = await client.execute_workflow(
        PaidFailureCaught.run, id=_id("paid-failure-caught"), task_queue=task_queue
    )
    return {
        "client failure": client_failure(failure.value),
        "agent code failure": caught,
        "history": await history_of(client, workflow_id),
    }


# -- the tests -----------------------------------------------------------------------------


async def test_continue_as_new_is_transparent(env: WorkflowEnvironment, governed: Any) -> None:
    seen = await three_ways(env, governed, continue_as_new)
    assert seen["plain"]["result"] == ["echo hop 2", "echo hop 1", "echo hop 0"]
    assert len(seen["plain"]["histories"]) == 3
    assert_transparent(seen)


async def test_async_activity_completion_is_transparent(
    env: WorkflowEnvironment, governed: Any
) -> None:
    seen = await three_ways(env, governed, async_completion)
    plain = seen["plain"]["result"]
    assert plain["approved"] == "approved by alice"
    assert plain["denied"][1]["type"] == "Denied" and plain["denied"][1]["details"] == [
        {"by": "bob"}
    ]
    assert_transparent(seen)


async def test_heartbeat_details_are_transparent(env: WorkflowEnvironment, governed: Any) -> None:
    seen = await three_ways(env, governed, heartbeats)
    plain = seen["plain"]["result"]
    assert plain["resumed"] == ["some details!", 1]
    timeouts = [entry for entry in plain["stalled"] if entry["class"] == "TimeoutError"]
    assert [(t["timeout"], t["heartbeat"]) for t in timeouts] == [("HEARTBEAT", ["some details!"])]
    assert_transparent(seen)


async def test_signals_queries_and_updates_are_transparent(
    env: WorkflowEnvironment, governed: Any
) -> None:
    seen = await three_ways(env, governed, signals_queries_updates)
    plain = seen["plain"]
    assert plain["query"] == ["a"] and plain["update"] == 2
    assert plain["query after"] == ["a", "echo b"]
    assert plain["rejected update"][-1]["message"] == "an empty item"
    assert plain["memo"] == {"owner": "qa", "n": 1}
    assert_transparent(seen)


async def test_local_activities_are_transparent(env: WorkflowEnvironment, governed: Any) -> None:
    seen = await three_ways(env, governed, local_activities)
    assert seen["plain"]["result"]["said"] == "echo local"
    assert seen["plain"]["result"]["refused"][-1]["details"] == [{"why": "policy"}, 7]
    assert_transparent(seen)


async def test_child_workflows_are_transparent(env: WorkflowEnvironment, governed: Any) -> None:
    seen = await three_ways(env, governed, child_workflows)
    plain = seen["plain"]["result"]
    assert plain["done"] == "echo research"
    assert plain["failed"][-1]["details"] == [{"task": "fail"}]
    assert_transparent(seen)


async def test_patching_in_agent_code_is_transparent(
    env: WorkflowEnvironment, governed: Any
) -> None:
    seen = await three_ways(env, governed, patching)
    assert seen["plain"]["result"] == "echo new"
    assert "MARKER_RECORDED core_patch new-prompt" in seen["plain"]["history"]
    assert_transparent(seen)


async def test_eager_workflow_start_is_transparent(env: WorkflowEnvironment, governed: Any) -> None:
    seen = await three_ways(env, governed, eager_start)
    if not seen["plain"]["eagerly started"]:
        pytest.skip("this dev server does not start workflows eagerly")
    assert seen["plain"]["result"] == "echo fast"
    assert_transparent(seen)


async def test_cancellation_reaches_agent_code_as_without_the_governor(
    env: WorkflowEnvironment, governed: Any
) -> None:
    seen = await three_ways(env, governed, cancellation)
    plain = seen["plain"]
    assert plain["cleanups"] == ["after cancel"]
    assert "ACTIVITY_TASK_CANCEL_REQUESTED" in plain["history"]
    assert_transparent(seen)


async def test_a_failure_after_reported_usage_is_the_users_own(
    env: WorkflowEnvironment, governed: Any
) -> None:
    seen = await three_ways(env, governed, paid_failure)
    plain = seen["plain"]
    assert plain["client failure"][-1]["details"] == []
    assert plain["agent code failure"][-1]["details"] == []
    assert_transparent(seen)


async def test_a_custom_payload_converter_is_transparent(env: WorkflowEnvironment) -> None:
    """The pydantic data converter on the client; histories replayed here with it."""
    seen: dict[str, dict[str, Any]] = {}
    ticket = Ticket(id="T-1", tags=["billing", "urgent"])
    for name, policy in (("plain", None), ("empty policy", EMPTY), ("generous policy", GENEROUS)):
        plugins = [GovernorPlugin(policy)] if policy is not None else []
        client = Client(
            env.client.service_client,
            namespace=env.client.namespace,
            data_converter=pydantic_data_converter,
            plugins=plugins,
        )
        task_queue = f"pydantic-{uuid.uuid4()}"
        workflow_id = _id("triage")
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=TRANSPARENCY_WORKFLOWS,
            activities=TRANSPARENCY_ACTIVITIES,
        ):
            result = await client.execute_workflow(
                Triager.run, ticket, id=workflow_id, task_queue=task_queue
            )
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        seen[name] = {"result": result, "type": type(result).__name__, "history": events(history)}
        if policy is not None:
            await _replay(history, policy, pydantic_data_converter)
    assert seen["plain"]["result"].notes == ["tagged billing", "tagged urgent", "done"]
    assert_transparent(seen)


async def _replay(history: WorkflowHistory, policy: Policy, converter: DataConverter) -> None:
    replayer = Replayer(
        workflows=TRANSPARENCY_WORKFLOWS, data_converter=converter, plugins=[GovernorPlugin(policy)]
    )
    await replayer.replay_workflow(history)


async def test_the_scenarios_are_deterministic_plain(env: WorkflowEnvironment) -> None:
    """The comparison is fair: two plain runs of the timing-sensitive scenarios agree."""
    observed = []
    for _ in range(2):
        task_queue = f"plain-{uuid.uuid4()}"
        async with Worker(
            env.client,
            task_queue=task_queue,
            workflows=TRANSPARENCY_WORKFLOWS,
            activities=TRANSPARENCY_ACTIVITIES,
        ):
            observed.append(
                await asyncio.gather(
                    cancellation(env.client, task_queue), heartbeats(env.client, task_queue)
                )
            )
    assert observed[0] == observed[1]
