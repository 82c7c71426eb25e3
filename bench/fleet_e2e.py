"""End to end: governed runs with shared tenant limits on 2 worker processes vs ungoverned.

``--runs`` workflows over ``--tenants`` tenants (two owners each) run at once on
``--workers`` worker processes (OS processes this script spawns, 2 by default); each run
dispatches ``--dispatches`` trivial activities that report a few tokens: a quarter of them
one after the other, the rest in ``asyncio.gather`` groups of ``--width``. Governed: the
workers and the starting client carry ``GovernorPlugin`` with a policy whose tenant
``max_tokens`` and per-owner ``max_tokens`` never refuse (optionally also a global
``max_tokens_per_minute``, ``--global-per-minute``), with ``shared.shards`` N for each N of
``--shards`` (each shard count its own ledgers, task queue and workers), leases on unless
``--no-leases``. With ``--hierarchical-leases``, each N of 2 or more also has a pooled
governed mode (``governed, N shards pooled``: ``shared.hierarchical_leases: true``, its
own ledgers, task queue and workers): the shards lease the global limit's budget from the
root ledger in pools. Pools only cover fleet-wide limits, so ``--hierarchical-leases``
without ``--global-per-minute`` sets a global ``max_tokens_per_minute`` of 100,000,000
(never refuses here) for every governed mode, pooled or not. Ungoverned: the same
workflows and activities, no plugin. Every mode has its own worker processes, started up
front (the idle ones only long-poll).

The modes take turns going first in each of ``--reps`` repetitions, on one dev server the
script starts. Printed per rep and as medians: wall seconds from the first start to the
last result, dispatches (activities completed) per second, governed wall / ungoverned
wall of the same rep, the seconds the starts took (a governed client reads the ledger's
fleet kills before each start, and counts the reads that failed: ``lookups``), and the
CPU the starting client, the mode's worker processes and the dev server used per
dispatch, with the governed/ungoverned ratio of their sum (``cpu ratio``: on a shared,
loaded machine a steadier figure than the wall-time ratio). Per governed mode also the
updates its root ledger (``shared.ledger_id``) accepted for the rep (``root upd``, and per
dispatch), counted after the rep, outside the timed section, from the root's history
(every run of its workflow id: ``UpdateAccepted`` events), in the summary split by sender:
``pools`` (a shard's pool asks, renewals, settlements), ``registrations`` (a run's empty
``reserve`` at start) and ``runs`` (the rest: runs' own reservations, settlements,
releases), and each pooled mode's root updates per dispatch against its shard count's
mode without pools. A pooled mode's rep includes its pool settlements: they come once the
pools have been idle 10 s, and the check below waits for them.

Before any timing, and again after every governed rep, the script checks that the
governed runs were governed: each tenant's and owner's lifetime token counter on its
shard ledger (found through ``ShardMap``) holds exactly the tokens the activities
reported, no ledger has an open reservation, and every ledger's ``committed + released
== granted``; where the root commits every dispatch (one shard, or a global limit) its
lifetime ``committed`` tokens equal every token the activities reported. A pooled mode's
check first waits (up to 30 s) until every shard's pools are settled on the root and the
root has nothing open. The ungoverned warm-up runs must have no governor memo.

    .venv/bin/python bench/fleet_e2e.py [--runs 40] [--tenants 8] [--dispatches 20]
        [--width 8] [--workers 2] [--reps 3] [--shards 1 [4 ...]] [--global-per-minute N]
        [--hierarchical-leases] [--no-leases] [--batch-updates] [--quick]

A worker process (spawned by the script itself):

    .venv/bin/python bench/fleet_e2e.py --worker --address HOST:PORT --task-queue Q
        --mode governed|ungoverned [--policy-file P]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import yaml
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():  # the ungoverned worker's sandbox too
    from temporal_governor import GovernorPlugin, Policy, attribution
    from temporal_governor.activity import report_usage
    from temporal_governor.core.shards import ShardMap

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
NEVER = 10**12
"""A limit that never refuses."""
TARGET_RATIO = 1.3
"""Goal of issue #13 item 8 on the 2-core machine: governed wall / ungoverned wall."""
UNGOVERNED = "ungoverned"
CHECKED = (
    "every tenant's and owner's ledger counter == reported tokens, nothing open,"
    " committed + released == granted (pooled: once the pools are settled), the root's"
    " committed tokens == reported tokens (one shard, or a global limit)"
)
"""What :func:`check_ledgers` checks, as printed."""
DEFAULT_POOLED_GLOBAL = 100_000_000
"""``--global-per-minute`` when ``--hierarchical-leases`` is given without it: pools only
cover fleet-wide limits, so the pooled modes need one (this one never refuses here)."""
SETTLE_TIMEOUT_S = 30.0
"""How long a pooled mode's check waits for the shards' idle pools to be settled on the
root (``POOL_IDLE_S`` is 10 s)."""
SENDERS = ("pools", "registrations", "runs")
"""Who sent an update the root accepted (:func:`sender_of`)."""


class _LookupFailures(logging.Filter):
    """Counts the governed client's failed fleet-kill reads at start, and keeps them quiet.

    Each is a warning (``governor: could not read fleet kills ...``): the run starts
    without the ledger's stored kills. Counted per rep (the ``lookups`` columns) instead
    of printed one by one.
    """

    count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("governor: could not read fleet kills"):
            self.count += 1
            return False
        return True


LOOKUP_FAILURES = _LookupFailures()


def tokens_of(run: int, i: int) -> tuple[int, int]:
    """Input and output tokens activity ``i`` of run ``run`` reports."""
    return 10 + (7 * run + i) % 13, 20 + (run + 3 * i) % 11


@activity.defn
async def work(run: int, i: int) -> int:
    """A trivial tool call that reports a little usage."""
    input_tokens, output_tokens = tokens_of(run, i)
    report_usage(input_tokens=input_tokens, output_tokens=output_tokens, model="m")
    return i


def plan(dispatches: int, width: int) -> list[int]:
    """Group sizes of a run: a quarter of the dispatches one by one, then groups of ``width``."""
    sequential = min(dispatches, max(1, dispatches // 4))
    groups = [1] * sequential
    left = dispatches - sequential
    while left > 0:
        groups.append(min(width, left))
        left -= groups[-1]
    return groups


@workflow.defn
class FleetRun:
    """Sequential activities, then parallel groups of them (see :func:`plan`)."""

    @workflow.run
    async def run(self, run: int, dispatches: int, width: int) -> int:
        done = 0
        for size in plan(dispatches, width):
            results = await asyncio.gather(
                *(
                    workflow.execute_activity(
                        work, args=[run, done + k], start_to_close_timeout=timedelta(seconds=60)
                    )
                    for k in range(size)
                )
            )
            done += len(results)
        return done


# -- the worker process -------------------------------------------------------------------


def quiet_runtime() -> Runtime:
    """The SDK's runtime without its warnings (workflow-task races under load are expected)."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )


async def worker_main(args: argparse.Namespace) -> None:
    """Poll ``--task-queue`` until SIGTERM or SIGINT; print ``ready`` once polling."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    plugins = []
    if args.mode == "governed":
        if args.policy_file is None:
            raise SystemExit("--mode governed needs --policy-file")
        plugins.append(GovernorPlugin(Policy.from_yaml(args.policy_file)))
    client = await Client.connect(args.address, plugins=plugins, runtime=quiet_runtime())
    async with Worker(
        client,
        task_queue=args.task_queue,
        workflows=[FleetRun],
        activities=[work],
        graceful_shutdown_timeout=timedelta(seconds=1),
    ):
        print("ready", flush=True)
        await stop.wait()


class Processes:
    """Worker processes this script spawned; :meth:`close` stops every one of them."""

    def __init__(self, address: str, logs: Path) -> None:
        self.address, self.logs = address, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[IO[bytes]] = []

    async def start(self, mode: str, task_queue: str, policy_file: Path | None) -> int:
        """Spawn one worker and return its pid once it polls; fail with its log if not."""
        log_path = self.logs / f"worker-{len(self.procs)}-{task_queue}.log"
        log = log_path.open("wb")
        self.files.append(log)
        script = Path(__file__).resolve()  # not at import: the workflow sandbox re-imports
        command = [sys.executable, str(script), "--worker", "--address", self.address]
        command += ["--task-queue", task_queue, "--mode", "governed" if policy_file else mode]
        if policy_file is not None:
            command += ["--policy-file", str(policy_file)]
        proc = subprocess.Popen(command, cwd=script.parents[1], stdout=subprocess.PIPE, stderr=log)
        self.procs.append(proc)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), READY_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            log.flush()
            tail = log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"worker for {task_queue} did not start:\n{tail}")
        return proc.pid

    def close(self) -> None:
        """SIGTERM every worker, SIGKILL those still alive after a grace period."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        for log in self.files:
            log.close()


# -- measuring ----------------------------------------------------------------------------


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process used so far, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children() -> list[int]:
    """Pids of this process's children (the dev server and the workers)."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


@dataclass
class Mode:
    """One way of running the workload: ungoverned, or governed on N shards (pooled or not)."""

    name: str
    task_queue: str
    client: Client
    shards: ShardMap | None = None
    """The governed mode's ledgers (``None``: ungoverned)."""
    policy_file: Path | None = None
    """The governed mode's policy, for its workers."""
    pooled: bool = False
    """``shared.hierarchical_leases`` on: the shards lease pools from the root."""
    global_limit: bool = False
    """Its policy has a ``global`` limit (kept on the root)."""
    pids: list[int] = field(default_factory=list)
    """Its worker processes."""
    expected: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    """Tokens reported so far per tenant and owner scope (``tenant:t``, ``owner:t/o``)."""
    reps: list[Rep] = field(default_factory=list)
    root_total: Counter[str] = field(default_factory=Counter)
    """Updates the root ledger accepted so far, by sender (:func:`sender_of`)."""
    root_runs: dict[str, RootRun] = field(default_factory=dict)
    """The root's closed (continued-as-new) runs counted so far, by run id."""


@dataclass
class Rep:
    """One run of the workload in one mode."""

    wall: float
    """Seconds from the first start to the last result."""
    starts: float
    """Seconds from the first start to the last start returned (a governed client reads
    the ledger's fleet kills before each start, ``control.check_kills_at_start``)."""
    client_cpu: float
    """CPU seconds of this process (the starting client)."""
    worker_cpu: float
    """CPU seconds of the mode's worker processes."""
    server_cpu: float
    """CPU seconds of the dev server."""
    lookups_failed: int
    """Fleet-kill reads at start that failed (the ledger did not answer in time)."""
    root: Counter[str] | None = None
    """Governed: updates the root ledger accepted for this rep, by sender
    (:func:`sender_of`), counted after it (a pooled mode's pool settlements included)."""

    @property
    def cpu(self) -> float:
        """CPU seconds of every process: client, workers, dev server."""
        return self.client_cpu + self.worker_cpu + self.server_cpu

    @property
    def root_updates(self) -> int:
        """Updates the root ledger accepted for this rep (0 if ungoverned)."""
        return sum(self.root.values()) if self.root is not None else 0


@dataclass
class RootRun:
    """One run of the root ledger's workflow id: its accepted updates and its predecessor."""

    counts: Counter[str]
    """Accepted updates by sender (:func:`sender_of`)."""
    previous: str
    """The run it continued from (``""``: the first run)."""
    closed: bool
    """It continued as new: its history no longer changes."""


def tenant_owner(run: int, tenants: int) -> tuple[str, str]:
    """The tenant and owner run ``run`` is attributed to (two owners per tenant)."""
    return f"t{run % tenants}", f"o{(run // tenants) % 2}"


async def one_rep(mode: Mode, args: argparse.Namespace) -> Rep:
    """Run the workload once in ``mode``; returns its wall and CPU times."""
    tag = uuid.uuid4().hex[:8]
    servers = [p for p in children() if p not in mode.pids]
    before = [cpu_of(p) for p in mode.pids], [cpu_of(p) for p in servers]
    client_cpu, lookups_failed = time.process_time(), LOOKUP_FAILURES.count

    async def start(run: int) -> WorkflowHandle[Any, int]:
        tenant, owner = tenant_owner(run, args.tenants)
        with attribution(tenant=tenant, owner=owner):  # read by the governed client only
            return await mode.client.start_workflow(
                FleetRun.run,
                args=[run, args.dispatches, args.width],
                id=f"fleet-{mode.task_queue}-{tag}-{run}",
                task_queue=mode.task_queue,
            )

    started = time.perf_counter()
    handles = await asyncio.gather(*(start(run) for run in range(args.runs)))
    starts = time.perf_counter() - started
    results = await asyncio.gather(*(h.result() for h in handles))
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    lookups_failed = LOOKUP_FAILURES.count - lookups_failed
    worker_cpu = sum(cpu_of(p) for p in mode.pids) - sum(before[0])
    server_cpu = sum(cpu_of(p) for p in servers) - sum(before[1])
    if any(done != args.dispatches for done in results):
        raise SystemExit(f"{mode.name}: runs returned {results}, expected {args.dispatches} each")
    if mode.shards is not None:
        for run in range(args.runs):
            tenant, owner = tenant_owner(run, args.tenants)
            tokens = sum(sum(tokens_of(run, i)) for i in range(args.dispatches))
            mode.expected[f"tenant:{tenant}"] += tokens
            mode.expected[f"owner:{tenant}/{owner}"] += tokens
        await check_ledgers(mode)
    elif args.check_plain:
        for handle in handles:
            memo = await (await handle.describe()).memo()
            if "governor" in memo:
                raise SystemExit(f"ungoverned run {handle.id} has a governor memo")
    root = None
    if mode.shards is not None:  # outside the timed section, after the check
        total = await root_updates(mode)
        root = total - mode.root_total
        mode.root_total = total
    return Rep(wall, starts, client_cpu, worker_cpu, server_cpu, lookups_failed, root)


async def ledger_state(client: Client, ledger_id: str) -> dict[str, Any] | None:
    """A ledger's ``state`` view, or ``None`` if it never started (a shard nobody used)."""
    try:
        state: dict[str, Any] = await client.get_workflow_handle(ledger_id).query("state", "")
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return state


def sender_of(update: str, request: dict[str, Any]) -> str:
    """Who sent an update the root accepted, one of :data:`SENDERS`.

    ``pools``: a shard's pool ask, renewal or settlement (its ``run`` ends with
    ``/pools``, or its key is a pool's, ``<shard>/pool#<n>``); ``registrations``: a run's
    ``reserve`` with empty ``limits`` at start (the shard-count check); ``runs``: anything
    else (a run's own reservations, settlements, releases and renewals). A ``batch`` is
    ``pools`` if one of its entries is, ``registrations`` if all of them are, else ``runs``.
    """
    if update == "batch":
        senders = {
            sender_of(str(entry.get("update", "")), entry.get("request") or {})
            for entry in request.get("entries", [])
        }
        if "pools" in senders:
            return "pools"
        return "registrations" if senders == {"registrations"} else "runs"
    if str(request.get("run", "")).endswith("/pools") or "/pool#" in str(request.get("key", "")):
        return "pools"
    if update == "reserve" and not request.get("limits"):
        return "registrations"
    return "runs"


async def count_root_run(client: Client, root: str, run_id: str) -> RootRun:
    """The updates one run of the root ledger accepted, by sender, from its history."""
    counts: Counter[str] = Counter()
    previous, closed = "", False
    handle = client.get_workflow_handle(root, run_id=run_id)
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            attributes = event.workflow_execution_started_event_attributes
            previous = attributes.continued_execution_run_id
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            accepted = event.workflow_execution_update_accepted_event_attributes.accepted_request
            payloads = accepted.input.args.payloads
            request = json.loads(payloads[0].data) if payloads else {}
            counts[sender_of(accepted.input.name, request)] += 1
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            closed = True
    return RootRun(counts, previous, closed)


async def root_updates(mode: Mode) -> Counter[str]:
    """Every update the mode's root ledger accepted so far, by sender, over all its runs.

    Walks back from the current run through each run's predecessor (continue-as-new);
    a run that continued as new is read once and kept in ``mode.root_runs``.
    """
    assert mode.shards is not None
    root = mode.shards.root
    total: Counter[str] = Counter()
    try:
        run_id = (await mode.client.get_workflow_handle(root).describe()).run_id
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return total
        raise
    while run_id:
        run = mode.root_runs.get(run_id)
        if run is None:
            run = await count_root_run(mode.client, root, run_id)
            if run.closed:
                mode.root_runs[run_id] = run
        total += run.counts
        run_id = run.previous
    return total


async def wait_for_pools(mode: Mode) -> None:
    """A pooled mode: wait until every shard's pools are settled and nothing is open on the root.

    Pools are settled on the root once idle for ``POOL_IDLE_S`` (10 s); until then the
    root holds them as open reservations. Fails after :data:`SETTLE_TIMEOUT_S`.
    """
    assert mode.shards is not None
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        root = await ledger_state(mode.client, mode.shards.root)
        pools = {}
        for ledger in mode.shards.all_ledgers():
            state = await ledger_state(mode.client, ledger)
            if state is not None and state["pools"]:
                pools[ledger] = len(state["pools"])
        open_on_root = root["open_reservations"] if root is not None else 0
        if not open_on_root and not pools:
            return
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{mode.name}: after {SETTLE_TIMEOUT_S:.0f} s the root still has"
                f" {open_on_root} reservations open, shards' pools left: {pools}"
            )
        await asyncio.sleep(0.5)


def fleet_wide(mode: Mode) -> bool:
    """Whether the mode's root ledger commits every dispatch's tokens.

    True on one shard (the root is every tenant's ledger) and with a global limit (the
    root keeps the global counter; pooled, through the shards' pool settlements).
    """
    assert mode.shards is not None
    return mode.shards.shards == 1 or mode.global_limit


async def check_ledgers(mode: Mode) -> None:
    """Every tenant and owner committed exactly its reported tokens, and nothing is open.

    A pooled mode first waits for its pools to be settled (:func:`wait_for_pools`). Where
    the root commits every dispatch (:func:`fleet_wide`), its lifetime ``committed``
    tokens must equal every token the activities reported.
    """
    assert mode.shards is not None
    if mode.pooled:
        await wait_for_pools(mode)
    states = {i: await ledger_state(mode.client, i) for i in mode.shards.all_ledgers()}
    if fleet_wide(mode):
        reported = sum(v for k, v in mode.expected.items() if k.startswith("tenant:"))
        root = states[mode.shards.root]
        committed = root["committed"].get("tokens", 0.0) if root is not None else 0.0
        if abs(committed - reported) > 1e-6 * max(1.0, reported):
            raise SystemExit(
                f"{mode.name}: the root {mode.shards.root} committed {committed} tokens"
                f" in all, the activities reported {reported}"
            )
    for scope, tokens in mode.expected.items():
        ledger = mode.shards.ledger_of_scope(scope)
        state = states[ledger]
        if state is None:
            raise SystemExit(f"{mode.name}: ledger {ledger} of {scope} never started")
        committed = sum(
            c["committed"]
            for c in state["counters"]
            if c["scope"] == scope and c["resource"] == "tokens" and c["window_s"] is None
        )
        if abs(committed - tokens) > 1e-6:
            raise SystemExit(
                f"{mode.name}: {ledger} committed {committed} tokens for {scope},"
                f" the activities reported {tokens}"
            )
    for ledger, state in states.items():
        if state is None:
            continue
        if state["open_reservations"] or any(state["reserved"].values()):
            raise SystemExit(f"{mode.name}: {ledger} has reservations open: {state['reserved']}")
        for resource, granted in state["granted"].items():
            settled = state["committed"].get(resource, 0.0) + state["released"].get(resource, 0.0)
            if abs(settled - granted) > 1e-6 * max(1.0, granted):
                raise SystemExit(
                    f"{mode.name}: {ledger} {resource}: committed + released {settled}"
                    f" != granted {granted}"
                )


def policy_of(shards: ShardMap, args: argparse.Namespace, pooled: bool) -> dict[str, Any]:
    """The governed policy: tenant and per-owner token totals that never refuse.

    ``pooled``: with ``shared.hierarchical_leases`` (shards lease the global limit's
    budget from the root in pools).
    """
    policy: dict[str, Any] = {
        "shared": {
            "ledger_id": shards.root,
            "shards": shards.shards,
            "leases": not args.no_leases,
            "batch_updates": args.batch_updates,
        },
        "tenants": {
            "default": {"quotas": {"max_tokens": NEVER}, "per_owner": {"max_tokens": NEVER}}
        },
        "tools": {"work": {"estimate": {"tokens": 100}}},
        "models": {"m": {"input_per_1k": 0.00015, "output_per_1k": 0.0006}},
    }
    if pooled:
        policy["shared"]["hierarchical_leases"] = True
    if args.global_per_minute:
        policy["global"] = {"max_tokens_per_minute": args.global_per_minute}
    return policy


# -- the benchmark ------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_summary(modes: list[Mode], runs: int, dispatches: int) -> None:
    """Medians of the timed reps, side by side."""
    base = modes[0]
    per = 1000 / dispatches
    width = name_width(modes)
    print(
        f"{'mode':<{width}} {'wall s':>7} {'dispatches/s':>13} {'ratio':>6} {'ratio reps':>18}"
        f" {'starts s':>9} {'cpu ms/dispatch:':>16} {'client':>7} {'workers':>8} {'server':>7}"
        f" {'all':>6} {'cpu ratio':>10}"
    )
    for mode in modes:
        walls = [r.wall for r in mode.reps]
        pairs = list(zip(mode.reps, base.reps, strict=True))
        ratios = [r.wall / b.wall for r, b in pairs]
        print(
            f"{mode.name:<{width}} {_median(walls):>7.3f} {dispatches / _median(walls):>13,.0f}"
            f" {_median(ratios):>6.3f} {'/'.join(f'{x:.2f}' for x in ratios):>18}"
            f" {_median([r.starts for r in mode.reps]):>9.3f} {'':>16}"
            f" {_median([r.client_cpu for r in mode.reps]) * per:>7.2f}"
            f" {_median([r.worker_cpu for r in mode.reps]) * per:>8.2f}"
            f" {_median([r.server_cpu for r in mode.reps]) * per:>7.2f}"
            f" {_median([r.cpu for r in mode.reps]) * per:>6.2f}"
            f" {_median([r.cpu / b.cpu for r, b in pairs]):>10.3f}"
        )
    for mode in modes[1:]:
        ratio = _median([r.wall / b.wall for r, b in zip(mode.reps, base.reps, strict=True)])
        verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
        failed = sum(r.lookups_failed for r in mode.reps)
        print(
            f"{mode.name}: median governed wall / ungoverned wall {ratio:.3f};"
            f" target <= {TARGET_RATIO}: {verdict}; fleet-kill reads at start that failed:"
            f" {failed} of {len(mode.reps) * runs} starts"
        )


def name_width(modes: list[Mode]) -> int:
    """Width of the mode-name column: the longest name, at least 22."""
    return max(22, *(len(mode.name) for mode in modes))


def print_root_updates(modes: list[Mode], dispatches: int) -> None:
    """Updates the root ledger accepted per timed rep, per governed mode, and by sender.

    Pooled modes are compared with the mode of the same shard count without pools.
    """
    governed = [mode for mode in modes if mode.shards is not None]
    width = name_width(modes)
    print(
        f"{'root ledger updates':<{width}} {'per rep':>8} {'/dispatch':>9} {'reps':>18}"
        + "".join(f" {sender:>13}" for sender in SENDERS)
    )
    for mode in governed:
        counts: list[float] = [r.root_updates for r in mode.reps]
        row = f"{mode.name:<{width}} {_median(counts):>8.1f} {_median(counts) / dispatches:>9.3f}"
        row += f" {'/'.join(f'{c:.0f}' for c in counts):>18}"
        for sender in SENDERS:
            by_sender: list[float] = [(r.root or Counter())[sender] for r in mode.reps]
            row += f" {_median(by_sender):>13.1f}"
        print(row)
    print(
        "  (medians per rep; pools: shards' pool asks, renewals and settlements;"
        " registrations: a run's empty reserve at start; runs: the rest)"
    )
    for mode in governed:
        if not mode.pooled:
            continue
        assert mode.shards is not None
        direct = next(
            m
            for m in governed
            if not m.pooled and m.shards is not None and m.shards.shards == mode.shards.shards
        )
        pooled, plain = (_median([r.root_updates for r in m.reps]) for m in (mode, direct))
        print(
            f"{mode.name}: root updates per dispatch {pooled / dispatches:.3f}, without pools"
            f" ({direct.name}) {plain / dispatches:.3f}: {pooled / plain if plain else 0:.2f}x"
        )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} CPUs)"


async def bench(args: argparse.Namespace) -> None:
    """Start the dev server and the workers, check, warm up, time, print."""
    print("command:", shlex.join([".venv/bin/python", *sys.argv]))
    print("load average before:", load_average())
    logging.getLogger("temporal_governor.interceptors._client").addFilter(LOOKUP_FAILURES)
    dispatches = args.runs * args.dispatches
    tag = uuid.uuid4().hex[:6]
    env = await WorkflowEnvironment.start_local(
        runtime=quiet_runtime(),
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        dev_server_log_level="error",
    )
    workdir = Path(tempfile.mkdtemp(prefix="fleet-e2e-"))
    address = env.client.service_client.config.target_host
    procs = Processes(address, workdir)
    try:
        plain = env.client
        modes = [Mode(UNGOVERNED, f"fleet-plain-{tag}", plain)]
        for n in args.shards:
            for pooled in (False, True) if args.hierarchical_leases and n > 1 else (False,):
                suffix = "p" if pooled else ""
                shards = ShardMap(f"fleet-ledger-{tag}-{n}{suffix}", n)
                policy_file = workdir / f"policy-{n}{suffix}.yaml"
                policy_file.write_text(yaml.safe_dump(policy_of(shards, args, pooled)))
                policy = Policy.from_yaml(str(policy_file))
                client = Client(
                    plain.service_client,
                    namespace=plain.namespace,
                    plugins=[GovernorPlugin(policy)],
                )
                name = f"governed, {n} shard{'s' if n > 1 else ''}{' pooled' if pooled else ''}"
                mode = Mode(name, f"fleet-governed-{n}{suffix}-{tag}", client, shards, policy_file)
                mode.pooled, mode.global_limit = pooled, bool(args.global_per_minute)
                modes.append(mode)
        for mode in modes:
            mode.pids = await asyncio.gather(
                *(
                    procs.start(mode.name, mode.task_queue, mode.policy_file)
                    for _ in range(args.workers)
                )
            )
        groups = plan(args.dispatches, args.width)
        print(
            f"{args.runs} runs at once over {args.tenants} tenants (2 owners each) x"
            f" {args.dispatches} activities ({groups.count(1)} one by one, then gather groups"
            f" of {groups[groups.count(1) :]}) = {dispatches} dispatches per rep;"
            f" {args.workers} worker processes per mode, one dev server"
        )
        limits = "tenant max_tokens + per-owner max_tokens (never refuse)"
        if args.global_per_minute:
            limits += f" + global max_tokens_per_minute {args.global_per_minute:,}"
        print(
            f"governed policy: {limits}; leases {'off' if args.no_leases else 'on'};"
            f" batch_updates {'on' if args.batch_updates else 'off'}; hierarchical_leases"
            f" {'on in the pooled modes only' if args.hierarchical_leases else 'off'}"
        )
        for mode in modes[1:]:
            assert mode.shards is not None
            spread: dict[str, int] = defaultdict(int)
            for t in range(args.tenants):
                spread[mode.shards.ledger_of_tenant(f"t{t}")] += 1
            counts = sorted(spread.values(), reverse=True)
            print(f"{mode.name}: tenants per ledger {counts}")
        args.check_plain = True
        for mode in modes:  # warm up, and check what each mode does
            await one_rep(mode, args)
        args.check_plain = False
        print(f"warm-up checked: {CHECKED}; ungoverned runs have no memo")
        width = name_width(modes)
        header = f"{'rep':>3} {'first':<{width}} {'ungoverned s':>13}"
        for mode in modes[1:]:
            header += f" {mode.name + ' s':>{width + 2}} {'ratio':>6} {'lookups':>7}"
            header += f" {'root upd':>8} {'/dispatch':>9}"
        print(header)
        for number in range(1, args.reps + 1):
            shift = (number - 1) % len(modes)
            order = modes[shift:] + modes[:shift]  # take turns going first
            for mode in order:
                mode.reps.append(await one_rep(mode, args))
            row = f"{number:>3} {order[0].name:<{width}} {modes[0].reps[-1].wall:>13.3f}"
            for mode in modes[1:]:
                last = mode.reps[-1]
                row += f" {last.wall:>{width + 2}.3f} {last.wall / modes[0].reps[-1].wall:>6.3f}"
                row += f" {last.lookups_failed:>7}"
                row += f" {last.root_updates:>8} {last.root_updates / dispatches:>9.3f}"
            print(row, flush=True)
        if args.reps:
            print_summary(modes, args.runs, dispatches)
            print_root_updates(modes, dispatches)
            print(f"checked after every governed rep: {CHECKED}")
        print("load average after:", load_average())
    finally:
        procs.close()
        await env.shutdown()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="runs at once per rep")
    parser.add_argument("--tenants", type=int, default=8, help="tenants the runs spread over")
    parser.add_argument("--dispatches", type=int, default=20, help="activities per run")
    parser.add_argument("--width", type=int, default=8, help="activities per parallel group")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per mode")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each mode")
    parser.add_argument(
        "--shards", type=int, nargs="+", default=[1], help="shard counts (a governed mode each)"
    )
    parser.add_argument(
        "--global-per-minute",
        type=int,
        default=0,
        help="also a global max_tokens_per_minute (fleet-wide: every dispatch on the root);"
        f" default {DEFAULT_POOLED_GLOBAL:,} with --hierarchical-leases, else none",
    )
    parser.add_argument(
        "--hierarchical-leases",
        action="store_true",
        help="for every --shards count above 1 also a pooled governed mode"
        " (shared.hierarchical_leases: true); needs a global limit, so --global-per-minute"
        f" defaults to {DEFAULT_POOLED_GLOBAL:,} (for every governed mode)",
    )
    parser.add_argument("--no-leases", action="store_true", help="shared.leases: false")
    parser.add_argument("--batch-updates", action="store_true", help="shared.batch_updates: true")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    worker = parser.add_argument_group("worker process (spawned by the script)")
    worker.add_argument("--worker", action="store_true")
    worker.add_argument("--address")
    worker.add_argument("--task-queue")
    worker.add_argument("--mode", choices=["governed", UNGOVERNED])
    worker.add_argument("--policy-file")
    args = parser.parse_args()
    if args.worker and (args.address is None or args.task_queue is None or args.mode is None):
        parser.error("--worker needs --address, --task-queue and --mode")
    if args.quick:
        args.runs, args.tenants, args.dispatches, args.width, args.reps = 4, 2, 6, 3, 1
    if args.hierarchical_leases and not args.worker:
        if all(n < 2 for n in args.shards):
            parser.error("--hierarchical-leases needs a --shards count of 2 or more")
        if not args.global_per_minute:
            args.global_per_minute = DEFAULT_POOLED_GLOBAL
    for name in ("runs", "tenants", "dispatches", "width", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


if __name__ == "__main__":
    arguments_ = arguments()
    asyncio.run(worker_main(arguments_) if arguments_.worker else bench(arguments_))
    # The SDK's native threads may still call into Python while the interpreter finalizes;
    # everything is printed and shut down by now, so leave without finalizing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
