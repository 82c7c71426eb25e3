"""Throughput of the shared ledger, per call and with leases, and a Redis counter baseline.

On one dev server started by the script, one ledger entity workflow (``GovernorLedger``)
serves 1, 10 and 50 concurrent callers (asyncio tasks sharing one client):

- per-call: every reservation is a ``reserve`` update followed by a ``settle`` update;
- leases: a caller takes a lease (a ``reserve`` with ``minimum``) of 100 units, makes its
  reservations against it in memory (granted - used >= wanted) and settles the lease with
  what it used when it runs out, then takes the next one.

Then a racing load, 50 callers on one tenant ceiling until it is exhausted, against the
naive check-then-increment counter users build by hand on Redis (GET, compare, INCRBY),
an atomic Redis variant (INCRBY, DECRBY back on overflow), and the ledger; it reports
throughput and overspend. The Redis part needs Debian's ``redis-server`` on PATH and
``redis`` (redis-py) in the venv (``pip install -e '.[bench]'``); without them it is skipped.

A Temporal server lets at most 10 updates be in flight on one workflow by default
(``history.maxInFlightUpdates``); beyond that it refuses them and the SDK retries with
back-off. ``--client-in-flight N`` queues updates in the script instead (at most N in
flight), ``--max-in-flight-updates N`` raises the dev server's limit.

``--batching`` measures instead what a worker process's coalescing gives: the callers make
per-call reservations (reserve + settle) through ``call_ledger``, the path the ledger
activity takes, once with every call its own update (``LedgerCall.batch`` false: the
governor before batching, and the default of ``shared.batch_updates``) and once with
``batch=True``, coalesced into ``batch`` updates, side by side, with at most
``--client-in-flight`` (default 5, ``shared.max_in_flight_updates``) updates in flight.

    .venv/bin/python bench/ledger_throughput.py [--seconds 5] [--callers 1 10 50]
        [--race-rounds 5] [--ceiling 10000] [--amount 100] [--skip-race]
        [--client-in-flight N] [--max-in-flight-updates N] [--batching] [--shards 1 2 4 8]

``--shards N ...`` spreads the callers over N fresh ledgers, caller ``i`` on ledger
``i % N`` (tenants hash onto shards the same way), and prints per call (one update each,
and batched) and with leases side by side for every count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from asyncio import FIRST_EXCEPTION
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from temporal_governor.core.book import ReserveRequest, SettleRequest
from temporal_governor.core.scopes import SharedLimit
from temporal_governor.ledger import (
    LEDGER_WORKFLOW,
    GovernorLedger,
    LedgerCall,
    LedgerState,
    call_ledger,
    coalescing_stats,
)
from temporal_governor.ledger._activity import LEDGER_SLOW
from temporal_governor.ledger._coalescer import BATCH_MAX_ENTRIES, BATCH_MAX_LIMITS

TASK_QUEUE = "ledger-bench"
RACE_TIMEOUT_S = 60.0
"""Longest one racing round may take."""
GRACE_S = 30.0
"""How long callers may take past a cell's deadline before the cell is called failed."""
_OVERLOADED = (RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.UNAVAILABLE)
UNIT = 100.0
"""Tokens of one reservation (one dispatch's estimate)."""
LEASE_UNITS = 100
"""Reservations a lease covers when granted in full."""
LARGE_CEILING = 1e15
"""Tenant ceiling of the throughput runs: nothing is refused."""


DEFAULT_IN_FLIGHT = 5
"""``shared.max_in_flight_updates``'s default: the coalescer's gate when none is given."""


def tenant_limit(ceiling: float) -> dict[str, Any]:
    limit = SharedLimit(
        name="tenants.default.quotas.max_tokens",
        scope="tenant:bench",
        resource="tokens",
        ceiling=ceiling,
    )
    return limit.model_dump(mode="json")


@dataclass
class Cell:
    """Shared tally of one measurement: reservations done, until the deadline or the cap."""

    deadline: float
    cap: int
    done: int = 0
    leases: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    resent: int = 0
    errors: list[str] = field(default_factory=list)
    failure: str | None = None

    def open(self) -> bool:
        return self.done < self.cap and time.perf_counter() < self.deadline


class Ledger:
    """One fresh ledger workflow, reached with plain client updates."""

    def __init__(self, client: Client, name: str, ceiling: float, gate: int | None) -> None:
        self.client = client
        self.id = f"bench-ledger-{name}-{uuid.uuid4().hex[:8]}"
        self.limits = [tenant_limit(ceiling)]
        self.gate = asyncio.Semaphore(gate) if gate else None
        """At most this many updates in flight from this process (``--client-in-flight``)."""
        self.latencies: list[float] = []
        """Seconds of every update, from the call to its result."""
        self.gave_up = 0
        """Updates the SDK gave up on (refused or aborted for ~10 s) that the script re-sent."""

    async def start(self) -> None:
        await self.client.start_workflow(
            LEDGER_WORKFLOW,
            LedgerState().model_dump(mode="json"),
            id=self.id,
            task_queue=TASK_QUEUE,
        )

    async def reserve(
        self, key: str, tokens: float, minimum: float | None = None
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "key": key,
            "run": f"bench/{key.split('/')[0]}",
            "amounts": {"tokens": tokens},
            "limits": self.limits,
            "ttl_s": 600.0,
        }
        if minimum is not None:
            request["minimum"] = {"tokens": minimum}
        result: dict[str, Any] = await self._update("reserve", request, f"reserve:{key}")
        return result

    async def settle(self, key: str, tokens: float) -> None:
        await self._update("settle", {"key": key, "actual": {"tokens": tokens}}, f"settle:{key}")

    async def _update(self, name: str, request: dict[str, Any], update_id: str) -> Any:
        """One update, timed; the gate, if any, bounds how many are in flight."""
        started = time.perf_counter()
        async with self.gate or contextlib.nullcontext():
            result = await self._send(name, request, update_id)
        self.latencies.append(time.perf_counter() - started)
        return result

    async def _send(self, name: str, request: dict[str, Any], update_id: str) -> Any:
        handle = self.client.get_workflow_handle(self.id)
        while True:
            try:
                return await handle.execute_update(name, request, id=update_id)
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as error:
                # The SDK itself retries an update the server refuses (too many in flight:
                # RESOURCE_EXHAUSTED) or aborts (its workflow task was lost: UNAVAILABLE) for
                # about 10 s; past that the error surfaces. The update id makes a re-send safe.
                cause = (
                    error.__cause__
                    if isinstance(error, WorkflowUpdateRPCTimeoutOrCancelledError)
                    else error
                )
                if not isinstance(cause, RPCError) or cause.status not in _OVERLOADED:
                    raise
                self.gave_up += 1
                await asyncio.sleep(random.uniform(0.05, 0.15))

    async def tokens(self) -> dict[str, Any]:
        state = await self.client.get_workflow_handle(self.id).query("state", "tenant:bench")
        counters = [c for c in state["counters"] if c["resource"] == "tokens"]
        counter = counters[0] if counters else {"committed": 0.0, "reserved": 0.0}
        return {**counter, "open_reservations": state["open_reservations"]}

    async def task_failure(self) -> str:
        """The ledger's last workflow task failure, if its history has one."""
        last = ""
        handle = self.client.get_workflow_handle(self.id)
        with contextlib.suppress(Exception):
            async for event in handle.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    attributes = event.workflow_task_failed_event_attributes
                    last = f"; ledger workflow task failed: {attributes.failure.message}"
        return last

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.get_workflow_handle(self.id).terminate("benchmark done")


async def per_call_caller(ledger: Ledger, caller: int, cell: Cell) -> None:
    n = 0
    while cell.open():
        n += 1
        key = f"c{caller}/{n}"
        result = await ledger.reserve(key, UNIT)
        if not result["granted"]:
            cell.errors.append(f"refused: {result['refusal']}")
            return
        await ledger.settle(key, UNIT)  # the dispatch ran and used its estimate
        cell.done += 1


async def spend_lease(granted: float, cell: Cell) -> tuple[float, int]:
    """Reservations of ``UNIT`` against a lease of ``granted``, in memory, while the cell is
    open: what they used and how many there were."""
    used, local = 0.0, 0
    while granted - used >= UNIT and cell.done + local < cell.cap and cell.open():
        used += UNIT
        local += 1
        await asyncio.sleep(0)  # let the other callers run, as dispatches would
    return used, local


async def lease_caller(ledger: Ledger, caller: int, cell: Cell) -> None:
    n = 0
    while cell.open():
        n += 1
        key = f"c{caller}/lease{n}"
        result = await ledger.reserve(key, UNIT * LEASE_UNITS, minimum=UNIT)
        if not result["granted"]:
            cell.errors.append(f"refused: {result['refusal']}")
            return
        cell.leases += 1
        used, local = await spend_lease(result["amounts"]["tokens"], cell)
        cell.done += local
        await ledger.settle(key, used)


async def measure(
    client: Client,
    mode: str,
    callers: int,
    seconds: float,
    cap: int,
    gate: int | None,
) -> Cell:
    """One cell: reservations made in it, and how long it took."""
    ledger = Ledger(client, f"{mode}-{callers}", LARGE_CEILING, gate)
    await ledger.start()
    worker_fn: Callable[[Ledger, int, Cell], Awaitable[None]] = (
        per_call_caller if mode == "per-call" else lease_caller
    )
    started = time.perf_counter()
    cell = Cell(deadline=started + seconds, cap=cap)
    failure = await run_callers(
        [worker_fn(ledger, i, cell) for i in range(callers)], seconds + GRACE_S
    )
    cell.seconds = time.perf_counter() - started
    cell.latencies = ledger.latencies
    cell.resent = ledger.gave_up
    if cell.errors:
        raise RuntimeError(f"{mode} x {callers}: {cell.errors[:3]}")
    if failure is not None:
        cell.failure = failure + await ledger.task_failure()
        await ledger.stop()
        return cell
    counter = await ledger.tokens()
    await ledger.stop()
    if abs(counter["committed"] - cell.done * UNIT) > 1e-6 or counter["reserved"] != 0:
        raise RuntimeError(f"{mode} x {callers}: ledger disagrees with the count: {counter}")
    return cell


async def run_callers(callers: list[Coroutine[Any, Any, None]], timeout: float) -> str | None:
    """Run the callers to the end; what went wrong, if anything (the rest are cancelled)."""
    tasks = [asyncio.ensure_future(c) for c in callers]
    done, pending = await asyncio.wait(tasks, timeout=timeout, return_when=FIRST_EXCEPTION)
    failed = [t for t in done if not t.cancelled() and t.exception() is not None]
    if failed or pending:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if failed:
        error = failed[0].exception()
        if isinstance(error, WorkflowUpdateRPCTimeoutOrCancelledError) and error.__cause__:
            error = error.__cause__
        return f"{type(error).__name__}: {error}"
    if pending:
        return f"{len(pending)} callers still waiting after {timeout:g} s"
    return None


# -- coalesced calls (--batching) ----------------------------------------------------------


@dataclass
class Coalesced:
    """One cell of ``--batching``: reservations done through ``call_ledger``."""

    cell: Cell
    calls: int = 0
    updates: int = 0


Route = Callable[[int], str]
"""Which ledger a caller's reservations go to (a shard routing function, by caller)."""


async def coalesced_call(client: Client, call: LedgerCall, max_entries: int, cell: Cell) -> Any:
    """One call through the coalescer, re-sent with its update id while the ledger is slow,
    as the ledger activity's retries would."""
    started = time.perf_counter()
    while True:
        try:
            result = await call_ledger(client, call, task_queue=TASK_QUEUE, max_entries=max_entries)
            cell.latencies.append(time.perf_counter() - started)
            return result
        except ApplicationError as error:
            if error.non_retryable and error.type != LEDGER_SLOW:
                raise
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError):
            pass
        cell.resent += 1
        await asyncio.sleep(random.uniform(0.05, 0.15))


async def coalesced_caller(
    client: Client,
    route: Route,
    caller: int,
    cell: Cell,
    max_entries: int,
    in_flight: int,
    lease: bool = False,
) -> None:
    """Reservations of one caller through the coalescer: per call (reserve + settle each),
    or with ``lease`` a lease of ``LEASE_UNITS`` reservations reserved against in memory and
    settled with what it used, as in :func:`lease_caller`."""
    ledger_id = route(caller)
    limits = [SharedLimit.model_validate(tenant_limit(LARGE_CEILING))]
    n = 0
    while cell.open():
        n += 1
        key = f"c{caller}/{n}"
        reserve = LedgerCall(
            ledger_id=ledger_id,
            update="reserve",
            request=ReserveRequest(
                key=key,
                run=f"bench/c{caller}",
                amounts={"tokens": UNIT * LEASE_UNITS if lease else UNIT},
                minimum={"tokens": UNIT} if lease else None,
                limits=limits,
            ),
            update_id=f"reserve:{key}",
            task_queue=TASK_QUEUE,
            max_in_flight=in_flight,
            batch=max_entries > 1,
        )
        result = await coalesced_call(client, reserve, max_entries, cell)
        if not result["granted"]:
            cell.errors.append(f"refused: {result['refusal']}")
            return
        used, local = UNIT, 0
        if lease:  # local reservations, counted once the lease is settled
            used, local = await spend_lease(result["amounts"]["tokens"], cell)
        settle = LedgerCall(
            ledger_id=ledger_id,
            update="settle",
            request=SettleRequest(key=key, actual={"tokens": used}),
            update_id=f"settle:{key}",
            task_queue=TASK_QUEUE,
            max_in_flight=in_flight,
            batch=max_entries > 1,
        )
        await coalesced_call(client, settle, max_entries, cell)
        if lease:
            cell.leases += 1
            cell.done += local
        else:
            cell.done += 1


async def measure_coalesced(
    client: Client,
    callers: int,
    seconds: float,
    cap: int,
    in_flight: int,
    max_entries: int,
    shards: int = 1,
    lease: bool = False,
) -> Coalesced:
    """One ``--batching`` cell on fresh ledgers: ``shards`` of them, callers spread over
    them by caller (caller ``i`` on ledger ``i % shards``)."""
    tag = f"coalesce-{callers}-{max_entries}-{uuid.uuid4().hex[:8]}"
    ledgers = [Ledger(client, f"{tag}-{i}", LARGE_CEILING, None) for i in range(shards)]
    for ledger in ledgers:
        await ledger.start()

    def route(caller: int) -> str:
        return ledgers[caller % len(ledgers)].id

    before = [coalescing_stats(ledger.id) for ledger in ledgers]
    started = time.perf_counter()
    cell = Cell(deadline=started + seconds, cap=cap)
    failure = await run_callers(
        [
            coalesced_caller(client, route, i, cell, max_entries, in_flight, lease)
            for i in range(callers)
        ],
        seconds + GRACE_S,
    )
    cell.seconds = time.perf_counter() - started
    result = Coalesced(cell)
    for ledger, earlier in zip(ledgers, before, strict=True):
        stats = coalescing_stats(ledger.id)
        result.calls += stats.calls - earlier.calls
        result.updates += stats.updates - earlier.updates
    name = (
        f"{'batched' if max_entries > 1 else 'unbatched'} {'leases' if lease else 'per-call'}"
        f" x {callers} on {shards} ledger(s)"
    )
    if cell.errors:
        raise RuntimeError(f"{name}: {cell.errors[:3]}")
    if failure is not None:
        cell.failure = failure + await ledgers[0].task_failure()
    else:
        committed = 0.0
        for ledger in ledgers:
            counter = await ledger.tokens()
            if counter["reserved"] != 0:
                raise RuntimeError(f"{name}: reservations left open: {counter}")
            committed += counter["committed"]
        if abs(committed - cell.done * UNIT) > 1e-6:
            raise RuntimeError(f"{name}: ledger committed {committed}, not {cell.done * UNIT}")
    for ledger in ledgers:
        await ledger.stop()
    return result


async def batching(client: Client, args: argparse.Namespace) -> None:
    """Per-call reservations/s through the coalescer, every call its own update vs batched."""
    in_flight = args.client_in_flight or DEFAULT_IN_FLIGHT
    await measure_coalesced(client, 10, 1.0, 200, in_flight, BATCH_MAX_ENTRIES)  # warm up
    print(
        f"per-call reservations (reserve + settle) through call_ledger, one ledger,"
        f" {args.seconds:g} s per cell, at most {in_flight} updates in flight;"
        f" batched: up to {BATCH_MAX_ENTRIES} calls and {BATCH_MAX_LIMITS} limits per update"
    )
    print(f"load average before: {load_average()}")
    print(
        f"{'callers':>7} {'unbatched res/s':>16} {'call ms p50':>12} {'p99':>7}"
        f" {'batched res/s':>14} {'call ms p50':>12} {'p99':>7} {'calls/update':>13}"
        f" {'re-sent':>8} {'speed-up':>9}"
    )
    failures = []
    for callers in args.callers:
        single = await measure_coalesced(
            client, callers, args.seconds, args.cap, in_flight, max_entries=1
        )
        batched = await measure_coalesced(
            client, callers, args.seconds, args.cap, in_flight, BATCH_MAX_ENTRIES
        )
        rates = []
        for name, result in (("unbatched", single), ("batched", batched)):
            rates.append(result.cell.done / result.cell.seconds)
            if result.cell.failure:
                failures.append(f"! {name} x {callers} FAILED: {result.cell.failure}")
        lat = [
            (percentile(r.cell.latencies, 0.5) * 1000, percentile(r.cell.latencies, 0.99) * 1000)
            for r in (single, batched)
        ]
        print(
            f"{callers:>7} {rates[0]:>16,.1f} {lat[0][0]:>12,.0f} {lat[0][1]:>7,.0f}"
            f" {rates[1]:>14,.1f} {lat[1][0]:>12,.0f} {lat[1][1]:>7,.0f}"
            f" {batched.calls / max(batched.updates, 1):>13.1f}"
            f" {single.cell.resent + batched.cell.resent:>8}"
            f" {rates[1] / max(rates[0], 1e-9):>8.1f}x",
            flush=True,
        )
    for line in failures:
        print(line)
    print(f"load average after: {load_average()}")
    print(
        "checked in every cell that finished: ledger committed == reservations x"
        f" {UNIT:g} tokens, nothing left reserved"
    )


async def sharded(client: Client, args: argparse.Namespace) -> None:
    """Reservations/s over 1, 2, 4, 8 ... ledgers (``--shards``), through ``call_ledger``
    (the ledger activity's path): per call and with leases, each unbatched and batched, side
    by side for each count."""
    in_flight = args.client_in_flight or DEFAULT_IN_FLIGHT
    await measure_coalesced(client, 10, 1.0, 200, in_flight, BATCH_MAX_ENTRIES, shards=2)
    print(
        f"callers spread over N fresh ledgers (caller i on ledger i % N, as tenants hash onto"
        f" shards), {args.seconds:g} s per cell, at most {in_flight} updates in flight per"
        f" ledger from this process, through call_ledger (the ledger activity's path),"
        f" every call its own update or batched (up to {BATCH_MAX_ENTRIES} calls per"
        f" update); per call = reserve + settle, leases = {LEASE_UNITS} reservations per"
        " lease (reserve + settle)"
    )
    print(f"load average before: {load_average()}")
    print(
        f"{'':>14} {'per call (reserve + settle each)':-^37}"
        f" {'leases of ' + str(LEASE_UNITS) + ' reservations':-^39}"
    )
    print(
        f"{'shards':>6} {'callers':>7} {'unbatched':>9} {'batched':>9} {'calls/upd':>9}"
        f" {'p50 ms':>7} {'unbatched':>9} {'batched':>9} {'calls/upd':>9} {'leases/s':>9}"
        f" {'re-sent':>8}"
    )
    print(
        f"{'':>6} {'':>7} {'res/s':>9} {'res/s':>9} {'batched':>9} {'batched':>7}"
        f" {'res/s':>9} {'res/s':>9} {'batched':>9} {'batched':>9} {'all 4':>8}"
    )
    failures = []
    for shards in args.shards:
        for callers in args.callers:
            results = [
                await measure_coalesced(
                    client,
                    callers,
                    args.seconds,
                    args.cap,
                    in_flight,
                    entries,
                    shards=shards,
                    lease=lease,
                )
                for lease in (False, True)
                for entries in (1, BATCH_MAX_ENTRIES)
            ]
            names = ("per-call", "per-call batched", "leased", "leased batched")
            marks = []
            for name, result in zip(names, results, strict=True):
                marks.append("!" if result.cell.failure else " ")
                if result.cell.failure:
                    failures.append(
                        f"! {name}, {shards} shards x {callers} FAILED: {result.cell.failure}"
                    )
            rates = [r.cell.done / r.cell.seconds for r in results]
            per_update = [r.calls / max(r.updates, 1) for r in results]
            batched, leased = results[1].cell, results[3].cell
            print(
                f"{shards:>6} {callers:>7} {rates[0]:>8,.1f}{marks[0]} {rates[1]:>8,.0f}{marks[1]}"
                f" {per_update[1]:>9.1f} {percentile(batched.latencies, 0.5) * 1000:>7,.0f}"
                f" {rates[2]:>8,.0f}{marks[2]} {rates[3]:>8,.0f}{marks[3]}"
                f" {per_update[3]:>9.1f} {leased.leases / leased.seconds:>9,.1f}"
                f" {sum(r.cell.resent for r in results):>8}",
                flush=True,
            )
    for line in failures:
        print(line)
    print(f"load average after: {load_average()}")
    print(
        "checked in every cell that finished: the ledgers' committed tokens together =="
        f" reservations x {UNIT:g}, nothing left reserved"
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} CPUs)"


# -- the racing load ------------------------------------------------------------------------


@dataclass
class Race:
    """Outcome of one racing round: grants, seconds, final counter."""

    granted: int
    seconds: float
    final: float
    resent: int = 0
    failure: str | None = None


async def race(
    call: Callable[[int, int], Awaitable[bool]], callers: int
) -> tuple[int, float, str | None]:
    """Every caller calls until it is refused once; returns grants, seconds and a failure."""
    granted = 0

    async def caller(i: int) -> None:
        nonlocal granted
        n = 0
        while True:
            n += 1
            if not await call(i, n):
                return
            granted += 1

    started = time.perf_counter()
    failure = await run_callers([caller(i) for i in range(callers)], RACE_TIMEOUT_S)
    return granted, time.perf_counter() - started, failure


async def redis_round(redis: Any, atomic: bool, callers: int, ceiling: int, amount: int) -> Race:
    key = f"tenant:bench:tokens:{uuid.uuid4().hex[:8]}"
    await redis.set(key, 0)

    async def naive(_caller: int, _n: int) -> bool:
        spent = int(await redis.get(key))
        if spent + amount > ceiling:
            return False
        await redis.incrby(key, amount)
        return True

    async def incr_then_check(_caller: int, _n: int) -> bool:
        spent = await redis.incrby(key, amount)
        if spent > ceiling:
            await redis.decrby(key, amount)
            return False
        return True

    granted, seconds, failure = await race(incr_then_check if atomic else naive, callers)
    if failure is not None:
        raise RuntimeError(f"redis round failed: {failure}")
    final = float(await redis.get(key))
    await redis.delete(key)
    return Race(granted, seconds, final)


async def ledger_round(
    client: Client, callers: int, ceiling: int, amount: int, gate: int | None
) -> Race:
    ledger = Ledger(client, "race", ceiling, gate)
    await ledger.start()

    async def reserve_settle(caller: int, n: int) -> bool:
        key = f"c{caller}/{n}"
        result = await ledger.reserve(key, amount)
        if not result["granted"]:
            return False
        await ledger.settle(key, amount)
        return True

    granted, seconds, failure = await race(reserve_settle, callers)
    if failure is not None:
        failure += await ledger.task_failure()
        await ledger.stop()
        return Race(granted, seconds, math.nan, ledger.gave_up, failure)
    counter = await ledger.tokens()
    await ledger.stop()
    if counter["reserved"] != 0 or counter["open_reservations"] != 0:
        raise RuntimeError(f"ledger race left reservations open: {counter}")
    return Race(granted, seconds, counter["committed"], ledger.gave_up)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[Any]:
    """A throwaway redis-server on a free loopback port, and a redis.asyncio client to it."""
    import redis.asyncio as aioredis

    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = aioredis.Redis(host="127.0.0.1", port=port, max_connections=256)
    try:
        for _ in range(100):
            try:
                await client.ping()
                break
            except Exception:
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"redis-server did not answer on port {port}")
        version = (await client.info("server"))["redis_version"]
        yield client, version
    finally:
        await client.aclose()
        proc.terminate()
        proc.wait(timeout=10)


def race_row(name: str, rounds: list[Race], ceiling: int) -> str:
    if not any(r.failure is None for r in rounds):
        return f"{name:<34} every round failed"
    rounds = [r for r in rounds if r.failure is None]
    granted = sum(r.granted for r in rounds)
    seconds = sum(r.seconds for r in rounds)
    overspend = [max(0.0, r.final - ceiling) for r in rounds]
    finals = "/".join(f"{r.final:,.0f}" for r in rounds)
    return (
        f"{name:<34} {granted / seconds:>9,.0f} {granted:>8} {max(overspend):>10,.0f}"
        f" {statistics.median(overspend):>10,.0f}   {finals}"
    )


async def racing(client: Client, args: argparse.Namespace) -> None:
    callers, ceiling, amount, rounds = 50, args.ceiling, args.amount, args.race_rounds
    print()
    print(
        f"racing load: {callers} callers on one tenant ceiling of {ceiling:,} tokens,"
        f" {amount} per call, until every caller is refused; {rounds} rounds each"
    )
    missing = None
    try:
        import redis.asyncio
    except ImportError:
        missing = "redis-py is missing: install it with: .venv/bin/pip install -e '.[bench]'"
    if shutil.which("redis-server") is None:
        missing = "redis-server is not on PATH: install it with: apt-get install -y redis-server"
    naive: list[Race] = []
    atomic: list[Race] = []
    ledger: list[Race] = []
    async with contextlib.AsyncExitStack() as stack:
        redis, version = None, ""
        if missing is None:
            redis, version = await stack.enter_async_context(redis_server())
        for _ in range(rounds):  # alternate the variants
            if redis is not None:
                naive.append(await redis_round(redis, False, callers, ceiling, amount))
                atomic.append(await redis_round(redis, True, callers, ceiling, amount))
            ledger.append(
                await ledger_round(client, callers, ceiling, amount, args.client_in_flight)
            )
    if missing is None:
        print(f"redis-server {version} on loopback, redis-py, one connection per in-flight call")
    else:
        print(missing)
        print("(skipping the Redis baseline)")
    print(
        f"{'variant':<34} {'grants/s':>9} {'granted':>8} {'overspend':>10} {'median':>10}"
        f"   final counter per round"
    )
    print(f"{'':<34} {'':>9} {'':>8} {'max':>10} {'overspend':>10}")
    if naive:
        print(race_row("redis naive GET, compare, INCRBY", naive, ceiling))
        print(race_row("redis atomic INCRBY, DECRBY back", atomic, ceiling))
    print(race_row("ledger reserve + settle updates", ledger, ceiling))
    finished = [r.final for r in ledger if r.failure is None]
    if finished:
        worst = max(finished)
        verdict = "holds" if worst <= ceiling else "BROKEN"
        print(f"ledger: highest final committed {worst:,.0f} <= ceiling {ceiling:,}: {verdict}")
    for number, r in enumerate(ledger, 1):
        if r.failure is not None:
            print(f"ledger round {number} FAILED after {r.granted} grants: {r.failure}")
    resent = sum(r.resent for r in ledger)
    if resent:
        print(f"ledger updates the SDK gave up on (~10 s of refusals or aborts), re-sent: {resent}")
    if naive:
        print(
            "note: the atomic Redis counter does not overspend one counter, but it cannot"
            " reserve in several scopes all-or-nothing (tenant + owner + tool), roll windows,"
            " or expire the reservations of a crashed caller without a Lua script; a rejected"
            " call also briefly inflates the counter, so concurrent callers may be refused"
            " spuriously."
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each cell")
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--cap", type=int, default=1_000_000, help="reservations per cell")
    parser.add_argument("--race-rounds", type=int, default=5)
    parser.add_argument("--ceiling", type=int, default=10_000)
    parser.add_argument("--amount", type=int, default=100)
    parser.add_argument("--skip-race", action="store_true")
    parser.add_argument(
        "--batching",
        action="store_true",
        help="per-call reservations through the coalescer, unbatched vs batched (only)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        nargs="+",
        default=None,
        help="spread the callers over this many ledgers (e.g. 1 2 4 8): per call, batched and"
        " leased side by side for each count (only)",
    )
    parser.add_argument(
        "--max-in-flight-updates",
        type=int,
        default=None,
        help="raise the dev server's per-workflow limit (history.maxInFlightUpdates, default 10)",
    )
    parser.add_argument(
        "--client-in-flight",
        type=int,
        default=None,
        help="queue updates in the script so that at most this many are in flight",
    )
    args = parser.parse_args()
    binary = Path(sys.executable).parent / "temporal"
    extra = []
    if args.max_in_flight_updates is not None:
        extra = [
            "--dynamic-config-value",
            f"history.maxInFlightUpdates={args.max_in_flight_updates}",
        ]
    env = await WorkflowEnvironment.start_local(
        runtime=quiet_runtime(),
        dev_server_existing_path=str(binary),
        dev_server_log_level="never",
        dev_server_extra_args=extra,
    )
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("temporal_governor")
    )
    gate = args.client_in_flight
    try:
        client = env.client
        async with Worker(
            client, task_queue=TASK_QUEUE, workflows=[GovernorLedger], workflow_runner=runner
        ):
            if args.batching:
                await batching(client, args)
                return
            if args.shards:
                await sharded(client, args)
                return
            await measure(client, "per-call", 1, 1.0, 50, gate)  # warm up
            server_limit = args.max_in_flight_updates or "10 (server default)"
            print(
                f"one ledger workflow per cell, {args.seconds:g} s per cell; a reservation is"
                f" {UNIT:g} tokens, a lease asks for {LEASE_UNITS} of them"
            )
            print(
                f"in-flight updates per workflow allowed by the server: {server_limit};"
                f" queued in the script above: {gate or 'no (every caller sends at once)'}"
            )
            print(
                f"{'callers':>7} {'per-call res/s':>15} {'count':>7} {'update ms p50':>14}"
                f" {'p99':>7} {'re-sent':>7} {'leases res/s':>13} {'count':>9} {'leases/s':>9}"
                f" {'speed-up':>9}"
            )
            lease_rates: dict[int, float] = {}
            failures: list[str] = []
            for callers in args.callers:
                calls = await measure(client, "per-call", callers, args.seconds, args.cap, gate)
                leased = await measure(client, "leases", callers, args.seconds, args.cap, gate)
                marks = []
                for name, cell in (("per-call", calls), ("leases", leased)):
                    marks.append("!" if cell.failure else " ")
                    if cell.failure:
                        failures.append(f"! {name} x {callers} FAILED: {cell.failure}")
                per_call = max(calls.done / calls.seconds, 1e-9)
                leases = leased.done / leased.seconds
                lease_rates[callers] = math.nan if leased.failure else leases
                p50, p99 = percentile(calls.latencies, 0.5), percentile(calls.latencies, 0.99)
                print(
                    f"{callers:>7} {per_call:>14,.1f}{marks[0]} {calls.done:>7,}"
                    f" {p50 * 1000:>14,.0f} {p99 * 1000:>7,.0f} {calls.resent + leased.resent:>7}"
                    f" {leases:>12,.0f}{marks[1]} {leased.done:>9,}"
                    f" {leased.leases / leased.seconds:>9,.1f} {leases / per_call:>8.0f}x",
                    flush=True,
                )
            for line in failures:
                print(line)
            top = max(lease_rates)
            verdict = "met" if lease_rates[top] >= 1000 else "MISSED"
            print(
                f"target >= 1,000 reservations/s with leases at {top} callers:"
                f" {lease_rates[top]:,.0f}/s, {verdict}"
            )
            print(
                "checked in every cell that finished: ledger committed == reservations x"
                f" {UNIT:g} tokens, nothing left reserved"
            )
            if not args.skip_race:
                await racing(client, args)
    finally:
        await env.shutdown()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def quiet_runtime() -> Runtime:
    """The SDK's runtime without its warnings (workflow-task races under load are expected)."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
    # The SDK's native threads may still call into Python while the interpreter finalizes
    # (seen here as an abort, "PyGILState_Release ... must be current"); everything is
    # printed and shut down by now, so leave without finalizing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
