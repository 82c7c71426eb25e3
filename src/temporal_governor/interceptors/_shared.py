"""A governed run's side of the shared ledger: reserve, settle and release across runs.

Two ways to reserve in shared scopes:

- **per dispatch**: one ``reserve`` update before the dispatch and one ``settle`` after;
  always used for concurrency limits (a slot is held for exactly one dispatch);
- **leases** (policy ``shared.leases``, on by default): the run reserves a chunk of the
  scopes' budget once (``shared.lease_dispatches`` times the dispatch's estimate, never
  more than a fair share of what is left) and reserves against it locally, with no round
  trip; the lease is settled with what was really used when it runs out, ages, or the run
  ends. The scopes' ceilings still hold exactly, because a lease is a reservation.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import temporalio.workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

from ..core.accounting import Refusal
from ..core.book import CAPACITY_LIMIT
from ..core.scopes import Dispatch, SharedLimit, shared_limits
from ..ledger._activity import LEDGER_ACTIVITY, LEDGER_UNAVAILABLE, LedgerCall
from ..ledger._workflow import MALFORMED_UPDATE, MAX_SETTLEMENTS, ReserveResult
from ._versions import (
    LEASE_LOCK_PATCH,
    ONE_LEDGER_CALL_PATCH,
    RELEASE_RUN_PATCH,
    RENEW_PATCH,
    Commands,
)

if TYPE_CHECKING:
    from ._run import GovernedRun

# A ledger call is bounded by its schedule-to-close timeout (``shared.call_timeout``) only;
# each attempt keeps its own deadline inside the activity (see activities/_ledger.py).
_CALL_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=0,  # unlimited: shared.call_timeout bounds the call
    non_retryable_error_types=[LEDGER_UNAVAILABLE],
)
_DEFAULT_RETRY_S = 0.5

LEDGER_UNAVAILABLE_LIMIT = "shared.ledger_unavailable"
"""The ``limit`` of the ``GovernanceKilled`` failure of a run whose ledger cannot answer."""


@dataclass
class _Lease:
    """A chunk of shared budget held by this run, reserved against locally."""

    ledger_key: str
    granted: dict[str, float]
    taken_at: float
    used: dict[str, float] = field(default_factory=dict)
    held: dict[str, float] = field(default_factory=dict)
    dispatches: int = 0
    retired: bool = False

    def fits(self, wanted: dict[str, float]) -> bool:
        return all(
            self.granted.get(r, 0.0) - self.used.get(r, 0.0) - self.held.get(r, 0.0) >= v - 1e-9
            for r, v in wanted.items()
        )

    def drained(self) -> bool:
        """No dispatch reserved against it is still running."""
        return not any(v > 1e-9 for v in self.held.values())


@dataclass
class Ticket:
    """What one dispatch holds in the shared scopes, to settle when it ends."""

    number: int
    """Unique within the run: tickets are tracked by it until they are settled."""
    reserved: dict[str, float] = field(default_factory=dict)
    """What the dispatch reserved (concurrency left out): its charge if its usage is never
    known (the governor never assumes money was not spent)."""
    lease: _Lease | None = None
    leased: dict[str, float] = field(default_factory=dict)
    ledger_key: str | None = None
    per_dispatch: tuple[str, ...] = ()
    """Resources reserved per dispatch (settled with their actual, concurrency with 0)."""
    actual: dict[str, float] | None = None
    """What the dispatch really used, once known."""


class SharedBudget:
    """Reservations of one run in the scopes shared across runs (tenant, agent, tool ...)."""

    def __init__(self, run: GovernedRun) -> None:
        self.run = run
        self.settings = run.policy.shared
        self.open: set[str] = set()
        self._limits: dict[str, list[SharedLimit]] = {}
        self._leases: dict[tuple[str, ...], _Lease] = {}
        self._retired: list[_Lease] = []
        self._lease_locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self._one_call = asyncio.Lock()
        """One ledger call of the run at a time: concurrent local activities resolve in
        completion order live but in schedule order on replay (temporalio 1.35), which
        would make the run's later commands differ."""
        self._tickets: dict[int, Ticket] = {}
        self._tickets_issued = 0
        self._unanswered = 0
        """Reservations asked for and not answered (cancelled meanwhile): the ledger may hold
        them, so the run's end releases whatever it still holds."""
        self._keeper: asyncio.Task[None] | None = None
        self._renewals = 0
        self.commands = Commands()
        """The run's command set (set by the workflow interceptor before the run starts)."""
        self._owner = f"{run.info.workflow_id}/{run.info.run_id}"
        self._calls = 0
        self._controls_since_ms = 0
        attribution = run.context.attribution
        self._control_scopes = [f"tenant:{attribution.tenant}", f"agent:{run.agent}"]

    def limits_for(self, tool: str | None, kind: Dispatch | None = None) -> list[SharedLimit]:
        """The shared limits of the run's start (``kind="run"``) or of a dispatch."""
        cache_key = f"{kind or ''}:{tool or ''}"
        if cache_key not in self._limits:
            attribution = self.run.context.attribution
            self._limits[cache_key] = shared_limits(
                self.run.policy,
                tenant=attribution.tenant,
                owner=attribution.owner,
                agent=self.run.agent,
                tool=tool,
                kind=kind,
            )
        return self._limits[cache_key]

    def applied(self) -> list[SharedLimit]:
        """Every shared limit seen so far, once each."""
        seen: dict[str, SharedLimit] = {}
        for limits in self._limits.values():
            for limit in limits:
                seen.setdefault(f"{limit.counter}|{limit.name}", limit)
        return list(seen.values())

    # -- ledger calls -------------------------------------------------------------------

    async def _call(self, update: str, request: dict[str, Any], update_id: str) -> Any:
        """One ledger update, or ``None`` when the ledger cannot answer and policy says open.

        Fail-closed (``shared.on_unavailable: closed``, the default) stops the run instead.
        A cancellation of the caller is passed on as it is (``asyncio.CancelledError``,
        see :meth:`_local_activity`): it is no outage.
        """
        try:
            return await self._call_once(update, request, update_id)
        except ActivityError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.type == MALFORMED_UPDATE:
                raise  # a bug of the governor's, not an outage: never hide it
            return self._unavailable(update, cause or error)

    def _unavailable(self, update: str, error: BaseException) -> None:
        """The ledger cannot answer: stop the run (closed) or go on uncounted (open)."""
        ledger = self.settings.ledger_id
        message = f"ledger {ledger} unavailable for {update}: {error}"
        if self.settings.on_unavailable == "open":
            temporalio.workflow.logger.warning(
                "governor: %s; not counted in shared scopes (shared.on_unavailable: open)",
                message,
            )
            return
        temporalio.workflow.logger.error("governor: %s; the run stops (fail-closed)", message)
        self.run.kill(
            self.run.details(
                limit=LEDGER_UNAVAILABLE_LIMIT,
                resource="ledger",
                scope=f"ledger:{ledger}",
                observed=0.0,
                ceiling=0.0,
                dispatch=update,
                evidence={"message": message},
            )
        )
        self.run.raise_if_halted()

    async def _call_once(self, update: str, request: dict[str, Any], update_id: str) -> Any:
        call = LedgerCall(
            ledger_id=self.settings.ledger_id,
            task_queue=self.settings.task_queue,
            update=update,
            request=request,
            update_id=update_id,
            continue_as_new_after=self.settings.continue_as_new_after,
            max_in_flight=self.settings.max_in_flight_updates,
        )
        if self.commands.since(ONE_LEDGER_CALL_PATCH):
            async with self._one_call:
                return await self._local_activity(call)
        return await self._local_activity(call)

    async def _local_activity(self, call: LedgerCall) -> Any:
        """Run the ledger's local activity; its failure has one shape, live or replayed.

        temporalio 1.35 raises a local activity's timeout (and some other failures) inside
        an ``ActivityError`` when the run is live, but bare when it is replayed from its
        markers: code catching one shape would take another path on replay. Every failure
        leaves here as an ``ActivityError`` with the failure as its cause, but a
        cancellation (the calling task was cancelled), which leaves as
        ``asyncio.CancelledError`` so that no handler of ledger failures swallows it.
        """
        try:
            return await temporalio.workflow.execute_local_activity(
                LEDGER_ACTIVITY,
                call.model_dump(mode="json"),
                schedule_to_close_timeout=timedelta(seconds=self.settings.call_timeout),
                retry_policy=_CALL_RETRY,
            )
        except ActivityError as error:
            if isinstance(error.cause, CancelledError):
                raise asyncio.CancelledError() from error  # the caller was cancelled
            raise
        except FailureError as error:
            if isinstance(error, CancelledError):
                raise asyncio.CancelledError() from error
            raise ActivityError(
                f"ledger call {call.update} failed",
                scheduled_event_id=0,
                started_event_id=0,
                identity="",
                activity_type=LEDGER_ACTIVITY,
                activity_id="",
                retry_state=None,
            ) from error

    async def _reserve(
        self,
        key: str,
        limits: list[SharedLimit],
        wanted: dict[str, float],
        dispatch: str,
        lease_of: int = 0,
    ) -> tuple[str | None, dict[str, float]]:
        """One reservation in the ledger, waiting or halting on refusal as the policy says.

        Returns:
            The ledger key and what was granted; no key when the ledger could not answer
            and the policy lets the dispatch go uncounted (``on_unavailable: open``).
        """
        waited = 0.0
        while True:
            self._calls += 1
            ledger_key = f"{self._owner}/{key}#{self._calls}"
            request: dict[str, Any] = {
                "key": ledger_key,
                "run": self._owner,
                "amounts": {r: v * max(lease_of, 1) for r, v in wanted.items()},
                "limits": [limit.model_dump(mode="json") for limit in limits],
                "ttl_s": self.settings.reservation_ttl,
            }
            if lease_of:
                request["minimum"] = wanted
                request["max_share"] = self.settings.lease_max_share
            if self.run.policy.control.check_kills_at_start:
                request["controls_for"] = self._control_scopes
                request["controls_since_ms"] = self._controls_since_ms
            self._unanswered += 1  # until the answer is in: the ledger may hold it already
            answer = await self._call("reserve", request, f"reserve:{ledger_key}")
            self._unanswered -= 1
            if answer is None:
                return None, {}
            result = ReserveResult.model_validate(answer)
            if result.granted:
                self.open.add(ledger_key)  # before a returned kill can halt the run
                self._keep_alive()
            if result.controls:
                self._apply_controls(result.controls)
            if result.granted:
                return ledger_key, result.amounts
            refusal = result.refusal
            assert refusal is not None
            left = self.settings.max_wait - waited
            full = refusal.limit == CAPACITY_LIMIT  # the ledger is busy, not the budget spent
            if full and left <= 0:
                self._unavailable("reserve", RuntimeError(f"ledger full: {refusal.resource}"))
                return None, {}
            if (full or self.settings.on_refusal == "wait") and left > 0:
                pause = max(0.05, min(left, refusal.retry_after_s or _DEFAULT_RETRY_S))
                self.run.note_wait(
                    key, refusal.limit, refusal.scope, refusal.observed, refusal.ceiling
                )
                await temporalio.workflow.sleep(pause)
                waited += pause
                continue
            self.run.halt_shared(
                key,
                Refusal(
                    limit=refusal.limit,
                    resource=refusal.resource,
                    scope=refusal.scope,
                    observed=refusal.observed,
                    ceiling=refusal.ceiling,
                    committed=refusal.committed,
                    overage=0.0,
                ),
                dispatch,
            )

    def _keep_alive(self) -> None:
        """Renew the run's open reservations every half TTL while it lives.

        Without it, a run (or an activity) that lives longer than ``reservation_ttl`` would
        see its reservations expire: charged in full, and its concurrency slots freed.
        """
        if (self._keeper is None or self._keeper.done()) and self.commands.since(RENEW_PATCH):
            self._keeper = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        """Renew while the run holds something; end when it holds nothing.

        A new grant starts it again, so an idle run is not woken for nothing.
        """
        ttl = self.settings.reservation_ttl
        while True:
            await temporalio.workflow.sleep(ttl / 2)
            if not self.open:
                return
            self._renewals += 1
            renewals = self._renewals
            request = {"run": self._owner, "ttl_s": ttl}
            try:
                await self._call_once("extend", request, f"extend:{self._owner}#{renewals}")
            except ActivityError as error:
                temporalio.workflow.logger.warning(
                    "governor: reservations not renewed (%s); they expire charged in full",
                    error.cause or error,
                )

    def _apply_controls(self, controls: dict[str, dict[str, Any]], halt: bool = True) -> None:
        """Apply fleet kills and resumes the ledger sent back with a reservation, once each."""
        for by_signal in controls.values():
            for stored in by_signal.values():
                self._controls_since_ms = max(self._controls_since_ms, stored["recorded_at_ms"])
        if self.run.control is not None:
            self.run.control.apply_stored(controls)
        if halt and self.run.breach is not None:
            self.run.raise_if_halted()

    async def _settle_key(self, ledger_key: str, actual: dict[str, float]) -> None:
        if ledger_key not in self.open:
            return
        await self._call("settle", {"key": ledger_key, "actual": actual}, f"settle:{ledger_key}")
        self.open.discard(ledger_key)  # only once the ledger has it: else release_all settles it

    # -- the run's interface --------------------------------------------------------------

    async def reserve(
        self, key: str, limits: list[SharedLimit], amounts: dict[str, float], dispatch: str
    ) -> Ticket:
        """Reserve a dispatch in every shared scope that applies, or halt/wait.

        Parallel dispatches of one run share its lease for the same scopes: the lease is
        taken (or renewed) by one of them at a time, and a lease that is replaced is
        retired, never forgotten: it is settled once its last dispatch has ended.

        Returns:
            The ticket to settle when the dispatch ends.
        """
        self._tickets_issued += 1
        ticket = Ticket(
            number=self._tickets_issued,
            reserved={r: float(v) for r, v in amounts.items() if r != "concurrency" and v},
        )
        self._tickets[ticket.number] = ticket
        per_dispatch = [lim for lim in limits if lim.resource == "concurrency"]
        leasable = [lim for lim in limits if lim.resource != "concurrency"]
        if leasable and not self.settings.leases:
            per_dispatch, leasable = limits, []
        try:
            if leasable:
                wanted: dict[str, float] = {
                    lim.resource: float(amounts.get(lim.resource, 0.0)) for lim in leasable
                }
                ticket.lease = await self._lease_for(key, leasable, wanted, dispatch)
                ticket.leased = wanted if ticket.lease is not None else {}
            if per_dispatch:
                wanted = {
                    str(lim.resource): float(amounts.get(lim.resource, 0.0)) for lim in per_dispatch
                }
                ticket.per_dispatch = tuple(wanted)
                ticket.ledger_key, _ = await self._reserve(key, per_dispatch, wanted, dispatch)
        except BaseException:
            await self.settle(ticket, {})  # nothing ran: give back what was taken
            raise
        return ticket

    async def _lease_for(
        self, key: str, leasable: list[SharedLimit], wanted: dict[str, float], dispatch: str
    ) -> _Lease | None:
        """Hold ``wanted`` against the run's lease of these scopes, renewing it if needed."""
        signature = tuple(sorted(f"{lim.counter}|{lim.ceiling:g}" for lim in leasable))
        if not self.commands.since(LEASE_LOCK_PATCH):  # a run of the previous release: no lock
            return await self._hold(signature, key, leasable, wanted, dispatch)
        lock = self._lease_locks.setdefault(signature, asyncio.Lock())
        async with lock:  # one renewal at a time: parallel dispatches never orphan a lease
            return await self._hold(signature, key, leasable, wanted, dispatch)

    async def _hold(
        self,
        signature: tuple[str, ...],
        key: str,
        leasable: list[SharedLimit],
        wanted: dict[str, float],
        dispatch: str,
    ) -> _Lease | None:
        """Hold ``wanted`` against the lease of ``signature``, taking a new one if needed."""
        lease = self._leases.get(signature)
        now = temporalio.workflow.now().timestamp()
        stale = lease is not None and now - lease.taken_at > self.settings.reservation_ttl / 2
        if lease is None or stale or not lease.fits(wanted):
            if lease is not None:
                await self._retire(signature, lease)
            ledger_key, granted = await self._reserve(
                key, leasable, wanted, dispatch, lease_of=self.settings.lease_dispatches
            )
            if ledger_key is None:
                return None  # uncounted: the ledger is unavailable and policy says open
            lease = _Lease(ledger_key=ledger_key, granted=granted, taken_at=now)
            self._leases[signature] = lease
        for resource, value in wanted.items():
            lease.held[resource] = lease.held.get(resource, 0.0) + value
        lease.dispatches += 1
        return lease

    def record(self, ticket: Ticket, actual: dict[str, float]) -> None:
        """Note what a finished dispatch used, without a ledger call (it cannot fail).

        The ledger learns it from :meth:`flush` or, at the latest, from :meth:`release_all`.
        """
        if ticket.actual is not None:
            return
        ticket.actual = {r: v for r, v in actual.items() if r != "concurrency"}
        lease = ticket.lease
        if lease is not None:
            for resource, value in ticket.leased.items():
                lease.held[resource] = lease.held.get(resource, 0.0) - value
                lease.used[resource] = lease.used.get(resource, 0.0) + actual.get(resource, 0.0)

    async def flush(self, ticket: Ticket) -> None:
        """Tell the ledger about a recorded dispatch now (frees its concurrency slot)."""
        assert ticket.actual is not None
        if ticket.ledger_key is not None:
            actual = {r: ticket.actual.get(r, 0.0) for r in ticket.per_dispatch}
            await self._settle_key(ticket.ledger_key, {r: v for r, v in actual.items() if v})
        lease = ticket.lease
        if lease is not None and lease.retired and lease.drained():
            await self._settle_key(lease.ledger_key, lease.used)
            if lease in self._retired:
                self._retired.remove(lease)
        self._tickets.pop(ticket.number, None)

    async def settle(self, ticket: Ticket, actual: dict[str, float]) -> None:
        """Commit a finished dispatch's usage in the shared scopes and release the rest."""
        self.record(ticket, actual)
        await self.flush(ticket)

    async def _retire(self, signature: tuple[str, ...], lease: _Lease) -> None:
        """Stop reserving against a lease; settle it once its dispatches have ended."""
        self._leases.pop(signature, None)
        lease.retired = True
        if lease.drained():
            await self._settle_key(lease.ledger_key, lease.used)
        else:
            self._retired.append(lease)

    async def fleet_controls(self) -> None:
        """Ask the ledger for kills and resumes of the run's tenant and agent it has not seen."""
        self._calls += 1
        request = {"scopes": self._control_scopes, "since_ms": self._controls_since_ms}
        found: dict[str, Any] = await self._call_once(
            "read_controls", request, f"read_controls:{self._owner}#{self._calls}"
        )
        if found:
            self._apply_controls(found, halt=False)

    async def baselines(self, keys: list[str]) -> dict[str, Any]:
        """Read spend baselines kept in the ledger (anomaly detection)."""
        result: dict[str, Any] = await self._call_once(
            "baseline", {"keys": keys}, f"baseline:{self._owner}"
        )
        return result

    async def observe(self, values: dict[str, float], alpha: float, min_samples: int) -> None:
        """Fold a finished run's spend into the ledger's baselines."""
        request = {"values": values, "alpha": alpha, "min_samples": min_samples}
        await self._call_once("observe", request, f"observe:{self._owner}")

    async def release_all(self) -> None:
        """Settle everything the run holds in one ledger call (the run ends).

        Every lease is committed with what its dispatches used; a dispatch whose outcome
        the run never learnt (cancelled before it reported, cut off by a halt) is charged
        what it reserved. Anything else of the run still open in the ledger is released.
        """
        if not self.commands.since(RELEASE_RUN_PATCH):
            await self._release_all_previous()
            return
        for ticket in list(self._tickets.values()):
            self.record(ticket, ticket.actual if ticket.actual is not None else ticket.reserved)
        settlements: dict[str, dict[str, float]] = {}
        for ticket in self._tickets.values():
            if ticket.ledger_key is not None and ticket.ledger_key in self.open:
                assert ticket.actual is not None
                settlements[ticket.ledger_key] = {
                    r: v for r in ticket.per_dispatch if (v := ticket.actual.get(r, 0.0))
                }
        for lease in [*self._leases.values(), *self._retired]:
            if lease.ledger_key in self.open:
                settlements[lease.ledger_key] = {r: v for r, v in lease.used.items() if v}
        self._tickets.clear()
        self._leases.clear()
        self._retired.clear()
        if self._keeper is not None:
            self._keeper.cancel()
        if not self.open and not self._unanswered:
            return
        items = sorted(settlements.items())
        chunks = [items[i : i + MAX_SETTLEMENTS] for i in range(0, len(items), MAX_SETTLEMENTS)]
        for number, chunk in enumerate(chunks or [[]]):
            request = {
                "run": self._owner,
                "settlements": dict(chunk),
                "release_rest": number == len(chunks or [[]]) - 1,
            }
            try:
                await self._call_once("release_run", request, f"release_run:{self._owner}:{number}")
            except ActivityError as error:
                self._unreachable_at_end(error)
                break
        self.open.clear()

    async def _release_all_previous(self) -> None:
        """The previous release's end of a run: one ``settle`` per lease, then the rest.

        Kept for runs that began under that release: their histories have one ``settle``
        call per lease before a ``release_run``. Each lease is settled with what its
        dispatches used (a dispatch whose outcome is unknown with what it reserved);
        ``release_run`` then releases what else the run holds.
        """
        for ticket in list(self._tickets.values()):
            self.record(ticket, ticket.actual if ticket.actual is not None else ticket.reserved)
        self._tickets.clear()
        for signature, lease in list(self._leases.items()):
            await self._retire(signature, lease)
        for lease in self._retired:
            await self._settle_key(lease.ledger_key, lease.used)
        self._retired.clear()
        if self._keeper is not None:
            self._keeper.cancel()
        if not self.open:
            return
        self.open.clear()
        request = {"run": self._owner, "settlements": {}, "release_rest": True}
        try:
            await self._call_once("release_run", request, f"release_run:{self._owner}")
        except ActivityError as error:
            self._unreachable_at_end(error)

    def _unreachable_at_end(self, error: ActivityError) -> None:
        """Log a run end the ledger did not hear of.

        The agent's work is done; the ledger charges what stays open in full when it
        expires (``reservation_ttl``), and corrects it if settled later.
        """
        temporalio.workflow.logger.error(
            "governor: ledger %s unavailable at run end (%s): open reservations "
            "expire charged in full",
            self.settings.ledger_id,
            error.cause or error,
        )
