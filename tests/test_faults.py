"""The fault suite (issue #10, item 6): shared budgets exact under parallelism and faults.

Real dev server, real worker processes (tests/processes.py), one ledger per test. Every
scenario ends with the EXACTNESS INVARIANT: the ledger's committed tokens (per scope and
overall) equal what the activities really reported, and nothing stays open (no open
reservation, nothing reserved, `committed + released == granted`). What the activities
really reported is read from a witness file the activities append to
(tests/fault_workflows.py): the worker processes are other processes, and some of them
are killed, so a file is the honest witness.

Where the governor cannot know the usage (a run terminated from outside, an attempt whose
worker or server vanished after it reported), the test asserts the documented bound
instead, and says so.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from conftest import RECORDED, Recorded, eventually
from fault_workflows import (
    FAULT_ACTIVITIES,
    FAULT_WORKFLOWS,
    FaultAgent,
    FaultTree,
    Job,
    Plan,
    TreePlan,
)
from processes import READY_TIMEOUT, WorkerProcesses, worker_processes
from temporal_governor import BreachDetails, GovernorPlugin, Policy, attribution

TEMPORAL = Path(sys.executable).parent / "temporal"
OUTCOME_TIMEOUT = 90.0
SETTLE_TIMEOUT = 15.0
"""How long a run that ended may take to leave nothing open in the ledger."""
TENANT, OWNER = "acme", "alice"
T = TypeVar("T")


# -- plumbing -----------------------------------------------------------------------------


async def bounded(awaitable: Awaitable[T], seconds: float = 15.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def write_policy(tmp_path: Path, data: dict[str, Any]) -> tuple[Path, Policy, str]:
    """A policy file with a ledger of its own; returns its path, the policy, the ledger id."""
    ledger_id = f"ledger-faults-{uuid.uuid4().hex[:12]}"
    data = {**data, "shared": {**data.get("shared", {}), "ledger_id": ledger_id}}
    path = tmp_path / f"policy-{ledger_id}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, Policy.from_yaml(path), ledger_id


def tenant_policy(max_tokens: int, **shared: Any) -> dict[str, Any]:
    """Tenant `acme` with a token total, `fault_spend` estimated at exactly what it reports."""
    return {
        "tenants": {TENANT: {"quotas": {"max_tokens": max_tokens}}},
        "tools": {"fault_spend": {"estimate": {"tokens": 100}}},
        "shared": shared,
    }


def new_task_queue(policy: Policy, record: bool = True) -> str:
    task_queue = f"tq-faults-{uuid.uuid4()}"
    if record:  # the session's last test replays every history of this queue
        RECORDED.append(Recorded(task_queue, policy, FAULT_WORKFLOWS))
    return task_queue


def governed_client(env: WorkflowEnvironment, policy: Policy) -> Client:
    return Client(
        env.client.service_client, namespace=env.client.namespace, plugins=[GovernorPlugin(policy)]
    )


# -- the witness: what the activities really reported ---------------------------------------


@dataclass
class Witness:
    path: Path

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        found = [json.loads(line) for line in lines if line.strip()]
        return [e for e in found if kind is None or e["kind"] == kind]

    def count(self, kind: str, workflow_id: str | None = None) -> int:
        return sum(
            1 for e in self.events(kind) if workflow_id is None or e["workflow_id"] == workflow_id
        )

    @property
    def reported(self) -> float:
        """Every token any attempt reported."""
        return float(sum(e["tokens"] for e in self.events("reported")))

    @property
    def reported_by_final_attempts(self) -> float:
        """Tokens reported by the last attempt of each activity (what a retry cannot lose)."""
        last: dict[tuple[str, str], dict[str, Any]] = {}
        for event in self.events("reported"):
            key = (event["run_id"], event["activity_id"])
            if key not in last or event["attempt"] > last[key]["attempt"]:
                last[key] = event
        return float(sum(e["tokens"] for e in last.values()))

    def rerun(self) -> list[dict[str, Any]]:
        """Reports of attempts that a later attempt of the same activity followed."""
        reports = self.events("reported")
        latest: dict[tuple[str, str], int] = {}
        for event in reports:
            key = (event["run_id"], event["activity_id"])
            latest[key] = max(latest.get(key, 0), event["attempt"])
        return [e for e in reports if e["attempt"] < latest[(e["run_id"], e["activity_id"])]]

    async def wait_for(
        self, kind: str, count: int, workflow_id: str | None = None, timeout: float = 30.0
    ) -> None:
        async def enough() -> bool:
            return self.count(kind, workflow_id) >= count

        try:
            await eventually(enough, timeout)
        except AssertionError:
            raise AssertionError(
                f"witness: {self.count(kind, workflow_id)} of {count} {kind!r} events "
                f"after {timeout} s"
            ) from None


def witness_of(tmp_path: Path) -> Witness:
    return Witness(tmp_path / "witness.jsonl")


def jobs(witness: Witness, count: int, tokens: int = 100, **kw: Any) -> list[Job]:
    return [Job(tokens=tokens, witness=str(witness.path), **kw) for _ in range(count)]


# -- the ledger ----------------------------------------------------------------------------


async def ledger_state(client: Client, ledger_id: str, scope: str = "") -> dict[str, Any]:
    return await bounded(client.get_workflow_handle(ledger_id).query("state", scope))


def counter(state: dict[str, Any], scope: str, resource: str = "tokens") -> dict[str, Any]:
    found = [c for c in state["counters"] if c["scope"] == scope and c["resource"] == resource]
    assert found, f"the ledger has no {resource} counter for {scope}: {state['counters']}"
    return found[0]


def holds_nothing(state: dict[str, Any]) -> bool:
    return state["open_reservations"] == 0 and not any(v > 1e-9 for v in state["reserved"].values())


async def settled(
    client: Client, ledger_id: str, witness: Witness, timeout: float = SETTLE_TIMEOUT
) -> dict[str, Any]:
    """The ledger's state once nothing is open; fails (bounded) naming what is still held."""
    last: dict[str, Any] = {}

    async def nothing_open() -> bool:
        nonlocal last
        last = await ledger_state(client, ledger_id)
        return holds_nothing(last)

    try:
        await eventually(nothing_open, timeout)
    except AssertionError:
        raise AssertionError(
            f"the ledger still holds {last['open_reservations']} reservation(s) "
            f"({last['reserved']}) {timeout:g} s after the runs ended; committed "
            f"{last['committed']}, the activities reported {witness.reported:g} tokens"
        ) from None
    return last


def assert_exact(state: dict[str, Any], reported: float, scopes: list[str], note: str = "") -> None:
    """The exactness invariant: committed == reported in every scope and overall."""
    for scope in scopes:
        committed = counter(state, scope)["committed"]
        assert committed == pytest.approx(reported), (
            f"{scope}: the ledger committed {committed:g} tokens, the activities reported "
            f"{reported:g} (released uncommitted: {state['released'].get('tokens', 0):g}){note}"
        )
    overall = state["committed"].get("tokens", 0.0)
    assert overall == pytest.approx(reported), f"overall committed {overall:g} != {reported:g}"
    assert_balanced(state)


def assert_balanced(state: dict[str, Any]) -> None:
    """Everything ever granted was committed or released, nothing is held."""
    assert holds_nothing(state), state
    for resource, granted in state["granted"].items():
        settled_ = state["committed"].get(resource, 0.0) + state["released"].get(resource, 0.0)
        assert settled_ == pytest.approx(granted), (resource, state)


# -- 1. parallel activities under a tenant budget (the case A) -----------------------


@pytest.mark.parametrize("starts", ["one_after_another", "at_once"])
async def test_parallel_activities_of_three_runs_commit_what_they_reported_and_hold_the_ceiling(
    env: WorkflowEnvironment, tmp_path: Path, starts: str
) -> None:
    """3 runs x 8 parallel activities x 100 tokens under a 1,000-token tenant ceiling.

    `one_after_another` is the issue's case A: the first run (800) must complete, the
    second and third must be halted. `at_once`: the runs race for the ceiling; a run
    halted while its other dispatches are still asking the ledger must leave nothing open.
    """
    policy_file, policy, ledger_id = write_policy(tmp_path, tenant_policy(1000))
    task_queue = new_task_queue(policy)
    client = governed_client(env, policy)
    witness = witness_of(tmp_path)
    plan = Plan(batches=[jobs(witness, 8)])

    async def start(i: int) -> Any:
        with attribution(tenant=TENANT):
            return await bounded(
                client.start_workflow(
                    FaultAgent.run, plan, id=f"parallel-{i}-{uuid.uuid4()}", task_queue=task_queue
                )
            )

    async with worker_processes(env, task_queue, policy_file, count=2, workflows="faults"):
        if starts == "at_once":
            handles = await asyncio.gather(*(start(i) for i in range(3)))
            outcomes = await bounded(
                asyncio.gather(*(h.result() for h in handles), return_exceptions=True),
                OUTCOME_TIMEOUT,
            )
        else:
            outcomes = []
            for i in range(3):
                handle = await start(i)
                done = asyncio.gather(handle.result(), return_exceptions=True)
                outcomes.extend(await bounded(done, OUTCOME_TIMEOUT))
        state = await settled(client, ledger_id, witness)

    breached = [o for o in outcomes if isinstance(o, WorkflowFailureError)]
    assert all(o == 8 or isinstance(o, WorkflowFailureError) for o in outcomes), outcomes
    for failure in breached:
        details = BreachDetails.from_error(failure)
        assert details is not None, f"{failure!r} caused by {failure.cause!r}"
        assert (details.scope, details.limit) == (
            f"tenant:{TENANT}",
            f"tenants.{TENANT}.quotas.max_tokens",
        )
    note = f"; outcomes {[o if o == 8 else 'breached' for o in outcomes]}, "
    note += f"{witness.count('started')} activity attempts started"
    assert_exact(state, witness.reported, [f"tenant:{TENANT}"], note)
    # estimates equal actuals: the refusal comes at the dispatch that would cross
    assert counter(state, f"tenant:{TENANT}")["committed"] <= 1000
    assert breached, "2,400 tokens of demand under a 1,000 ceiling, yet every run completed"
    if starts == "one_after_another":
        assert outcomes[0] == 8, f"alone, 800 tokens fit under 1,000: {outcomes[0]!r}"
        assert all(isinstance(o, WorkflowFailureError) for o in outcomes[1:]), outcomes


async def test_three_hundred_parallel_activities_in_one_run_settle_every_lease(
    governed: Any, tmp_path: Path
) -> None:
    """One run, 6 batches of 50 parallel activities, a generous tenant and owner budget."""
    policy = Policy.from_dict(
        {
            "tenants": {
                TENANT: {"quotas": {"max_tokens": 1_000_000}, "per_owner": {"max_tokens": 500_000}}
            },
            "tools": {"fault_spend": {"estimate": {"tokens": 10}}},
            "shared": {"ledger_id": f"ledger-faults-{uuid.uuid4().hex[:12]}"},
        }
    )
    witness = witness_of(tmp_path)
    plan = Plan(batches=[jobs(witness, 50, tokens=10) for _ in range(6)])
    async with governed(policy, FAULT_WORKFLOWS, FAULT_ACTIVITIES) as g:
        with attribution(tenant=TENANT, owner=OWNER):
            assert await bounded(g.run(FaultAgent.run, plan), OUTCOME_TIMEOUT) == 300
        state = await settled(g.client, policy.shared.ledger_id, witness)
    assert witness.reported == 3000
    assert_exact(state, witness.reported, [f"tenant:{TENANT}", f"owner:{TENANT}/{OWNER}"])


# -- 2. cancel mid-run ------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["sequential", "parallel"])
async def test_cancel_mid_run_settles_exactly_what_was_reported(
    env: WorkflowEnvironment, tmp_path: Path, shape: str
) -> None:
    """`handle.cancel()` while activities that reported are in flight.

    The activities complete at once when cancelled (and the workflow waits for that), so
    their usage comes back with the result and the expected value is exact. The
    reservation TTL is the default 10 min: nothing may be left for the ledger's sweep.
    """
    policy_file, policy, ledger_id = write_policy(tmp_path, tenant_policy(100_000))
    task_queue = new_task_queue(policy)
    client = governed_client(env, policy)
    witness = witness_of(tmp_path)
    if shape == "sequential":
        batches = [jobs(witness, 1), jobs(witness, 1), jobs(witness, 1, hold_s=60)]
    else:
        batches = [jobs(witness, 3), jobs(witness, 3, hold_s=60)]
    reports = sum(len(b) for b in batches)
    async with worker_processes(env, task_queue, policy_file, workflows="faults"):
        with attribution(tenant=TENANT):
            handle = await bounded(
                client.start_workflow(
                    FaultAgent.run,
                    Plan(batches=batches),
                    id=f"cancel-{uuid.uuid4()}",
                    task_queue=task_queue,
                )
            )
        await witness.wait_for("reported", reports)
        await bounded(handle.cancel())
        with pytest.raises(WorkflowFailureError) as ended:
            await bounded(handle.result(), OUTCOME_TIMEOUT)
        assert isinstance(ended.value.cause, CancelledError), ended.value.cause
        state = await settled(client, ledger_id, witness)
    assert witness.reported == 100 * reports
    assert_exact(state, witness.reported, [f"tenant:{TENANT}"])


# -- 3. terminate mid-run ----------------------------------------------------------------


async def test_terminate_mid_run_is_charged_conservatively_once_the_ttl_passes(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """`handle.terminate()`: the run cannot act, so the ledger must act for it.

    What a terminated run's in-flight activities spent is unknown to the governor; its
    open reservations are charged whole when their TTL passes (conservative, like an
    in-tree child whose spend is unknown). So: reported <= committed <= what was
    committed at the termination + everything then reserved, and nothing stays open.
    """
    ttl = 5.0
    policy_file, policy, ledger_id = write_policy(
        tmp_path, tenant_policy(100_000, reservation_ttl=f"{ttl:g}s")
    )
    task_queue = new_task_queue(policy)
    client = governed_client(env, policy)
    witness = witness_of(tmp_path)
    batches = [jobs(witness, 1), jobs(witness, 4, hold_s=60)]
    async with worker_processes(env, task_queue, policy_file, workflows="faults"):
        with attribution(tenant=TENANT):
            handle = await bounded(
                client.start_workflow(
                    FaultAgent.run,
                    Plan(batches=batches),
                    id=f"terminate-{uuid.uuid4()}",
                    task_queue=task_queue,
                )
            )
        await witness.wait_for("reported", 5)
        await bounded(handle.terminate("fault suite: terminated mid-run"))
        at_termination = counter(await ledger_state(client, ledger_id), f"tenant:{TENANT}")
        state = await settled(client, ledger_id, witness, timeout=ttl + SETTLE_TIMEOUT)
    assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
    reported = witness.reported
    assert reported == 500
    committed = counter(state, f"tenant:{TENANT}")["committed"]
    most = at_termination["committed"] + at_termination["reserved"]
    assert committed >= reported - 1e-6, (
        f"a terminated run's reservations were released uncommitted: the ledger committed "
        f"{committed:g} tokens, its activities reported {reported:g} "
        f"(at the termination: committed {at_termination['committed']:g}, "
        f"reserved {at_termination['reserved']:g})"
    )
    assert committed <= most + 1e-6, f"committed {committed:g} > the most it could hold {most:g}"
    assert state["committed"]["tokens"] == pytest.approx(committed)
    assert_balanced(state)


# -- 4. a tree with parallel children, one breaches ------------------------------------------


async def test_tree_whose_child_breaches_settles_the_sibling_closed_with_it(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """A parent (`child_allowance: 0.5`) starts two children at once; the second breaches.

    The parent fails, and the sibling, which has an activity in flight that reported, is
    closed with it (cancelled by the breach, or by the parent-close policy). Every lease of
    the tree must be settled with what was really used: committed == reported.
    """
    ttl = 5.0
    data = tenant_policy(100_000, reservation_ttl=f"{ttl:g}s")
    data["agents"] = {
        "FaultTree": {"quotas": {"max_tokens_per_task": 1000}, "child_allowance": 0.5}
    }
    policy_file, policy, ledger_id = write_policy(tmp_path, data)
    task_queue = new_task_queue(policy)
    client = governed_client(env, policy)
    witness = witness_of(tmp_path)
    # the steady child gets 0.5 x 1000 = 500 (spends 300), the breacher 0.5 x 500 = 250:
    # its third 100-token dispatch is refused
    plan = TreePlan(
        steady=Plan(batches=[jobs(witness, 1), jobs(witness, 1), jobs(witness, 1, hold_s=60)]),
        breacher=Plan(batches=[jobs(witness, 1) for _ in range(4)], wait_for_go=True),
    )
    parent_id = f"tree-{uuid.uuid4()}"
    async with worker_processes(env, task_queue, policy_file, workflows="faults"):
        with attribution(tenant=TENANT):
            handle = await bounded(
                client.start_workflow(FaultTree.run, plan, id=parent_id, task_queue=task_queue)
            )
        await witness.wait_for("reported", 3, workflow_id=f"{parent_id}.steady")
        breacher = client.get_workflow_handle(f"{parent_id}.breacher")

        async def go() -> bool:
            try:
                await breacher.signal(FaultAgent.proceed)
            except RPCError:  # not started yet
                return False
            return True

        await eventually(go)
        with pytest.raises(WorkflowFailureError) as ended:
            await bounded(handle.result(), OUTCOME_TIMEOUT)
        details = BreachDetails.from_error(ended.value)
        assert details is not None and details.resource == "tokens", ended.value.cause
        state = await settled(client, ledger_id, witness, timeout=ttl + SETTLE_TIMEOUT)
        sibling = await client.get_workflow_handle(f"{parent_id}.steady").describe()
    assert sibling.status is not None and sibling.status != WorkflowExecutionStatus.RUNNING
    assert witness.reported == 500, witness.events("reported")
    note = f"; the sibling ended {sibling.status.name}"
    assert_exact(state, witness.reported, [f"tenant:{TENANT}"], note)


# -- 5. a worker SIGKILLed mid-activity ------------------------------------------------------


@pytest.mark.parametrize("killed", ["before_reporting", "after_reporting"])
async def test_worker_sigkilled_mid_activity_another_takes_over(
    env: WorkflowEnvironment, tmp_path: Path, killed: str
) -> None:
    """4 runs; the worker is SIGKILLed while each run's first activity is in flight.

    - `before_reporting`: the killed attempts reported nothing, so they count nothing;
      their retries on the second worker report once: committed == reported, exactly.
    - `after_reporting`: the killed attempts had reported (and heartbeated) when the
      process died. Their usage reached no one unless the worker heartbeated it, so the
      documented bound holds: the last attempt of every activity is counted, no attempt
      twice: final attempts <= committed <= everything reported.
    """
    policy_file, policy, ledger_id = write_policy(tmp_path, tenant_policy(100_000))
    task_queue = new_task_queue(policy)
    client = governed_client(env, policy)
    witness = witness_of(tmp_path)
    first = (
        jobs(witness, 1, wait_s=60) if killed == "before_reporting" else jobs(witness, 1, hold_s=60)
    )
    plan = Plan(batches=[first, jobs(witness, 1)])
    workers = WorkerProcesses.on(env, task_queue, policy_file, workflows="faults")
    try:
        # the killed worker's sticky queue is given up after 1 s, so its runs move on
        doomed = await workers.start(sticky_timeout_seconds=1)
        with attribution(tenant=TENANT):
            handles = await bounded(
                asyncio.gather(
                    *(
                        client.start_workflow(
                            FaultAgent.run,
                            plan,
                            id=f"killed-{i}-{uuid.uuid4()}",
                            task_queue=task_queue,
                        )
                        for i in range(4)
                    )
                )
            )
        await witness.wait_for("started" if killed == "before_reporting" else "reported", 4)
        await asyncio.sleep(0.5)  # let a heartbeat or two reach the server
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=5)
        await workers.start(sticky_timeout_seconds=1)
        results = await bounded(asyncio.gather(*(h.result() for h in handles)), OUTCOME_TIMEOUT)
        assert results == [2] * 4
        state = await settled(client, ledger_id, witness)
    finally:
        workers.close()
    retried = [e for e in witness.events("started") if e["attempt"] > 1]
    assert len(retried) == 4, "every killed attempt ran again on the other worker"
    assert {e["pid"] for e in retried} == {workers.procs[1].pid}
    if killed == "before_reporting":
        assert witness.reported == 800
        assert_exact(state, witness.reported, [f"tenant:{TENANT}"])
        return
    committed = counter(state, f"tenant:{TENANT}")["committed"]
    lost = witness.reported - committed
    assert witness.reported == 1200 and witness.reported_by_final_attempts == 800
    assert witness.reported_by_final_attempts <= committed <= witness.reported, committed
    assert state["committed"]["tokens"] == pytest.approx(committed)
    assert_balanced(state)
    print(
        f"\nSIGKILL after reporting: committed {committed:g} of {witness.reported:g} reported; "
        f"{lost:g} tokens of the killed attempts were not known to the governor"
    )


# -- 6. the dev server stopped and restarted mid-run -----------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevServer:
    """A dev server of this test's own, on a persistent SQLite file it can restart on."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port, self.ui_port, self.http_port = free_port(), free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _command(self) -> list[str]:
        return [
            str(TEMPORAL), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
            "--port", str(self.port), "--ui-port", str(self.ui_port),
            "--http-port", str(self.http_port),
            "--db-filename", str(self.folder / "db.sqlite"), "--log-level", "error",
            "--search-attribute", "GovernorTenant=Keyword",
            "--search-attribute", "GovernorState=Keyword",
        ]  # fmt: skip

    async def start(self) -> None:
        log = (self.folder / f"server-{self.starts}.log").open("wb")
        self.starts += 1
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()

        async def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                logs = (self.folder / f"server-{self.starts - 1}.log").read_text()[-2000:]
                raise AssertionError(f"dev server exited with {self.proc.returncode}:\n{logs}")
            try:
                client = await Client.connect(self.address)
                await client.count_workflows()
            except (RPCError, RuntimeError):
                return False
            return True

        await eventually(answers, READY_TIMEOUT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


async def test_server_stopped_and_restarted_mid_run_loses_nothing_it_could_know(
    own_server: DevServer, tmp_path: Path
) -> None:
    """The server goes away for ~5 s while 4 runs of 12 activities each are running.

    What the governor can and cannot know here: the ledger, the runs and their
    reservations are server state on the persistent database, so they survive; every
    ledger call is an idempotent update that the worker retries until the server is back;
    an activity's usage travels on its result. What it cannot know: an attempt that
    reported and finished while the server was down, whose completion was never accepted,
    is run again after its heartbeat timeout; the first attempt's usage is in no history
    unless the worker heartbeated it before the server went away. So the bound is:
    the final attempt of every activity is counted, no attempt twice
    (final attempts <= committed <= everything reported), exact when nothing ran again.
    """
    await own_server.start()
    policy_file, policy, ledger_id = write_policy(tmp_path, tenant_policy(1_000_000))
    task_queue = new_task_queue(policy, record=False)  # not on the session's server
    witness = witness_of(tmp_path)
    plan = Plan(batches=[jobs(witness, 1, hold_s=0.3) for _ in range(12)])
    client = await Client.connect(own_server.address, plugins=[GovernorPlugin(policy)])
    workers = WorkerProcesses(own_server.address, "default", task_queue, policy_file, "faults")
    try:
        await workers.start()
        with attribution(tenant=TENANT):
            handles = await bounded(
                asyncio.gather(
                    *(
                        client.start_workflow(
                            FaultAgent.run,
                            plan,
                            id=f"restart-{i}-{uuid.uuid4()}",
                            task_queue=task_queue,
                        )
                        for i in range(4)
                    )
                )
            )
        await witness.wait_for("reported", 12)
        own_server.stop()
        await asyncio.sleep(5)
        await own_server.start()
        results = await bounded(asyncio.gather(*(h.result() for h in handles)), OUTCOME_TIMEOUT)
        assert results == [12] * 4
        state = await settled(client, ledger_id, witness)
        histories = [
            await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
            async for wf in client.list_workflows(f'TaskQueue="{task_queue}"')
        ]
    finally:
        workers.close()
    # the histories of this server replay like every other of the session
    replayer = Replayer(workflows=FAULT_WORKFLOWS, plugins=[GovernorPlugin(policy)])
    for history in histories:
        await replayer.replay_workflow(history)
    assert len(histories) >= 5, "4 runs and the ledger"

    committed = counter(state, f"tenant:{TENANT}")["committed"]
    rerun = witness.rerun()
    assert witness.reported_by_final_attempts == 4 * 12 * 100
    assert state["committed"]["tokens"] == pytest.approx(committed)
    assert_balanced(state)
    if not rerun:
        assert_exact(state, witness.reported, [f"tenant:{TENANT}"])
    else:
        assert witness.reported_by_final_attempts <= committed <= witness.reported, committed
    print(
        f"\nserver restart: {len(rerun)} attempt(s) ran again; committed {committed:g} of "
        f"{witness.reported:g} reported ({witness.reported - committed:g} not known)"
    )
