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

    .venv/bin/python bench/ledger_throughput.py [--seconds 5] [--callers 1 10 50]
        [--race-rounds 5] [--ceiling 10000] [--amount 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from temporal_governor.scopes import SharedLimit
from temporal_governor.workflows import LEDGER_WORKFLOW, GovernorLedger, LedgerState

TASK_QUEUE = "ledger-bench"
UNIT = 100.0
"""Tokens of one reservation (one dispatch's estimate)."""
LEASE_UNITS = 100
"""Reservations a lease covers when granted in full."""
LARGE_CEILING = 1e15
"""Tenant ceiling of the throughput runs: nothing is refused."""


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
    pushed_back: int = 0
    errors: list[str] = field(default_factory=list)

    def open(self) -> bool:
        return self.done < self.cap and time.perf_counter() < self.deadline


class Ledger:
    """One fresh ledger workflow, reached with plain client updates."""

    def __init__(self, client: Client, name: str, ceiling: float) -> None:
        self.client = client
        self.id = f"bench-ledger-{name}-{uuid.uuid4().hex[:8]}"
        self.limits = [tenant_limit(ceiling)]
        self.pushed_back = 0
        """Updates the server refused (too many in flight on the workflow) and we retried."""

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
        """One update; refused for the server's in-flight limit, retried after a pause."""
        handle = self.client.get_workflow_handle(self.id)
        pause = 0.005
        while True:
            try:
                return await handle.execute_update(name, request, id=update_id)
            except RPCError as error:
                if error.status != RPCStatusCode.RESOURCE_EXHAUSTED:
                    raise
                self.pushed_back += 1
                await asyncio.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(pause * 2, 0.2)

    async def tokens(self) -> dict[str, Any]:
        state = await self.client.get_workflow_handle(self.id).query("state", "tenant:bench")
        counters = [c for c in state["counters"] if c["resource"] == "tokens"]
        counter = counters[0] if counters else {"committed": 0.0, "reserved": 0.0}
        return {**counter, "open_reservations": state["open_reservations"]}

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
        granted, used = result["amounts"]["tokens"], 0.0
        while granted - used >= UNIT and cell.open():  # local reservations, in memory
            used += UNIT
            cell.done += 1
            await asyncio.sleep(0)  # let the other callers run, as dispatches would
        await ledger.settle(key, used)


async def measure(
    client: Client,
    mode: str,
    callers: int,
    seconds: float,
    cap: int,
) -> Cell:
    """One cell: reservations made in it, and how long it took."""
    ledger = Ledger(client, f"{mode}-{callers}", LARGE_CEILING)
    await ledger.start()
    worker_fn: Callable[[Ledger, int, Cell], Awaitable[None]] = (
        per_call_caller if mode == "per-call" else lease_caller
    )
    started = time.perf_counter()
    cell = Cell(deadline=started + seconds, cap=cap)
    await asyncio.gather(*(worker_fn(ledger, i, cell) for i in range(callers)))
    cell.seconds = time.perf_counter() - started
    cell.pushed_back = ledger.pushed_back
    if cell.errors:
        raise RuntimeError(f"{mode} x {callers}: {cell.errors[:3]}")
    counter = await ledger.tokens()
    await ledger.stop()
    if abs(counter["committed"] - cell.done * UNIT) > 1e-6 or counter["reserved"] != 0:
        raise RuntimeError(f"{mode} x {callers}: ledger disagrees with the count: {counter}")
    return cell


# -- the racing load ------------------------------------------------------------------------


@dataclass
class Race:
    """Outcome of one racing round: grants, seconds, final counter."""

    granted: int
    seconds: float
    final: float
    pushed_back: int = 0


async def race(call: Callable[[int, int], Awaitable[bool]], callers: int) -> tuple[int, float]:
    """Every caller calls until it is refused once; returns grants and seconds."""
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
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return granted, time.perf_counter() - started


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

    granted, seconds = await race(incr_then_check if atomic else naive, callers)
    final = float(await redis.get(key))
    await redis.delete(key)
    return Race(granted, seconds, final)


async def ledger_round(client: Client, callers: int, ceiling: int, amount: int) -> Race:
    ledger = Ledger(client, "race", ceiling)
    await ledger.start()

    async def reserve_settle(caller: int, n: int) -> bool:
        key = f"c{caller}/{n}"
        result = await ledger.reserve(key, amount)
        if not result["granted"]:
            return False
        await ledger.settle(key, amount)
        return True

    granted, seconds = await race(reserve_settle, callers)
    counter = await ledger.tokens()
    await ledger.stop()
    if counter["reserved"] != 0 or counter["open_reservations"] != 0:
        raise RuntimeError(f"ledger race left reservations open: {counter}")
    return Race(granted, seconds, counter["committed"], ledger.pushed_back)


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
    try:
        import redis.asyncio
    except ImportError:
        print("redis-py is missing: install it with: .venv/bin/pip install -e '.[bench]'")
        print("(skipping the Redis baseline)")
        return
    if shutil.which("redis-server") is None:
        print("redis-server is not on PATH: install it with: apt-get install -y redis-server")
        print("(skipping the Redis baseline)")
        return
    naive: list[Race] = []
    atomic: list[Race] = []
    ledger: list[Race] = []
    async with redis_server() as (redis, version):
        for _ in range(rounds):  # alternate the variants
            naive.append(await redis_round(redis, False, callers, ceiling, amount))
            atomic.append(await redis_round(redis, True, callers, ceiling, amount))
            ledger.append(await ledger_round(client, callers, ceiling, amount))
    print(f"redis-server {version} on loopback, redis-py, one connection per in-flight call")
    print(
        f"{'variant':<34} {'grants/s':>9} {'granted':>8} {'overspend':>10} {'median':>10}"
        f"   final counter per round"
    )
    print(f"{'':<34} {'':>9} {'':>8} {'max':>10} {'overspend':>10}")
    print(race_row("redis naive GET, compare, INCRBY", naive, ceiling))
    print(race_row("redis atomic INCRBY, DECRBY back", atomic, ceiling))
    print(race_row("ledger reserve + settle updates", ledger, ceiling))
    worst = max(r.final for r in ledger)
    verdict = "holds" if worst <= ceiling else "BROKEN"
    print(f"ledger: highest final committed {worst:,.0f} <= ceiling {ceiling:,}: {verdict}")
    print(
        "note: the atomic Redis counter does not overspend one counter, but it cannot reserve"
        " in several scopes all-or-nothing (tenant + owner + tool), roll windows, or expire"
        " the reservations of a crashed caller without a Lua script; a rejected call also"
        " briefly inflates the counter, so concurrent callers may be refused spuriously."
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
        "--max-in-flight-updates",
        type=int,
        default=None,
        help="raise the server's per-workflow limit (history.maxInFlightUpdates, default 10)",
    )
    args = parser.parse_args()
    binary = Path(sys.executable).parent / "temporal"
    extra = []
    if args.max_in_flight_updates is not None:
        extra = [
            "--dynamic-config-value",
            f"history.maxInFlightUpdates={args.max_in_flight_updates}",
        ]
    quiet = Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )
    env = await WorkflowEnvironment.start_local(
        runtime=quiet,
        dev_server_existing_path=str(binary),
        dev_server_log_level="never",
        dev_server_extra_args=extra,
    )
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("temporal_governor")
    )
    try:
        client = env.client
        async with Worker(
            client, task_queue=TASK_QUEUE, workflows=[GovernorLedger], workflow_runner=runner
        ):
            await measure(client, "per-call", 1, 1.0, 50)  # warm up
            limit = args.max_in_flight_updates or "10 (server default)"
            print(
                f"one ledger workflow per cell, {args.seconds:g} s per cell;"
                f" a reservation is {UNIT:g} tokens, a lease asks for {LEASE_UNITS} of them;"
                f" in-flight updates per workflow: {limit}"
            )
            print(
                f"{'callers':>7} {'per-call res/s':>15} {'count':>7} {'pushed back':>11}"
                f" {'leases res/s':>13} {'count':>9} {'leases/s':>9} {'speed-up':>9}"
            )
            lease_rates: dict[int, float] = {}
            for callers in args.callers:
                calls = await measure(client, "per-call", callers, args.seconds, args.cap)
                leased = await measure(client, "leases", callers, args.seconds, args.cap)
                per_call = calls.done / calls.seconds
                leases = leased.done / leased.seconds
                lease_rates[callers] = leases
                print(
                    f"{callers:>7} {per_call:>15,.1f} {calls.done:>7,} {calls.pushed_back:>11,}"
                    f" {leases:>13,.0f} {leased.done:>9,} {leased.leases / leased.seconds:>9,.1f}"
                    f" {leases / per_call:>8.0f}x",
                    flush=True,
                )
            top = max(lease_rates)
            verdict = "met" if lease_rates[top] >= 1000 else "MISSED"
            print(
                f"target >= 1,000 reservations/s with leases at {top} callers:"
                f" {lease_rates[top]:,.0f}/s, {verdict}"
            )
            print(
                "checked in every cell: ledger committed == reservations x 100 tokens,"
                " nothing left reserved"
            )
            if not args.skip_race:
                await racing(client, args)
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
