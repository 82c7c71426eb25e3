"""The ledger across worker processes: racing workers, a killed worker, hostile updates.

Workers run as separate OS processes (tests/worker_process.py, started by
tests/processes.py), so the only thing they share is the ledger entity workflow on the
dev server. Every test has its own task queue and its own ledger id.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from conftest import RECORDED, Recorded
from processes import WorkerProcesses
from temporal_governor import BreachDetails, GovernorPlugin, Policy, attribution
from temporal_governor.ledger._workflow import LEDGER_WORKFLOW, MALFORMED_UPDATE
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS, SlowSpender, Spender, Steps

PROCESS_WORKFLOWS = [*ALL_WORKFLOWS, SlowSpender]
OUTCOME_TIMEOUT = 90.0
"""50 runs take 7-20 s here; the ledger is one workflow, so a loaded machine slows them all."""
T = TypeVar("T")
NAN, INF = float("nan"), float("inf")


async def bounded(awaitable: Awaitable[T], seconds: float = 15.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def write_policy(tmp_path: Path, data: dict[str, Any]) -> tuple[Path, Policy, str]:
    """A policy file with a ledger of its own; returns its path, the policy, the ledger id."""
    ledger_id = f"ledger-{uuid.uuid4().hex[:12]}"
    data = {**data, "shared": {**data.get("shared", {}), "ledger_id": ledger_id}}
    path = tmp_path / f"policy-{ledger_id}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, Policy.from_yaml(path), ledger_id


def governed_client(env: WorkflowEnvironment, policy: Policy) -> Client:
    return Client(
        env.client.service_client,
        namespace=env.client.namespace,
        plugins=[GovernorPlugin(policy)],
    )


def new_task_queue(policy: Policy) -> str:
    task_queue = f"tq-procs-{uuid.uuid4()}"
    RECORDED.append(Recorded(task_queue, policy, PROCESS_WORKFLOWS))
    return task_queue


async def ledger_state(client: Client, ledger_id: str, scope: str = "") -> dict[str, Any]:
    return await bounded(client.get_workflow_handle(ledger_id).query("state", scope))


def counter(state: dict[str, Any], scope: str, resource: str) -> dict[str, Any]:
    return next(c for c in state["counters"] if c["scope"] == scope and c["resource"] == resource)


def assert_balanced(state: dict[str, Any]) -> None:
    """Everything ever granted was committed or released, nothing is held."""
    assert state["open_reservations"] == 0
    assert not any(state["reserved"].values())
    for resource, granted in state["granted"].items():
        settled = state["committed"].get(resource, 0.0) + state["released"].get(resource, 0.0)
        assert settled == pytest.approx(granted), resource


async def committed_tokens(handle: WorkflowHandle[Any, Any]) -> float:
    snapshot = BudgetSnapshot.model_validate(await bounded(handle.query(BUDGET_QUERY)))
    return snapshot.committed.get("tokens", 0.0)


async def activity_identities(handle: WorkflowHandle[Any, Any]) -> set[str]:
    history = await bounded(handle.fetch_history())
    return {
        event.activity_task_started_event_attributes.identity
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    }


async def stuck(client: Client, handles: list[WorkflowHandle[Any, Any]], ledger_id: str) -> str:
    """What the runs still open and the ledger are waiting for (a timeout's message)."""
    lines = []
    for handle in [*handles, client.get_workflow_handle(ledger_id)]:
        raw = (await bounded(handle.describe(), 5)).raw_description
        if raw.workflow_execution_info.status != 1 and handle.id != ledger_id:
            continue
        pending = [
            f"{a.activity_type.name} attempt {a.attempt} {PendingActivityState.Name(a.state)}"
            for a in raw.pending_activities
        ]
        task = raw.pending_workflow_task if raw.HasField("pending_workflow_task") else None
        history = await bounded(handle.fetch_history(), 5)
        tail = [EventType.Name(e.event_type) for e in history.events[-4:]]
        lines.append(f"{handle.id}: activities {pending}; workflow task {task}; last {tail}")
    return f"runs still open after {OUTCOME_TIMEOUT} s:\n" + "\n".join(lines)


@pytest.mark.parametrize("leases", [True, False], ids=["leases", "per-dispatch"])
async def test_fifty_runs_on_two_worker_processes_never_overspend_a_tenant(
    env: WorkflowEnvironment, tmp_path: Path, leases: bool
) -> None:
    policy_file, policy, ledger_id = write_policy(
        tmp_path,
        {
            "tenants": {"acme": {"quotas": {"max_tokens": 3000}}},
            "tools": {"spend": {"estimate": {"tokens": 100}}},
            "shared": {"leases": leases},
        },
    )
    task_queue = new_task_queue(policy)
    client = governed_client(env, policy)
    workers = WorkerProcesses.on(env, task_queue, policy_file)
    try:
        procs = await asyncio.gather(workers.start(), workers.start())
        with attribution(tenant="acme"):
            handles = await bounded(
                asyncio.gather(
                    *(
                        client.start_workflow(
                            Spender.run,
                            Steps(tokens=[100] * 3),
                            id=f"spender-{i}-{uuid.uuid4()}",
                            task_queue=task_queue,
                        )
                        for i in range(50)
                    )
                )
            )
        try:
            outcomes = await bounded(
                asyncio.gather(*(h.result() for h in handles), return_exceptions=True),
                OUTCOME_TIMEOUT,
            )
        except TimeoutError:
            raise AssertionError(await stuck(client, handles, ledger_id)) from None

        completed = [o for o in outcomes if o == 3]
        refused = [o for o in outcomes if isinstance(o, WorkflowFailureError)]
        assert len(completed) + len(refused) == 50, [
            o for o in outcomes if o != 3 and not isinstance(o, WorkflowFailureError)
        ]
        assert refused, "demand (15,000) is five times the ceiling: runs must be halted"
        assert len(completed) <= 10
        for failure in refused:
            details = BreachDetails.from_error(failure)
            assert details is not None, f"{failure!r} caused by {failure.cause!r}"
            assert details.scope == "tenant:acme"
            assert details.limit == "tenants.acme.quotas.max_tokens"

        by_runs = await bounded(asyncio.gather(*(committed_tokens(h) for h in handles)))
        state = await ledger_state(client, ledger_id, "tenant:acme")
        tokens = counter(state, "tenant:acme", "tokens")
        assert tokens["committed"] <= 3000
        assert tokens["committed"] == pytest.approx(sum(by_runs))
        assert tokens["reserved"] == pytest.approx(0, abs=1e-6)
        assert_balanced(state)

        identities: set[str] = set()
        for found in await bounded(asyncio.gather(*(activity_identities(h) for h in handles))):
            identities |= found
        pids = {identity.split("@")[0] for identity in identities}
        assert pids == {str(proc.pid) for proc in procs}, identities
    finally:
        workers.close()


async def test_worker_killed_mid_activity_leaves_an_exact_ledger(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    reported = 250
    policy_file, policy, ledger_id = write_policy(
        tmp_path,
        {
            "tenants": {"acme": {"quotas": {"max_tokens": 10_000}}},
            "tools": {"slow_spend": {"estimate": {"tokens": 1000}}},
        },
    )
    task_queue = new_task_queue(policy)
    client = governed_client(env, policy)
    workers = WorkerProcesses.on(env, task_queue, policy_file)
    try:
        # the killed worker's sticky queue is given up after 1 s, so its runs move on
        doomed = await workers.start(slow_activity_seconds=60, sticky_timeout_seconds=1)
        with attribution(tenant="acme"):
            handle = await bounded(
                client.start_workflow(
                    SlowSpender.run,
                    reported,
                    id=f"slow-{uuid.uuid4()}",
                    task_queue=task_queue,
                )
            )

        async def reported_and_sleeping() -> None:
            # the first heartbeat comes after report_usage: the attempt has spent
            while True:
                description = await handle.describe()
                for pending in description.raw_description.pending_activities:
                    if (
                        pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                        and pending.HasField("last_heartbeat_time")
                    ):
                        return
                await asyncio.sleep(0.1)

        await bounded(reported_and_sleeping(), 20)
        held = await ledger_state(client, ledger_id, "tenant:acme")
        assert held["open_reservations"] >= 1
        assert counter(held, "tenant:acme", "tokens")["reserved"] >= 1000, "the estimate is held"

        doomed.kill()
        doomed.wait(timeout=5)
        await workers.start(slow_activity_seconds=0, sticky_timeout_seconds=1)
        attempt = await bounded(handle.result(), 30)
        assert attempt >= 2, "the killed attempt was retried on the other worker"

        by_run = await committed_tokens(handle)
        state = await ledger_state(client, ledger_id, "tenant:acme")
        tokens = counter(state, "tenant:acme", "tokens")
        # what it reported, never twice: the dead attempt's usage is unknown to anybody
        # (not counted) or, at most, counted once
        assert tokens["committed"] in (pytest.approx(reported), pytest.approx(2 * reported))
        assert tokens["committed"] == pytest.approx(by_run)
        assert tokens["reserved"] == pytest.approx(0, abs=1e-6)
        assert_balanced(state)
    finally:
        workers.close()


def _limit(resource: str = "tokens", **override: Any) -> dict[str, Any]:
    return {
        "name": f"tenants.acme.quotas.max_{resource}",
        "scope": "tenant:acme",
        "resource": resource,
        "ceiling": 1000.0,
        **override,
    }


def _reserve(**override: Any) -> dict[str, Any]:
    return {
        "key": "client/k1",
        "run": "client/run",
        "amounts": {"tokens": 10.0},
        "limits": [_limit()],
        "ttl_s": 60.0,
        **override,
    }


MALFORMED: list[tuple[str, str, Any]] = [
    ("missing key", "reserve", {k: v for k, v in _reserve().items() if k != "key"}),
    ("empty key", "reserve", _reserve(key="")),
    ("missing run", "reserve", {k: v for k, v in _reserve().items() if k != "run"}),
    ("negative amount", "reserve", _reserve(amounts={"tokens": -5.0})),
    ("unknown resource", "reserve", _reserve(amounts={"gold": 1.0})),
    ("limit on an unreserved resource", "reserve", _reserve(limits=[_limit("cost_usd")])),
    ("amount as text", "reserve", _reserve(amounts={"tokens": "lots"})),
    ("amounts as a list", "reserve", _reserve(amounts=[10])),
    ("limits not a list", "reserve", _reserve(limits="tenant:acme")),
    ("limit without ceiling", "reserve", _reserve(limits=[{**_limit(), "ceiling": None}])),
    ("unknown field", "reserve", _reserve(sneaky=True)),
    ("zero ttl", "reserve", _reserve(ttl_s=0)),
    ("settle without key", "settle", {"actual": {"tokens": 1.0}}),
    ("settle negative actual", "settle", {"key": "client/k1", "actual": {"tokens": -1.0}}),
    ("release_run without run", "release_run", {}),
    ("release_run wrong type", "release_run", {"run": 42}),
]


async def test_malformed_or_unknown_ledger_update_is_rejected_and_changes_nothing(
    env: WorkflowEnvironment, governed: Any
) -> None:
    policy = Policy.from_dict(
        {
            "tenants": {"acme": {"quotas": {"max_tokens": 1000}}},
            "tools": {"spend": {"estimate": {"tokens": 100}}},
            "shared": {"ledger_id": f"ledger-{uuid.uuid4().hex[:12]}"},
        }
    )
    ledger_id = policy.shared.ledger_id
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        with attribution(tenant="acme"):
            assert await bounded(g.run(Spender.run, Steps(tokens=[70]))) == 1
        ledger = g.client.get_workflow_handle(ledger_id)
        before = await ledger_state(g.client, ledger_id)
        assert counter(before, "tenant:acme", "tokens")["committed"] == 70
        assert_balanced(before)

        for what, update, request in MALFORMED:
            with pytest.raises(WorkflowUpdateFailedError) as rejected:
                await bounded(ledger.execute_update(update, request, id=f"bad-{uuid.uuid4()}"))
            cause = rejected.value.cause
            assert isinstance(cause, ApplicationError), what
            assert cause.type == MALFORMED_UPDATE, what
        # rejected by the SDK before any validator runs: an argument that does not convert
        # to the handler's parameter, and an update name the ledger does not have
        for update, request in (("reserve", "reserve everything"), ("spend_it_all", _reserve())):
            with pytest.raises((WorkflowUpdateFailedError, RPCError)):
                await bounded(ledger.execute_update(update, request, id=f"bad-{uuid.uuid4()}"))
        assert await ledger_state(g.client, ledger_id) == before

        # the same update id twice counts once (Temporal deduplicates it) ...
        first = await bounded(ledger.execute_update("reserve", _reserve(), id="same"))
        second = await bounded(ledger.execute_update("reserve", _reserve(), id="same"))
        assert first == second
        assert first["granted"] and first["amounts"] == {"tokens": 10.0}
        # ... and so does the same key under another update id (the ledger remembers it)
        again = await bounded(ledger.execute_update("reserve", _reserve(), id="same-key"))
        assert again["granted"] and again["duplicate"]
        held = await ledger_state(g.client, ledger_id)
        assert held["open_reservations"] == before["open_reservations"] + 1
        assert held["reserved"] == {"tokens": 10.0}
        assert counter(held, "tenant:acme", "tokens")["reserved"] == 10.0
        assert held["granted"]["tokens"] == before["granted"]["tokens"] + 10.0

        settle = {"key": "client/k1", "actual": {"tokens": 4.0}}
        done = await bounded(ledger.execute_update("settle", settle, id="settle-same"))
        assert done["settled"] and done["released"] == {"tokens": 6.0}
        await bounded(ledger.execute_update("settle", settle, id="settle-same"))
        late = await bounded(ledger.execute_update("settle", settle, id="settle-again"))
        assert not late["settled"]
        after = await ledger_state(g.client, ledger_id)
        assert counter(after, "tenant:acme", "tokens")["committed"] == 74
        assert after["committed"]["tokens"] == before["committed"]["tokens"] + 4.0
        assert_balanced(after)


# -- numbers a ledger must never accept -------------------------------------------------

NON_FINITE: list[tuple[str, str, Any]] = [
    ("nan ceiling", "reserve", _reserve(amounts={"tokens": 5000.0}, limits=[_limit(ceiling=NAN)])),
    ("negative ceiling", "reserve", _reserve(limits=[_limit(ceiling=-5.0)])),
    ("infinite amount", "reserve", _reserve(amounts={"tokens": INF})),
    ("infinite ttl", "reserve", _reserve(ttl_s=INF)),
    ("ttl beyond what a timer can hold", "reserve", _reserve(ttl_s=1e14)),
    ("infinite actual", "settle", {"key": "client/k1", "actual": {"tokens": INF}}),
]


@pytest.mark.parametrize(
    ("update", "request_"), [c[1:] for c in NON_FINITE], ids=[c[0] for c in NON_FINITE]
)
async def test_a_non_finite_or_negative_number_in_a_ledger_update_is_rejected(
    env: WorkflowEnvironment, update: str, request_: Any
) -> None:
    # not recorded for the session's replay: a wedged ledger's history cannot replay cleanly
    policy = Policy.from_dict({"shared": {"ledger_id": f"ledger-{uuid.uuid4().hex[:12]}"}})
    client = governed_client(env, policy)
    task_queue = f"tq-unrecorded-{uuid.uuid4()}"
    ledger = await bounded(
        client.start_workflow(
            LEDGER_WORKFLOW, {}, id=policy.shared.ledger_id, task_queue=task_queue
        )
    )
    try:
        async with Worker(client, task_queue=task_queue):
            with pytest.raises(WorkflowUpdateFailedError) as rejected:
                await bounded(ledger.execute_update(update, request_, id="non-finite"), 3)
            assert isinstance(rejected.value.cause, ApplicationError)
            assert rejected.value.cause.type == MALFORMED_UPDATE
    finally:
        await bounded(ledger.terminate("test over"), 5)
