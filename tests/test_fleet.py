"""A fleet on the dev server: 4 worker processes, 200 racing runs of 20 tenants on 4 shards.

Issue 13, item 6. Every worker is an OS process of its own (tests/worker_process.py), so
the ledgers (the root and its tenant shards, ``shared.shards: 4``) are all they share.
Tenant and owner totals bind on the shards, the fleet's concurrency (runs at once) binds
on the root, and the root reserves every token under a per-minute ceiling no window can
reach (a minute boundary in the middle of the race changes nothing that is asserted).
The ledgers continue as new every few dozen updates during the race, and in one variant a
worker is SIGKILLed mid-race and the others take its runs over.

What must hold, whatever the interleaving: no scope over its ceiling, every ledger's
totals exact (``committed + released == granted``, nothing reserved or open), each
tenant's and owner's committed tokens on its shard equal to what its runs say they spent
(their ``governor.budget`` snapshots), and the root's committed tokens equal to what every
run spent.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from processes import WorkerProcesses
from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.core.shards import ShardMap, shard_of
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot
from test_shared_processes import (
    assert_balanced,
    bounded,
    governed_client,
    new_task_queue,
    stuck,
    write_policy,
)
from workflows import Spender, Steps

WORKERS, SHARDS, TENANTS, RUNS = 4, 4, 20, 200
OWNERS = ("alice", "bob")
ESTIMATE = 100
"""Tokens each `spend` dispatch reserves; what it reports is 50 to 100 (never above)."""
TENANT_CEILING, OWNER_CEILING = 600, 350
"""Totals per tenant and per owner: a tenant's ten runs ask for about 1,900 tokens, half
of them by each of its two owners."""
GLOBAL_SLOTS = 100
"""Runs at once in the whole fleet (``global.max_concurrent_tasks``)."""
GLOBAL_TOKENS_PER_MINUTE = 10_000_000
"""Far above the race's demand: every token is reserved on the root, none is refused."""
CONTINUE_AS_NEW_AFTER = 40
"""Updates after which a ledger continues as new: several times during the race."""
OUTCOME_TIMEOUT = 240.0
"""The race takes 25-60 s here (a killed worker's runs wait out its tasks' timeouts); a
test process of the suite shares the 2 cores with the other and its dev server."""
SAMPLE_EVERY = 0.3
RUN_TASK_TIMEOUT = timedelta(seconds=30)
"""Workflow task timeout of the racing runs (Temporal's default is 10 s). On 2 cores
shared with the other test process, 4 workers and the dev server, an activation can take
seconds; a timed-out task is retried on another worker that replays the run from the
start, which only adds load. The killed worker's started tasks take this long to move."""
QUERIES_AT_ONCE = 16
"""Budget queries in flight at once: a closed run's query replays its whole history."""


def tenants_on_every_shard(tag: str) -> list[str]:
    """Twenty tenant names, five on each shard (by the fleet's own hash)."""
    per_shard = TENANTS // SHARDS
    chosen: dict[int, list[str]] = {i: [] for i in range(SHARDS)}
    for k in itertools.count():
        name = f"t{k}-{tag}"
        bucket = chosen[shard_of(name, SHARDS)]
        if len(bucket) < per_shard:
            bucket.append(name)
        if all(len(b) == per_shard for b in chosen.values()):
            return [name for bucket in chosen.values() for name in bucket]
    raise AssertionError("unreachable")


def steps_of(run: int) -> list[int]:
    """What run ``run``'s dispatches report: 1 to 4 of them, 50 to 100 tokens each."""
    return [50 + (run * 37 + step * 11) % 51 for step in range(1 + (run // TENANTS) % 4)]


def tenant_and_owner(run: int, tenants: list[str]) -> tuple[str, str]:
    """Each tenant gets ten runs, five by each owner."""
    return tenants[run % TENANTS], OWNERS[(run // TENANTS) % 2]


@dataclass
class Race:
    """What the test saw of the ledgers while runs were still open."""

    runs_of: dict[str, list[str]] = field(default_factory=dict)
    """Ledger id -> its run ids, in the order first seen."""
    peak_slots: float = 0.0
    """Most global concurrency slots held at once, in any sample of the root."""
    samples: int = 0
    killed_with_runs_open: float = 0.0
    """Slots held (runs running) when the worker was killed."""


async def described_run(client: Client, ledger_id: str) -> str | None:
    try:
        description = await bounded(client.get_workflow_handle(ledger_id).describe(), 5)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None  # not started yet: no run of its tenants reached it
        raise
    return description.run_id


async def ledger_state(
    client: Client, ledger_id: str, scope: str = "", seconds: float = 15.0
) -> dict[str, Any]:
    state: dict[str, Any] = await bounded(
        client.get_workflow_handle(ledger_id).query("state", scope), seconds
    )
    return state


async def root_sample(client: Client, root_id: str) -> dict[str, Any] | None:
    """The root's global counters now, or ``None`` when it cannot answer a query right now
    (its workflow task is on a worker that was just killed: the next sample will do)."""
    try:
        return await ledger_state(client, root_id, "global", seconds=5)
    except (TimeoutError, RPCError):
        return None


def slots_held(root: dict[str, Any]) -> float:
    """Global concurrency slots held now: runs running."""
    return sum(
        float(c["reserved"])
        for c in root["counters"]
        if c["scope"] == "global" and c["resource"] == "concurrency"
    )


async def watch(client: Client, ledgers: ShardMap, race: Race, over: asyncio.Event) -> None:
    """Sample every ledger's run id and the root's held slots until the race is over."""
    while not over.is_set():
        for ledger_id in ledgers.all_ledgers():
            run_id = await described_run(client, ledger_id)
            seen = race.runs_of.setdefault(ledger_id, [])
            if run_id is not None and run_id not in seen:
                seen.append(run_id)
        root = await root_sample(client, ledgers.root) if race.runs_of[ledgers.root] else None
        if root is not None:
            race.peak_slots = max(race.peak_slots, slots_held(root))
            race.samples += 1
        await asyncio.sleep(SAMPLE_EVERY)


async def kill_mid_race(client: Client, root_id: str, doomed: Popen[bytes], race: Race) -> None:
    """SIGKILL a worker once an eighth of the runs ended while at least 8 are running."""
    while True:
        root = await root_sample(client, root_id)
        if root is not None:
            ended = root["released"].get("concurrency", 0.0)
            held = slots_held(root)
            if ended >= RUNS // 8 and held >= 8:
                break
        await asyncio.sleep(0.1)
    os.kill(doomed.pid, signal.SIGKILL)
    await asyncio.to_thread(doomed.wait, 5)
    race.killed_with_runs_open = held


@dataclass(frozen=True)
class Trace:
    """Who ran a run: the worker pid of each workflow and activity task, in order."""

    pids: list[str]
    dispatched: bool
    """Whether it scheduled any activity (a run halted at its start spent nothing)."""


async def trace(handle: WorkflowHandle[Any, Any]) -> Trace:
    history = await bounded(handle.fetch_history())
    identities, dispatched = [], False
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            identities.append(event.workflow_task_started_event_attributes.identity)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            identities.append(event.activity_task_started_event_attributes.identity)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            dispatched = True
    return Trace([identity.split("@")[0] for identity in identities], dispatched)


async def ledger_trouble(client: Client, ledgers: ShardMap) -> str:
    """Each ledger's pending workflow task and its history's task failures and timeouts."""
    lines = []
    for ledger_id in ledgers.all_ledgers():
        handle = client.get_workflow_handle(ledger_id)
        try:
            raw = (await bounded(handle.describe(), 5)).raw_description
            history = await bounded(handle.fetch_history(), 10)
        except RPCError as error:
            lines.append(f"{ledger_id}: {error}")
            continue
        task = raw.pending_workflow_task if raw.HasField("pending_workflow_task") else None
        troubles: dict[str, int] = {}
        last_failure = ""
        for event in history.events:
            if event.event_type in (
                EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
                EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
            ):
                name = EventType.Name(event.event_type)
                troubles[name] = troubles.get(name, 0) + 1
                if event.HasField("workflow_task_failed_event_attributes"):
                    last_failure = str(event.workflow_task_failed_event_attributes)[:1500]
        tail = [EventType.Name(e.event_type) for e in history.events[-6:]]
        attempt = task.attempt if task is not None else None
        lines.append(
            f"{ledger_id} run {raw.workflow_execution_info.execution.run_id}: "
            f"{len(history.events)} events, pending task attempt {attempt}, {troubles}, "
            f"last {tail} {last_failure}"
        )
    return "\n".join(lines)


def committed_tokens_of(state: dict[str, Any], scope: str) -> float:
    """A scope's committed tokens in total (0 where it never reserved any)."""
    found = [
        float(c["committed"])
        for c in state["counters"]
        if c["scope"] == scope and c["resource"] == "tokens" and c["window_s"] is None
    ]
    assert len(found) <= 1, found
    return sum(found)


def fleet_policy(tmp_path: Path, pooled: bool = False) -> tuple[Path, Policy, ShardMap]:
    policy_file, policy, root_id = write_policy(
        tmp_path,
        {
            "global": {
                "max_concurrent_tasks": GLOBAL_SLOTS,
                "max_tokens_per_minute": GLOBAL_TOKENS_PER_MINUTE,
            },
            "tenants": {
                "default": {
                    "quotas": {"max_tokens": TENANT_CEILING},
                    "per_owner": {"max_tokens": OWNER_CEILING},
                }
            },
            "tools": {"spend": {"estimate": {"tokens": ESTIMATE}}},
            "shared": {
                "shards": SHARDS,
                "continue_as_new_after": CONTINUE_AS_NEW_AFTER,
                # Temporal takes 10 updates in flight per workflow: 4 processes x 2
                "max_in_flight_updates": 2,
                "hierarchical_leases": pooled,
            },
        },
    )
    return policy_file, policy, ShardMap(root_id, SHARDS)


async def pools_settled(client: Client, ledgers: ShardMap, timeout: float = 90.0) -> None:
    """Wait until no shard holds a pool and the root holds nothing open."""
    deadline = time.monotonic() + timeout
    while True:
        states = [await ledger_state(client, i) for i in ledgers.all_ledgers()]
        if all(not s.get("pools") for s in states) and states[-1]["open_reservations"] == 0:
            return
        assert time.monotonic() < deadline, "the shards' pools were not settled"
        await asyncio.sleep(0.5)


def breach_of(outcome: Any, tenant: str, owner: str, run_id: str) -> str | None:
    """The limit that halted a run (``None``: it completed); fails on any other ending."""
    if not isinstance(outcome, BaseException):
        return None
    assert isinstance(outcome, WorkflowFailureError), f"{run_id}: {outcome!r}"
    details = BreachDetails.from_error(outcome)
    assert details is not None, f"{run_id}: {outcome!r} caused by {outcome.cause!r}"
    expected = {
        "global": "global.max_concurrent_tasks",
        f"tenant:{tenant}": "tenants.default.quotas.max_tokens",
        f"owner:{tenant}/{owner}": "tenants.default.per_owner.max_tokens",
    }
    assert expected.get(details.scope) == details.limit, (run_id, details)
    return details.limit


@pytest.mark.timeout(600)  # the race may take OUTCOME_TIMEOUT; the checks after it, more
# a worker is SIGKILLed mid-race in both variants (a steady race checks nothing more and
# cost a minute and a half of CI); the second with hierarchical leases (pools)
@pytest.mark.parametrize(
    ("kill", "pooled"),
    [(True, False), (True, True)],
    ids=["worker-killed", "pools-worker-killed"],
)
async def test_two_hundred_runs_of_twenty_tenants_on_four_shards_and_four_workers(
    env: WorkflowEnvironment, tmp_path: Path, kill: bool, pooled: bool
) -> None:
    policy_file, policy, ledgers = fleet_policy(tmp_path, pooled)
    tenants = tenants_on_every_shard(uuid.uuid4().hex[:8])
    task_queue = new_task_queue(policy)
    client = governed_client(env, policy)
    workers = WorkerProcesses.on(env, task_queue, policy_file)
    race, over = Race(), asyncio.Event()
    try:
        # one after the other: four processes importing at once on a loaded machine can
        # miss the readiness deadline. A killed worker's sticky runs move on after 1 s.
        procs = [await workers.start(sticky_timeout_seconds=1) for _ in range(WORKERS)]
        began = time.monotonic()
        watching = asyncio.create_task(watch(client, ledgers, race, over))
        killing = (
            asyncio.create_task(kill_mid_race(client, ledgers.root, procs[0], race))
            if kill
            else None
        )

        async def start(run: int) -> WorkflowHandle[Any, Any]:
            with attribution(*tenant_and_owner(run, tenants)):
                return await client.start_workflow(
                    Spender.run,
                    Steps(tokens=steps_of(run)),
                    id=f"fleet-{run}-{uuid.uuid4().hex[:8]}",
                    task_queue=task_queue,
                    task_timeout=RUN_TASK_TIMEOUT,
                )

        handles = await bounded(asyncio.gather(*(start(run) for run in range(RUNS))), 60)
        try:
            outcomes = await bounded(
                asyncio.gather(*(h.result() for h in handles), return_exceptions=True),
                OUTCOME_TIMEOUT,
            )
        except TimeoutError:
            trouble = await ledger_trouble(client, ledgers)
            raise AssertionError(
                f"the race did not end within {OUTCOME_TIMEOUT:g} s (runs still open, and "
                f"the ledgers' workflow tasks):\n{await stuck(client, handles, ledgers.root)}"
                f"\n{trouble}"
            ) from None
        raced = time.monotonic() - began
        over.set()
        await bounded(watching)
        if killing is not None:
            # it waits for 8 runs running: it cannot have fired after the race
            assert killing.done(), "the race ended before the worker was killed"
            await killing

        # every run completed or was halted by a shared limit of its own scopes
        breaches: dict[str, int] = {}
        for run, (handle, outcome) in enumerate(zip(handles, outcomes, strict=True)):
            limit = breach_of(outcome, *tenant_and_owner(run, tenants), handle.id)
            if limit is None:
                assert outcome == len(steps_of(run)), (handle.id, outcome)
            else:
                breaches[limit] = breaches.get(limit, 0) + 1
        assert breaches.get("global.max_concurrent_tasks"), f"fleet slots never bound: {breaches}"
        assert breaches.get("tenants.default.quotas.max_tokens"), f"no tenant total: {breaches}"
        assert breaches.get("tenants.default.per_owner.max_tokens"), f"no owner total: {breaches}"
        assert 0 < race.peak_slots <= GLOBAL_SLOTS, race

        # what each run spent, by its own account; it holds nothing
        traces = await bounded(asyncio.gather(*(trace(h) for h in handles)), 60)
        gate = asyncio.Semaphore(QUERIES_AT_ONCE)

        async def spent_by(handle: WorkflowHandle[Any, Any], traced: Trace) -> float:
            if not traced.dispatched:
                return 0.0  # halted at its start: it never dispatched anything
            async with gate:
                snapshot = BudgetSnapshot.model_validate(await bounded(handle.query(BUDGET_QUERY)))
            assert snapshot.shared_open == 0, handle.id
            return snapshot.committed.get("tokens", 0.0)

        by_run = await asyncio.gather(
            *(spent_by(h, t) for h, t in zip(handles, traces, strict=True))
        )
        dead = str(procs[0].pid) if kill else None
        spent: dict[tuple[str, str], float] = {}
        for run, (tokens, traced, outcome) in enumerate(zip(by_run, traces, outcomes, strict=True)):
            key = tenant_and_owner(run, tenants)
            spent[key] = spent.get(key, 0.0) + tokens
            if dead not in traced.pids:
                # what its dispatches reported, in order, up to where it was halted (a
                # killed worker's attempt may count once more: checked by the ledger below)
                steps = steps_of(run)
                done = len(steps) if outcome == len(steps) else None
                prefixes = list(itertools.accumulate(steps, initial=0))
                assert tokens in (prefixes if done is None else [prefixes[done]]), (run, tokens)

        if pooled:  # the shards' pools settle on the root once idle (10 s)
            await pools_settled(client, ledgers)
        states = {i: await ledger_state(client, i) for i in ledgers.all_ledgers()}
        for ledger_id, state in states.items():
            assert_balanced(state)
            assert state["waiters"] == 0, ledger_id
            for c in state["counters"]:
                assert c["reserved"] == pytest.approx(0, abs=1e-6), (ledger_id, c)
                if c["ceiling"] is not None:
                    assert c["committed"] <= c["ceiling"] + 1e-6, (ledger_id, c)
                on = ledgers.ledger_of_scope(c["scope"])
                assert on == ledger_id, f"{c['scope']} found on {ledger_id}, belongs on {on}"

        # exact: each shard committed what its tenants' runs spent, the root all of it
        for tenant in tenants:
            shard = states[ledgers.ledger_of_tenant(tenant)]
            by_tenant = sum(spent.get((tenant, owner), 0.0) for owner in OWNERS)
            assert by_tenant <= TENANT_CEILING
            assert committed_tokens_of(shard, f"tenant:{tenant}") == pytest.approx(by_tenant)
            for owner in OWNERS:
                by_owner = spent.get((tenant, owner), 0.0)
                assert by_owner <= OWNER_CEILING
                assert committed_tokens_of(shard, f"owner:{tenant}/{owner}") == pytest.approx(
                    by_owner
                ), (tenant, owner)
        total = sum(spent.values())
        assert states[ledgers.root]["committed"]["tokens"] == pytest.approx(total)
        on_shards = sum(
            states[i]["committed"].get("tokens", 0.0) for i in ledgers.all_ledgers()[:-1]
        )
        assert on_shards == pytest.approx(total)

        # the root and every shard continued as new while runs were open (with pools the
        # root sees a fraction of the updates: the shards, at least)
        for ledger_id in ledgers.all_ledgers()[:-1] if pooled else ledgers.all_ledgers():
            assert len(race.runs_of.get(ledger_id, [])) >= 2, (ledger_id, race.runs_of)
        if pooled:
            pooled_calls = sum(
                1 for i in ledgers.all_ledgers()[:-1] if states[i]["pools_asked"] > 0
            )
            assert pooled_calls >= 1, "no shard drew from a pool"

        # every worker took part; the killed worker's runs went on elsewhere
        assert {pid for t in traces for pid in t.pids} == {str(p.pid) for p in procs}
        taken_over = [t for t in traces if dead in t.pids and t.pids[-1] != dead]
        if kill:
            assert taken_over, "no run of the killed worker was taken over by another"
        print(
            f"\nfleet: race {raced:.0f} s, breaches {breaches}, peak slots {race.peak_slots:g}, "
            f"root runs {len(race.runs_of[ledgers.root])}, killed with "
            f"{race.killed_with_runs_open:g} running, {len(taken_over)} taken over"
        )
    finally:
        over.set()
        workers.close()
