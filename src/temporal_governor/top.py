"""``temporal-governor top``: a live view of a governed fleet.

A *frame* (:class:`Frame`) is what the dashboard shows at one moment:

- the shared ledger's counters (from its ``state`` query, the data ``budget`` shows) of
  every tenant and owner scope (and the global, agent and tool scopes), with the share of
  each ceiling in use and the burn rate (committed per minute);
- governed runs by state, per tenant, counted through Temporal visibility (the
  ``GovernorTenant`` and ``GovernorState`` search attributes);
- the runs the governor halted most recently (state ``breached`` or ``killed``) with their
  memo summaries, the runs a kill holds paused (from each run's ``governor.control``
  query), and the fleet-wide kills and resumes the ledger keeps for the tenants and agent
  types in view.

:func:`gather_frame` builds a frame from a connected client; :func:`render_frame` turns one
into rich renderables; :func:`run_live` repeats both every interval. The arithmetic (%
used, windows, burn rates, run counts) is in pure functions and :class:`BurnTracker`.

Burn rate
    Tokens (and cost, and any other resource a scope has a counter for, except
    concurrency) committed per minute in a scope. From the second frame on it is measured:
    the growth of the scope's counter (its total counter, else its longest window, whose
    restarts are followed) between the frames of the last minute, divided by the time they
    span. A first frame (and ``--once``) has no earlier frame: it reads the scope's
    per-minute window counter if the policy has one (what the window holds, divided by the
    time since it started, at least one second), else it shows "—".

Cost of a frame
    Visibility calls: 2 lists (recent halts, paused runs) plus 3 counts per tenant row;
    without ``--tenant`` also 3 counts for the totals and 1 list to find the busy tenants.
    They go through a rate limiter (:class:`RateLimiter`, ``--visibility-rate``) because
    Temporal limits visibility calls per namespace (10 per second per frontend by default):
    when a frame needs more calls than that allows, frames come less often than the
    interval. The ledger and paused-run queries are not visibility calls.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowExecution, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from .control import CONTROL_QUERY
from .core.shards import ShardMap
from .names import MEMO_KEY, STATE_ATTRIBUTE, TENANT_ATTRIBUTE

RUN_STATES = ("running", "paused", "completed", "failed", "breached", "killed", "ended_otherwise")
"""The columns of the runs table, in order. ``ended_otherwise``: runs that closed without
the governor writing how (terminated or timed out from outside, cancelled)."""
HALTED_STATES = ("breached", "killed")
"""The governor states of runs the governor halted."""
BURN_HORIZON_S = 60.0
"""Burn rates are averaged over the frames of this many seconds."""
NO_BURN = {"concurrency"}
"""Resources with no burn rate: a concurrency counter is a gauge (slots held), not spend."""
MAX_COUNTER_ROWS = 40
"""Counter rows the terminal view shows (the JSON frame has them all)."""
VISIBILITY_TIMEOUT = timedelta(seconds=10)
"""How long one visibility call may take."""

BurnBasis = Literal["frames", "window"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CounterRow(_Model):
    """One ledger counter as the dashboard shows it."""

    id: str
    """The ledger's counter id: ``scope|resource|window``."""
    scope: str
    kind: str
    """``tenant``, ``owner``, ``global``, ``agent``, ``tool`` (the scope's prefix)."""
    tenant: str | None = None
    """The tenant of a ``tenant:`` or ``owner:`` scope."""
    owner: str | None = None
    """The owner of an ``owner:<tenant>/<owner>`` scope."""
    resource: str
    window_s: float | None = None
    """The window's length in seconds; ``None`` for a total."""
    window_start: float | None = None
    """Epoch seconds at which the current window started."""
    committed: float
    """Committed (in the current window, for a windowed counter)."""
    reserved: float
    """Held by dispatches in flight (and leases)."""
    ceiling: float | None = None
    used_pct: float | None = None
    """``committed / ceiling`` in percent (a concurrency counter: ``reserved / ceiling``,
    the slots held); ``None`` without a ceiling, or with a ceiling of 0."""
    left: float | None = None
    """What a new reservation could still get: ``ceiling - committed - reserved``."""
    limit: str = ""
    """The policy limit that set the ceiling."""
    burn_per_min: float | None = None
    """The scope's burn rate of this resource (the same on every window of it)."""
    burn_basis: BurnBasis | None = None
    """How the burn rate was found: ``frames`` (measured between frames) or ``window``
    (a first frame's reading of the per-minute window); ``None``: unknown."""


class LedgerTotals(_Model):
    """The ledger's own totals over every scope (all tenants, whatever the filter)."""

    found: bool
    """Whether the ledger answered its ``state`` query."""
    run_id: str | None = None
    open_reservations: int = 0
    committed: dict[str, float] = Field(default_factory=dict)
    """Committed through the ledger since it started (all scopes, across continue-as-new)."""
    reserved: dict[str, float] = Field(default_factory=dict)
    burn_per_min: dict[str, float | None] = Field(default_factory=dict)
    """Committed per minute, measured between frames (``None`` on a first frame)."""


class RunCounts(_Model):
    """Governed runs of one tenant (or of all of them) by state."""

    tenant: str
    """The tenant; ``*`` for the total, ``(other)`` for the tenants without a row."""
    running: int = 0
    paused: int = 0
    completed: int = 0
    failed: int = 0
    breached: int = 0
    killed: int = 0
    ended_otherwise: int = 0
    """Closed without the governor writing how: terminated or timed out from outside, or
    cancelled. Runs that continued as new are not counted (their next run is)."""

    @property
    def total(self) -> int:
        """Every run counted in the row."""
        return sum(getattr(self, state) for state in RUN_STATES)

    def minus(self, others: Iterable[RunCounts], tenant: str) -> RunCounts:
        """What is left of this row after the other rows (never below zero)."""
        left = {state: getattr(self, state) for state in RUN_STATES}
        for other in others:
            for state in RUN_STATES:
                left[state] -= getattr(other, state)
        return RunCounts(tenant=tenant, **{s: max(0, v) for s, v in left.items()})


class HaltedRun(_Model):
    """A run the governor halted, with the summary it wrote to its memo."""

    workflow_id: str
    run_id: str
    agent: str
    tenant: str
    owner: str | None = None
    state: str
    """``breached`` or ``killed``."""
    closed_at: datetime | None = None
    spent: dict[str, float] = Field(default_factory=dict)
    breach: str | None = None
    """The breach statement (a kill's names the issuer and reason)."""


class PausedRun(_Model):
    """A running run a kill holds paused."""

    workflow_id: str
    run_id: str
    agent: str
    tenant: str
    paused_by: str | None = None
    paused_since: datetime | None = None
    reason: str | None = None
    deadline: datetime | None = None
    """When the run fails unless resumed."""
    error: str | None = None
    """Why its control state could not be read (the other fields are then empty)."""


class FleetControl(_Model):
    """The latest fleet-wide kill or resume of a tenant or agent type, kept by the ledger."""

    scope: str
    """``tenant:<name>`` or ``agent:<workflow type>``."""
    action: str
    """``kill`` or ``resume``."""
    mode: str | None = None
    """A kill's ``pause`` or ``terminate``."""
    issuer: str = ""
    reason: str = ""
    recorded_at: datetime
    in_force: bool
    """A kill not followed by a resume (its scope's runs rest or stop)."""


class Frame(_Model):
    """Everything one refresh of the dashboard shows."""

    at: datetime
    """When the frame was gathered (UTC)."""
    namespace: str
    ledger_id: str
    tenants: list[str] = Field(default_factory=list)
    """The ``--tenant`` filter; empty: every tenant."""
    ledger: LedgerTotals
    counters: list[CounterRow] = Field(default_factory=list)
    runs: list[RunCounts] = Field(default_factory=list)
    """One row per tenant shown, then ``(other)`` if some runs have no row."""
    runs_total: RunCounts
    """Every governed run (of the filtered tenants)."""
    tenants_not_shown: int = 0
    """Tenants found but left out of ``runs`` (beyond ``--max-tenants``)."""
    halted: list[HaltedRun] = Field(default_factory=list)
    paused: list[PausedRun] = Field(default_factory=list)
    controls: list[FleetControl] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    gather_s: float = 0.0
    """How long gathering the frame took."""


@dataclass(frozen=True)
class TopOptions:
    """What a frame gathers (the ``top`` command's options)."""

    ledger_id: str = "temporal-governor-ledger"
    shards: int = 1
    """The fleet's ``shared.shards``: with more than 1, the tenant shards are read too."""
    tenants: tuple[str, ...] = ()
    """Only these tenants (their scopes, runs and halts); empty: all."""
    recent: int = 10
    """Halted and paused runs listed (each)."""
    max_tenants: int = 5
    """Tenant rows in the runs table when no ``tenants`` are given."""
    query_timeout_s: float = 5.0
    """How long the ledger and each paused run may take to answer a query."""


# -- rate limiting ---------------------------------------------------------------------------


class RateLimiter:
    """A token bucket: at most ``rate`` calls a second, in bursts of up to ``burst``.

    Args:
        rate: Calls per second (more than 0).
        burst: Calls that may go at once after a quiet spell (default: ``rate``, at least 1).
        clock: Monotonic seconds.
    """

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0:
            raise ValueError("the rate must be more than 0")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    async def acquire(self) -> None:
        """Wait until one more call is allowed, and take it."""
        while True:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self.rate)


# -- pure arithmetic ------------------------------------------------------------------------


def scope_parts(scope: str) -> tuple[str, str | None, str | None]:
    """A scope's kind, tenant and owner: ``owner:acme/bob`` -> ``(owner, acme, bob)``.

    The owner scope ``owner:<tenant>/<owner>`` is split at its first ``/``.
    """
    kind, _, name = scope.partition(":")
    if kind == "tenant":
        return kind, name, None
    if kind == "owner":
        tenant, _, owner = name.partition("/")
        return kind, tenant, owner
    return kind, None, None


def in_tenants(scope: str, tenants: Sequence[str]) -> bool:
    """Whether a scope is one of these tenants' (their ``tenant:`` and ``owner:`` scopes)."""
    return any(scope == f"tenant:{t}" or scope.startswith(f"owner:{t}/") for t in tenants)


def counter_rows(
    counters: Iterable[dict[str, Any]], now: float, tenants: Sequence[str] = ()
) -> list[CounterRow]:
    """The ledger's counters (as its ``state`` query returns them) as dashboard rows.

    A windowed counter whose window ended before ``now`` is shown in its new window
    (nothing committed yet): the ledger rolls windows by its own clock, which stands still
    while it is idle.

    Args:
        counters: The ``counters`` of the ledger's ``state`` query.
        now: Epoch seconds.
        tenants: Keep only these tenants' scopes (empty: keep all).

    Returns:
        The rows, with no burn rate yet (see :class:`BurnTracker`).
    """
    rows = []
    for c in counters:
        scope = str(c["scope"])
        if tenants and not in_tenants(scope, tenants):
            continue
        kind, tenant, owner = scope_parts(scope)
        window_s = c.get("window_s")
        start = c.get("window_start")
        committed = float(c.get("committed") or 0.0)
        if window_s and start is not None and now >= start + window_s:
            start, committed = math.floor(now / window_s) * window_s, 0.0
        reserved = float(c.get("reserved") or 0.0)
        ceiling = c.get("ceiling")
        resource = str(c["resource"])
        used = reserved if resource == "concurrency" else committed
        rows.append(
            CounterRow(
                id=str(c.get("id") or f"{scope}|{resource}|{window_s}"),
                scope=scope,
                kind=kind,
                tenant=tenant,
                owner=owner,
                resource=resource,
                window_s=window_s,
                window_start=start,
                committed=committed,
                reserved=reserved,
                ceiling=ceiling,
                used_pct=100.0 * used / ceiling if ceiling else None,
                left=ceiling - committed - reserved if ceiling is not None else None,
                limit=str(c.get("limit") or ""),
            )
        )
    return rows


def window_burn(row: CounterRow, now: float) -> float | None:
    """A first frame's burn rate from a per-minute window counter, per minute.

    What the current window holds, divided by the time since it started (at least one
    second): the average rate since the minute began. ``None`` for other counters.
    """
    if row.window_s != 60.0 or row.window_start is None:
        return None
    elapsed = max(now - row.window_start, 1.0)
    return row.committed / elapsed * 60.0


def _tracked(rows: Sequence[CounterRow]) -> CounterRow:
    """The counter a scope's burn rate follows: its total, else its longest window."""
    return min(rows, key=lambda r: (r.window_s is not None, -(r.window_s or 0.0)))


@dataclass
class _Series:
    counter: str
    window_start: float | None
    committed: float
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    """(time, cumulative committed since the first sample)."""


class BurnTracker:
    """Burn rates measured across successive frames.

    Feed it every frame's rows (:meth:`observe`) and ledger totals (:meth:`observe_totals`),
    in time order; it keeps, per scope and resource, the frames of the last
    :data:`BURN_HORIZON_S` seconds.
    """

    def __init__(self, horizon_s: float = BURN_HORIZON_S) -> None:
        self.horizon_s = horizon_s
        self._series: dict[tuple[str, str], _Series] = {}

    def _rate(
        self, key: tuple[str, str], counter: str, start: float | None, value: float, now: float
    ) -> float | None:
        series = self._series.get(key)
        if series is None or series.counter != counter:
            series = _Series(counter, start, value)
            series.samples.append((now, 0.0))
            self._series[key] = series
            return None
        last_at, total = series.samples[-1]
        if now <= last_at:
            return self._average(series)
        if start == series.window_start:
            total += value - series.committed
        else:  # the window restarted: what it holds now was committed since
            total += value
        series.window_start, series.committed = start, value
        series.samples.append((now, total))
        while len(series.samples) > 2 and series.samples[1][0] <= now - self.horizon_s:
            series.samples.popleft()
        return self._average(series)

    @staticmethod
    def _average(series: _Series) -> float | None:
        (first_at, first), (last_at, last) = series.samples[0], series.samples[-1]
        if last_at <= first_at:
            return None
        return max(0.0, (last - first) / (last_at - first_at) * 60.0)

    def observe(self, rows: Sequence[CounterRow], now: float) -> None:
        """Set the burn rate of every row (scopes and resources seen before: measured)."""
        groups: dict[tuple[str, str], list[CounterRow]] = {}
        for row in rows:
            if row.resource not in NO_BURN:
                groups.setdefault((row.scope, row.resource), []).append(row)
        for gone in [k for k in self._series if k[0] != "*" and k not in groups]:
            del self._series[gone]  # a scope no longer shown starts afresh if it comes back
        for key, group in groups.items():
            tracked = _tracked(group)
            rate = self._rate(key, tracked.id, tracked.window_start, tracked.committed, now)
            basis: BurnBasis | None = "frames" if rate is not None else None
            if rate is None:
                for row in group:
                    rate = window_burn(row, now)
                    if rate is not None:
                        basis = "window"
                        break
            for row in group:
                row.burn_per_min, row.burn_basis = rate, basis

    def observe_totals(self, totals: LedgerTotals, now: float) -> None:
        """Set the ledger-wide burn rates (measured from a second frame on)."""
        for resource, value in totals.committed.items():
            if resource not in NO_BURN:
                rate = self._rate(("*", resource), "*", None, value, now)
                totals.burn_per_min[resource] = rate


def runs_from_counts(
    tenant: str,
    by_status: dict[str, int],
    paused: int,
    breached: int,
    killed: int,
) -> RunCounts:
    """A runs row from what visibility counted.

    Args:
        tenant: The row's tenant.
        by_status: Governed runs by execution status (``Running``, ``Completed``, ...).
        paused: Running runs whose ``GovernorState`` is ``paused``.
        breached: Runs whose ``GovernorState`` is ``breached``.
        killed: Runs whose ``GovernorState`` is ``killed``.

    Returns:
        Running and paused runs are the running executions; completed ones the completed
        executions; breached and killed runs are failed executions the governor halted;
        ``failed`` is the other failed executions; ``ended_otherwise`` the terminated,
        timed-out and cancelled ones.
    """
    running = by_status.get("Running", 0)
    failed = by_status.get("Failed", 0)
    return RunCounts(
        tenant=tenant,
        running=max(0, running - paused),
        paused=paused,
        completed=by_status.get("Completed", 0),
        failed=max(0, failed - breached - killed),
        breached=breached,
        killed=killed,
        ended_otherwise=sum(by_status.get(s, 0) for s in ("Terminated", "TimedOut", "Canceled")),
    )


# -- gathering --------------------------------------------------------------------------------


def quote(value: str) -> str:
    """A visibility query string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def tenant_clause(tenants: Sequence[str]) -> str:
    """``GovernorTenant IN (...)`` for these tenants, or nothing."""
    if not tenants:
        return ""
    return f" AND GovernorTenant IN ({', '.join(quote(t) for t in tenants)})"


def _epoch(when: Any) -> datetime | None:
    """A datetime from ISO text, epoch milliseconds or a datetime."""
    if when is None or when == "":
        return None
    if isinstance(when, datetime):
        return when
    if isinstance(when, int | float):
        return datetime.fromtimestamp(when / 1000.0, UTC)
    try:
        return datetime.fromisoformat(str(when))
    except ValueError:
        return None


class _Visibility:
    """Visibility calls through one rate limiter."""

    def __init__(self, client: Client, limiter: RateLimiter | None) -> None:
        self.client = client
        self.limiter = limiter
        self.calls = 0

    async def _wait(self) -> None:
        self.calls += 1
        if self.limiter is not None:
            await self.limiter.acquire()

    async def count(self, query: str) -> int:
        await self._wait()
        return (await self.client.count_workflows(query, rpc_timeout=VISIBILITY_TIMEOUT)).count

    async def by_status(self, query: str) -> dict[str, int]:
        await self._wait()
        counted = await self.client.count_workflows(
            f"{query} GROUP BY ExecutionStatus", rpc_timeout=VISIBILITY_TIMEOUT
        )
        return {str(g.group_values[0]): g.count for g in counted.groups if g.group_values}

    async def list(self, query: str, limit: int) -> list[WorkflowExecution]:
        await self._wait()
        found = self.client.list_workflows(
            query, limit=limit, page_size=limit, rpc_timeout=VISIBILITY_TIMEOUT
        )
        return [execution async for execution in found]

    async def runs(self, tenant: str, where: str) -> RunCounts:
        """Count one row in 3 calls.

        Paused and killed runs come from one count by execution status: a paused run is
        a running execution, a killed one a failed execution (the governor writes
        ``killed`` in the workflow task that fails the run).
        """
        by_status, held, breached = await asyncio.gather(
            self.by_status(where),
            self.by_status(f"{where} AND GovernorState IN ('paused', 'killed')"),
            self.count(f"{where} AND GovernorState = 'breached'"),
        )
        paused, killed = held.get("Running", 0), held.get("Failed", 0)
        return runs_from_counts(tenant, by_status, paused, breached, killed)


_PREFIX_QUERIES_UP_TO = 4
"""Up to this many tenants, the ledger is queried per tenant and owner prefix (small
answers); beyond it, once for everything (each query is a task for the ledger's worker)."""


async def read_ledger(
    client: Client, ledger_id: str, tenants: Sequence[str], timeout_s: float
) -> tuple[dict[str, Any] | None, str | None]:
    """The ledger's ``state`` (all scopes, or the tenants' scopes), or why there is none.

    Returns:
        ``(state, None)``, or ``(None, warning)`` when the ledger is not running, does not
        answer in time or refuses the query.
    """
    handle = client.get_workflow_handle(ledger_id)
    rpc_timeout = timedelta(seconds=timeout_s)

    async def query(prefix: str) -> dict[str, Any]:
        state: dict[str, Any] = await handle.query("state", prefix, rpc_timeout=rpc_timeout)
        return state

    try:
        if not tenants or len(tenants) > _PREFIX_QUERIES_UP_TO:
            state = await query("")
            if tenants:
                state["counters"] = [
                    c for c in state.get("counters", []) if in_tenants(str(c["scope"]), tenants)
                ]
            return state, None
        prefixes = [p for t in tenants for p in (f"tenant:{t}", f"owner:{t}/")]
        states = await asyncio.gather(*(query(p) for p in prefixes))
    except WorkflowQueryFailedError as error:
        return None, f"ledger {ledger_id}: the state query failed: {error}"
    except RPCError as error:
        return None, f"ledger {ledger_id}: {_ledger_problem(error)}"
    merged = dict(states[-1])
    seen: dict[str, dict[str, Any]] = {}
    for state in states:
        for c in state.get("counters", []):
            seen[str(c.get("id") or (c["scope"], c["resource"], c.get("window_s")))] = c
    merged["counters"] = list(seen.values())
    return merged, None


_TOTALS = ("committed", "reserved", "granted", "released")
_COUNTS = ("open_reservations", "expired_unsettled")


async def read_ledgers(
    client: Client, ledgers: ShardMap, tenants: Sequence[str], timeout_s: float
) -> tuple[dict[str, Any] | None, list[str]]:
    """Every ledger of a fleet read as one: the counters of all, side by side.

    With tenants given, only their shards and the root are read. A ledger that is not
    running has simply not been used yet: a warning only when none could be read.

    The totals (``committed``, ``reserved``, ``granted``, ``released``,
    ``open_reservations``, ``expired_unsettled``) are the tenant
    shards' added up: a dispatch reserves once on its tenant's shard and, if a fleet-wide
    limit applies, once more on the root, so adding the root would count it twice. A
    fleet whose shards hold nothing (only fleet-wide limits) shows the root's. Each
    ledger's own totals are under ``ledgers`` (by id); ``run_id`` is the root's.

    Returns:
        ``(state, warnings)``; ``state`` is ``None`` when no ledger could be read.
    """
    if not ledgers.sharded:
        state, problem = await read_ledger(client, ledgers.root, tenants, timeout_s)
        return state, [problem] if problem else []
    ids = ledgers.all_ledgers()
    if tenants:
        ids = list(dict.fromkeys([ledgers.ledger_of_tenant(t) for t in tenants] + [ledgers.root]))
    read = await asyncio.gather(*(read_ledger(client, i, tenants, timeout_s) for i in ids))
    found = {i: state for i, (state, _) in zip(ids, read, strict=True) if state is not None}
    warnings = [p for (state, p) in read if state is None and p and "not running" not in p]
    if not found:
        return None, [p for (_, p) in read if p][:1] + warnings[1:]
    shards = [state for i, state in found.items() if i != ledgers.root]
    summed = shards or [found[ledgers.root]]
    merged: dict[str, Any] = {
        "counters": [c for state in found.values() for c in state.get("counters", [])],
        **{count: sum(int(s.get(count) or 0) for s in summed) for count in _COUNTS},
        "run_id": found[ledgers.root].get("run_id") if ledgers.root in found else None,
        "ledgers": {
            i: {k: v for k, v in state.items() if k != "counters"} for i, state in found.items()
        },
    }
    for total in _TOTALS:
        added: dict[str, float] = {}
        for state in summed:
            for resource, value in (state.get(total) or {}).items():
                added[resource] = added.get(resource, 0.0) + float(value)
        merged[total] = added
    return merged, warnings


def _ledger_problem(error: RPCError) -> str:
    if error.status == RPCStatusCode.NOT_FOUND:
        return "not running (no shared quota used yet, or another --ledger-id / --policy?)"
    if error.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
        return "did not answer in time (is a governed worker polling its task queue?)"
    return " ".join(str(error).split())


async def _paused_run(client: Client, execution: WorkflowExecution, timeout_s: float) -> PausedRun:
    row = PausedRun(
        workflow_id=execution.id,
        run_id=execution.run_id,
        agent=execution.workflow_type,
        tenant=execution.typed_search_attributes.get(TENANT_ATTRIBUTE) or "",
    )
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    try:
        control: dict[str, Any] = await handle.query(
            CONTROL_QUERY, rpc_timeout=timedelta(seconds=timeout_s)
        )
    except (RPCError, WorkflowQueryFailedError) as error:
        row.error = " ".join(str(error).split())[:200] or type(error).__name__
        return row
    row.paused_by = control.get("paused_by")
    row.paused_since = _epoch(control.get("paused_since"))
    row.reason = control.get("pause_reason")
    row.deadline = _epoch(control.get("pause_deadline"))
    return row


async def _halted_run(execution: WorkflowExecution) -> HaltedRun:
    memo = await execution.memo()
    summary = memo.get(MEMO_KEY) if isinstance(memo, dict) else None
    summary = summary if isinstance(summary, dict) else {}
    spent = summary.get("spent") or {}
    return HaltedRun(
        workflow_id=execution.id,
        run_id=execution.run_id,
        agent=execution.workflow_type,
        tenant=execution.typed_search_attributes.get(TENANT_ATTRIBUTE)
        or str(summary.get("tenant") or ""),
        owner=summary.get("owner"),
        state=execution.typed_search_attributes.get(STATE_ATTRIBUTE) or "",
        closed_at=execution.close_time,
        spent={str(k): float(v) for k, v in spent.items()} if isinstance(spent, dict) else {},
        breach=summary.get("breach"),
    )


async def fleet_controls(
    client: Client, ledgers: ShardMap | str, scopes: Sequence[str], timeout_s: float
) -> list[FleetControl]:
    """The fleet-wide kills and resumes the ledgers keep for these scopes, newest first.

    A tenant's live on its shard, an agent type's on the root (one query per ledger).
    """
    if not scopes:
        return []
    if isinstance(ledgers, str):
        ledgers = ShardMap(ledgers)
    stored: dict[str, dict[str, Any]] = {}
    for ledger_id, some in ledgers.split_scopes(scopes).items():
        try:
            stored.update(
                await client.get_workflow_handle(ledger_id).query(
                    "controls", some, rpc_timeout=timedelta(seconds=timeout_s)
                )
            )
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:  # not running: nothing kept there
                raise
    found = []
    for scope, signals in stored.items():
        kill, resume = signals.get("governor.kill"), signals.get("governor.resume")
        for signal, record in signals.items():
            message = record.get("message") or {}
            at = int(record.get("recorded_at_ms") or 0)
            is_kill = signal == "governor.kill"
            found.append(
                FleetControl(
                    scope=scope,
                    action="kill" if is_kill else "resume",
                    mode=message.get("mode") if is_kill else None,
                    issuer=str(message.get("issuer") or ""),
                    reason=str(message.get("reason") or ""),
                    recorded_at=datetime.fromtimestamp(at / 1000.0, UTC),
                    in_force=is_kill
                    and kill is not None
                    and (resume is None or kill["recorded_at_ms"] > resume["recorded_at_ms"]),
                )
            )
    return sorted(found, key=lambda c: c.recorded_at, reverse=True)


def _busy_tenants(
    live: Sequence[WorkflowExecution], extra: Iterable[str], most: int
) -> tuple[list[str], int]:
    """The tenants for runs rows: those with most live runs first, then the others by name."""
    live_count: dict[str, int] = {}
    for execution in live:
        tenant = execution.typed_search_attributes.get(TENANT_ATTRIBUTE)
        if tenant:
            live_count[tenant] = live_count.get(tenant, 0) + 1
    every = set(live_count) | {t for t in extra if t}
    ranked = sorted(every, key=lambda t: (-live_count.get(t, 0), t))
    return ranked[:most], max(0, len(ranked) - most)


async def gather_frame(
    client: Client,
    options: TopOptions,
    burn: BurnTracker | None = None,
    *,
    limiter: RateLimiter | None = None,
    clock: Callable[[], float] = time.time,
) -> Frame:
    """One frame of the dashboard, read from the ledger and from visibility.

    Args:
        client: A connected client (its namespace is the fleet's).
        options: What to gather.
        burn: The tracker of the frames before (a new one: this is a first frame).
        limiter: Paces the visibility calls (none: as fast as the server answers).
        clock: Epoch seconds.

    Returns:
        The frame. A ledger that is not running or does not answer is a warning in it.

    Raises:
        RPCError: A visibility call failed (the server is unreachable, refuses the
            namespace or the query, or limits the calls).
    """
    started = time.monotonic()
    burn = burn if burn is not None else BurnTracker()
    visibility = _Visibility(client, limiter)
    tenants = list(options.tenants)
    where = "GovernorState IS NOT NULL" + tenant_clause(tenants)
    warnings: list[str] = []

    ledgers = ShardMap(options.ledger_id, options.shards)
    (state, problems), halted_list, paused_list = await asyncio.gather(
        read_ledgers(client, ledgers, tenants, options.query_timeout_s),
        visibility.list(
            f"GovernorState IN ('breached', 'killed'){tenant_clause(tenants)}", options.recent
        ),
        visibility.list(
            f"GovernorState = 'paused' AND ExecutionStatus = 'Running'{tenant_clause(tenants)}",
            options.recent,
        ),
    )
    now = clock()
    warnings += problems
    rows = counter_rows(state["counters"] if state else [], now, tenants)
    burn.observe(rows, now)
    ledger = LedgerTotals(found=state is not None)
    if state is not None:
        ledger = LedgerTotals(
            found=True,
            run_id=state.get("run_id"),
            open_reservations=int(state.get("open_reservations") or 0),
            committed={str(k): float(v) for k, v in (state.get("committed") or {}).items()},
            reserved={str(k): float(v) for k, v in (state.get("reserved") or {}).items()},
        )
        burn.observe_totals(ledger, now)

    halted = sorted(
        await asyncio.gather(*(_halted_run(e) for e in halted_list)),
        key=lambda r: r.closed_at or datetime.min.replace(tzinfo=UTC),
        reverse=True,
    )
    paused = await asyncio.gather(
        *(_paused_run(client, e, options.query_timeout_s) for e in paused_list)
    )

    if tenants:
        shown, not_shown = tenants, 0
    else:
        live = await visibility.list(
            "GovernorState IS NOT NULL AND ExecutionStatus = 'Running'", 200
        )
        known = [r.tenant for r in rows if r.tenant] + [r.tenant for r in halted]
        known += [r.tenant for r in paused]
        shown, not_shown = _busy_tenants(live, known, options.max_tenants)
    counted = await asyncio.gather(
        *(
            visibility.runs(t, f"GovernorState IS NOT NULL AND GovernorTenant = {quote(t)}")
            for t in shown
        ),
        *([] if tenants else [visibility.runs("*", where)]),
    )
    per_tenant = list(counted[: len(shown)])
    if tenants:
        sums = {s: sum(getattr(r, s) for r in per_tenant) for s in RUN_STATES}
        total = RunCounts(tenant="*", **sums)
    else:
        total = counted[-1]
        other = total.minus(per_tenant, "(other)")
        if other.total:
            per_tenant.append(other)

    controls: list[FleetControl] = []
    if state is not None:
        agents = sorted({r.agent for r in halted} | {r.agent for r in paused})
        scopes = [f"tenant:{t}" for t in (tenants or shown)] + [f"agent:{a}" for a in agents]
        try:
            controls = await fleet_controls(client, ledgers, scopes, options.query_timeout_s)
        except (RPCError, WorkflowQueryFailedError) as error:
            warnings.append(f"ledger {options.ledger_id}: fleet controls: {error}")
    for row in paused:
        if row.error:
            warnings.append(f"{row.workflow_id}: control state unreadable: {row.error}")
    return Frame(
        at=datetime.fromtimestamp(now, UTC),
        namespace=client.namespace,
        ledger_id=options.ledger_id,
        tenants=tenants,
        ledger=ledger,
        counters=rows,
        runs=per_tenant,
        runs_total=total,
        tenants_not_shown=not_shown,
        halted=halted,
        paused=list(paused),
        controls=controls,
        warnings=warnings,
        gather_s=round(time.monotonic() - started, 3),
    )


# -- rendering ------------------------------------------------------------------------------


def _amount(resource: str, value: float | None) -> str:
    if value is None:
        return ""
    if resource == "cost_usd":
        return f"${value:,.4f}" if abs(value) < 100 else f"${value:,.2f}"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}"


def format_burn(resource: str, rate: float | None) -> str:
    """A burn rate per minute for a table cell (``—`` when unknown)."""
    if rate is None:
        return "—"
    if resource == "cost_usd":
        return f"${rate:,.4f}/min"
    return f"{rate:,.1f}/min" if rate < 10 else f"{rate:,.0f}/min"


def format_pct(pct: float | None) -> str:
    """A share in use, as the tables show it (``87.5%``), empty without a ceiling."""
    return "" if pct is None else f"{pct:.1f}%"


def _pct_style(pct: float | None) -> str:
    if pct is None:
        return ""
    return "bold red" if pct >= 90 else "yellow" if pct >= 75 else "green"


def _when(moment: datetime | None, today: datetime) -> str:
    """A time of day, with its date when it is not on ``today``'s (UTC)."""
    if moment is None:
        return ""
    moment = moment.astimezone(UTC)
    same_day = moment.date() == today.astimezone(UTC).date()
    return moment.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")


def display_order(rows: Sequence[CounterRow]) -> list[CounterRow]:
    """Counters in the order the terminal shows them.

    The global scope, then tenants (the fullest first, each tenant scope before its
    owners), then agent and tool scopes.
    """

    def heat(group: Iterable[CounterRow]) -> float:
        return max((r.used_pct or 0.0 for r in group), default=0.0)

    by_tenant: dict[str, list[CounterRow]] = {}
    for row in rows:
        if row.tenant is not None:
            by_tenant.setdefault(row.tenant, []).append(row)
    ordered = sorted((r for r in rows if r.kind == "global"), key=lambda r: r.id)
    for tenant in sorted(by_tenant, key=lambda t: (-heat(by_tenant[t]), t)):
        ordered += sorted(
            by_tenant[tenant],
            key=lambda r: (r.kind != "tenant", r.scope, r.resource, r.window_s or 0.0),
        )
    ordered += sorted(
        (r for r in rows if r.tenant is None and r.kind != "global"),
        key=lambda r: (r.kind, r.scope, r.resource, r.window_s or 0.0),
    )
    return ordered


def _counters_table(frame: Frame) -> RenderableType:
    table = Table(title="shared counters", title_justify="left", expand=False)
    for column in ("scope", "resource", "window", "committed", "reserved", "ceiling"):
        table.add_column(column, justify="left" if column in ("scope", "resource") else "right")
    table.add_column("used", justify="right")
    table.add_column("left", justify="right")
    table.add_column("burn", justify="right")
    ordered = display_order(frame.counters)
    for row in ordered[:MAX_COUNTER_ROWS]:
        burn = format_burn(row.resource, row.burn_per_min)
        if row.resource in NO_BURN:
            burn = ""
        elif row.burn_basis == "window":
            burn += " (1m window)"
        table.add_row(
            escape(row.scope),
            row.resource,
            "total" if row.window_s is None else f"{row.window_s:g} s",
            _amount(row.resource, row.committed),
            _amount(row.resource, row.reserved),
            _amount(row.resource, row.ceiling),
            Text(format_pct(row.used_pct), style=_pct_style(row.used_pct)),
            _amount(row.resource, row.left),
            burn,
        )
    if len(ordered) > MAX_COUNTER_ROWS:
        table.caption = (
            f"{len(ordered) - MAX_COUNTER_ROWS} more counters: narrow with --tenant, or --json"
        )
    if not ordered:
        table.caption = "no counters" + (
            "" if frame.ledger.found else f": ledger {frame.ledger_id} not read"
        )
    return table


_RUN_HEADINGS = {
    "running": "running",
    "paused": "paused",
    "completed": "completed",
    "failed": "failed",
    "breached": "breached",
    "killed": "killed",
    "ended_otherwise": "ended otherwise",
}
_RUN_STYLES = {"paused": "yellow", "breached": "red", "killed": "red", "failed": "magenta"}


def _runs_table(frame: Frame) -> RenderableType:
    table = Table(title="governed runs by state", title_justify="left")
    table.add_column("tenant")
    for state in RUN_STATES:
        table.add_column(_RUN_HEADINGS[state], justify="right")
    table.add_column("total", justify="right")

    def cells(row: RunCounts) -> list[RenderableType]:
        out: list[RenderableType] = []
        for state in RUN_STATES:
            value = getattr(row, state)
            out.append(Text(str(value), style=_RUN_STYLES.get(state, "") if value else "dim"))
        return [*out, str(row.total)]

    for row in frame.runs:
        table.add_row(escape(row.tenant), *cells(row))
    table.add_row(
        Text("all" if not frame.tenants else "all shown", style="bold"), *cells(frame.runs_total)
    )
    if frame.tenants_not_shown:
        table.caption = f"{frame.tenants_not_shown} more tenants counted in (other)"
    return table


def _halted_table(frame: Frame) -> RenderableType:
    table = Table(title="recently halted (breached or killed)", title_justify="left")
    for column in ("closed", "workflow id", "agent", "tenant", "state", "tokens", "cost", "why"):
        table.add_column(column, justify="right" if column in ("tokens", "cost") else "left")
    for run in frame.halted:
        who = run.tenant + (f"/{run.owner}" if run.owner else "")
        table.add_row(
            _when(run.closed_at, frame.at),
            escape(run.workflow_id),
            escape(run.agent),
            escape(who),
            Text(run.state, style="red"),
            _amount("tokens", run.spent.get("tokens", 0.0)),
            _amount("cost_usd", run.spent.get("cost_usd", 0.0)),
            escape(run.breach or ""),
        )
    if not frame.halted:
        table.caption = "none"
    return table


def _controls_table(frame: Frame) -> RenderableType:
    table = Table(title="controls: paused runs and fleet kills", title_justify="left")
    for column in ("since", "target", "agent", "tenant", "what", "by", "reason"):
        table.add_column(column)
    for run in frame.paused:
        what = "paused"
        if run.deadline:
            what += f" (fails {_when(run.deadline, frame.at)})"
        table.add_row(
            _when(run.paused_since, frame.at),
            escape(run.workflow_id),
            escape(run.agent),
            escape(run.tenant),
            Text(what, style="yellow"),
            escape(run.paused_by or ("?" if run.error else "")),
            escape(run.reason or ""),
        )
    for control in frame.controls:
        what = control.action + (f" ({control.mode})" if control.mode else "")
        what += ", in force" if control.in_force else ""
        table.add_row(
            _when(control.recorded_at, frame.at),
            escape(control.scope),
            "",
            "",
            Text(what, style="red" if control.in_force else "green"),
            escape(control.issuer),
            escape(control.reason),
        )
    if not frame.paused and not frame.controls:
        table.caption = "none"
    return table


def _header(frame: Frame, interval_s: float | None) -> RenderableType:
    scope = f"tenants {', '.join(frame.tenants)}" if frame.tenants else "all tenants"
    refresh = f"every {interval_s:g} s" if interval_s else "once"
    line = Text.assemble(
        ("temporal-governor top", "bold"),
        f"  namespace {frame.namespace}  ledger {frame.ledger_id}  {scope}  ",
        (frame.at.strftime("%Y-%m-%d %H:%M:%S UTC"), "cyan"),
        f"  refresh {refresh} (frame took {frame.gather_s:.2f} s)",
    )
    ledger = frame.ledger
    if not ledger.found:
        return line
    totals = ", ".join(
        f"{_amount(r, v)} {r} (burn {format_burn(r, ledger.burn_per_min.get(r))})"
        for r, v in sorted(ledger.committed.items())
        if r not in NO_BURN
    )
    second = Text(
        f"ledger (all tenants): committed {totals or 'nothing yet'}; "
        f"{ledger.open_reservations} open reservations",
        style="dim",
    )
    return Group(line, second)


def render_frame(frame: Frame, interval_s: float | None = None) -> RenderableType:
    """A frame as rich renderables: header, counters, runs, halts, controls, warnings.

    Args:
        frame: The frame.
        interval_s: The refresh interval to show (``None``: a single frame).
    """
    parts: list[RenderableType] = [
        _header(frame, interval_s),
        _counters_table(frame),
        _runs_table(frame),
        _halted_table(frame),
        _controls_table(frame),
    ]
    parts += [Text(f"warning: {w}", style="yellow") for w in frame.warnings]
    return Group(*parts)


# -- the live loop ----------------------------------------------------------------------------


async def run_live(
    client: Client,
    options: TopOptions,
    console: Console,
    *,
    interval_s: float = 1.0,
    frames: int | None = None,
    limiter: RateLimiter | None = None,
    gather: Callable[..., Awaitable[Frame]] = gather_frame,
) -> int:
    """Show a new frame every ``interval_s`` seconds, in place on a terminal.

    On a terminal the frame is redrawn in place (``rich.live.Live``); otherwise each frame
    is printed after the previous one. A frame that cannot be gathered (after the first)
    leaves the last one on screen with the error below it, and the next interval tries
    again.

    Args:
        client: A connected client.
        options: What to gather.
        console: Where to draw.
        interval_s: Seconds from the start of one frame to the start of the next (longer
            when gathering a frame takes longer).
        frames: Stop after this many frames (``None``: until interrupted).
        limiter: Paces the visibility calls.
        gather: Builds a frame (tests replace it).

    Returns:
        How many frames were shown.

    Raises:
        RPCError: The first frame could not be gathered.
    """
    from rich.live import Live

    burn = BurnTracker()
    shown = 0
    last: Frame | None = None
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    if live is not None:
        live.start()
    try:
        while frames is None or shown < frames:
            began = time.monotonic()
            try:
                last = await gather(client, options, burn, limiter=limiter)
                view = render_frame(last, interval_s)
            except RPCError as error:
                if last is None:
                    raise
                problem = Text(f"error: {' '.join(str(error).split())} (retrying)", style="red")
                view = Group(render_frame(last, interval_s), problem)
            shown += 1
            if live is not None:
                live.update(view, refresh=True)
            else:
                console.print(view)
                console.print()
            if frames is not None and shown >= frames:
                break
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - began)))
    finally:
        if live is not None:
            live.stop()
    return shown


__all__ = [
    "BURN_HORIZON_S",
    "RUN_STATES",
    "BurnTracker",
    "CounterRow",
    "FleetControl",
    "Frame",
    "HaltedRun",
    "LedgerTotals",
    "PausedRun",
    "RateLimiter",
    "RunCounts",
    "TopOptions",
    "counter_rows",
    "format_burn",
    "format_pct",
    "gather_frame",
    "render_frame",
    "run_live",
    "runs_from_counts",
    "window_burn",
]
