"""A governed run's side of the shared ledger: reserve, settle and release across runs.

Two ways to reserve in shared scopes:

- **per dispatch**: one ``reserve`` update before the dispatch and one ``settle`` after;
  always used for concurrency limits (a slot is held for exactly one dispatch);
- **leases** (policy ``shared.leases``, on by default): the run reserves a chunk of the
  scopes' budget once (``shared.lease_dispatches`` times the dispatch's estimate, never
  more than a fair share of what is left) and reserves against it locally, with no round
  trip; the lease is settled with what was really used when it runs out, ages, or the run
  ends. The scopes' ceilings still hold exactly, because a lease is a reservation.

What the run holds, whether a lease fits, what to settle and what a refusal leads to are
decided in :mod:`temporal_governor.core.leases` (pure); this module turns the answers into
ledger calls: typed requests (:class:`~temporal_governor.ledger._workflow.LedgerUpdate`)
through the ledger's local activity, typed replies back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import temporalio.workflow
from pydantic import BaseModel, ValidationError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

from ..core.accounting import Refusal
from ..core.book import SHARDS_LIMIT, LedgerRefusal, StoredControls
from ..core.detectors import BaselineState
from ..core.leases import (
    Halt,
    Holdings,
    Lease,
    Misconfigured,
    Signature,
    Unavailable,
    after_refusal,
    chunks,
    poolable,
    reservation,
    signature_of,
    split,
    wanted_of,
)
from ..core.leases import Ticket as LedgerTicket
from ..core.pools import POOL_LIMIT
from ..core.scopes import SharedLimit, StartKind, shared_limits
from ..core.shards import ShardMap
from ..errors import BudgetExceeded, GovernanceKilled
from ..ledger._activity import LedgerCall
from ..ledger._workflow import (
    BASELINE,
    EXTEND,
    LEDGER_ACTIVITY,
    LEDGER_UNAVAILABLE,
    MALFORMED_UPDATE,
    OBSERVE,
    READ_CONTROLS,
    RELEASE_RUN,
    RESERVE,
    SETTLE,
    LedgerUpdate,
)
from ..policy import PriorityClass
from ._ports import SharedHost
from ._versions import (
    LEASE_LOCK_PATCH,
    ONE_LEDGER_CALL_PATCH,
    RELEASE_CALLED_PATCH,
    RELEASE_RUN_PATCH,
    RELEASE_WAITERS_PATCH,
    RENEW_PATCH,
    Commands,
)

# A ledger call is bounded by its schedule-to-close timeout (``shared.call_timeout``) only;
# each attempt keeps its own deadline inside the activity (see ledger/_activity.py).
_CALL_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=0,  # unlimited: shared.call_timeout bounds the call
    non_retryable_error_types=[LEDGER_UNAVAILABLE],
)

LEDGER_UNAVAILABLE_LIMIT = "shared.ledger_unavailable"
"""The ``limit`` of the ``GovernanceKilled`` failure of a run whose ledger cannot answer."""

POOL_DRY_S = 2.0
"""After a tenant shard's pool was found dry and the run stopped waiting for it, the run
reserves its fleet-wide parts on the root directly for this long."""

POOL_WAIT_S = 1.0
"""Longest a dispatch waits in all for its shard to fill a dry pool (as the shard says:
not when the root refused its last ask) before it reserves on the root instead."""


class PoolDry(Exception):
    """The tenant shard's pool could not cover the fleet-wide part: nothing is held.

    Args:
        retry_after_s: How long the shard says to wait for a pool; ``None``: do not.
    """

    def __init__(self, retry_after_s: float | None) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


_Request = TypeVar("_Request", bound=BaseModel)
_Reply = TypeVar("_Reply")


class LedgerBudget:
    """Reservations of one run in the shared scopes one ledger keeps.

    What the run holds there and every decision about it is
    :class:`~..core.leases.Holdings`; this class issues the ledger calls it leads to. A
    fleet with one ledger (``shared.shards: 1``) has one of these per run; a sharded fleet
    one per ledger the run reserves in (see :class:`SharedBudget`).
    """

    def __init__(
        self,
        run: SharedHost,
        ledger_id: str,
        control_scopes: list[str],
        one_call: asyncio.Lock,
        commands: Commands,
        shards: int | None = None,
    ) -> None:
        self.run = run
        self.ledger_id = ledger_id
        self.settings = run.policy.shared
        self.holdings = Holdings()
        self._lease_locks: dict[Signature, asyncio.Lock] = {}
        self._one_call = one_call
        """One ledger call of the run at a time (shared by every ledger of the run):
        concurrent local activities resolve in completion order live but in schedule
        order on replay (temporalio 1.35), which would make the run's later commands
        differ."""
        self._keeper: asyncio.Task[None] | None = None
        self._renewals = 0
        self.commands = commands
        """The run's command set."""
        self._owner = f"{run.info.workflow_id}/{run.info.run_id}"
        self._calls = 0
        self._reserved = False
        """Whether the run asked this ledger for a reservation (not only registered)."""
        self._controls_since_ms = 0
        self._control_scopes = control_scopes
        """The run's control scopes this ledger keeps (piggybacked on its reservations)."""
        self.shards = shards
        """The fleet's shard count, sent with every reservation when above 1 (``None``
        otherwise: the requests of an unsharded fleet are those of earlier releases)."""

    @property
    def open(self) -> set[str]:
        """Ledger keys of the run's reservations not settled yet."""
        return self.holdings.open

    # -- ledger calls -------------------------------------------------------------------

    async def _call(
        self, update: LedgerUpdate[_Request, _Reply], request: _Request, update_id: str
    ) -> _Reply | None:
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
            self._unavailable(update.name, cause or error)
            return None

    def _unavailable(self, update: str, error: BaseException) -> None:
        """The ledger cannot answer: stop the run (closed) or go on uncounted (open)."""
        ledger = self.ledger_id
        message = f"ledger {ledger} unavailable for {update}: {error}"
        if self.settings.on_unavailable == "open":
            temporalio.workflow.logger.warning(
                "governor: %s; not counted in shared scopes (shared.on_unavailable: open)",
                message,
            )
            return
        temporalio.workflow.logger.error("governor: %s; the run stops (fail-closed)", message)
        details = self.run.details(
            limit=LEDGER_UNAVAILABLE_LIMIT,
            resource="ledger",
            scope=f"ledger:{ledger}",
            observed=0.0,
            ceiling=0.0,
            dispatch=update,
            evidence={"message": message},
        )
        self.run.stop(GovernanceKilled(details))  # a run halted before stays halted as it was
        self.run.raise_if_halted()

    async def _call_once(
        self, update: LedgerUpdate[_Request, _Reply], request: _Request, update_id: str
    ) -> _Reply:
        """One ledger update, its reply typed (a malformed reply fails the workflow task)."""
        call = LedgerCall(
            ledger_id=self.ledger_id,
            task_queue=self.settings.task_queue,
            update=update.name,
            request=request,
            update_id=update_id,
            continue_as_new_after=self.settings.continue_as_new_after,
            max_in_flight=self.settings.max_in_flight_updates,
            batch=self.settings.batch_updates,
        )
        if self.commands.since(ONE_LEDGER_CALL_PATCH):
            async with self._one_call:
                return update.reply_of(await self._local_activity(call))
        return update.reply_of(await self._local_activity(call))

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
        priority: PriorityClass | None = None,
        upstream: str | None = None,
    ) -> tuple[str | None, dict[str, float]]:
        """One reservation in the ledger, waiting or halting on refusal as the policy says.

        With ``upstream`` (the root's id) the shard grants the fleet-wide limits out of
        its pool; a dry pool raises :class:`PoolDry` (nothing held, no wait, no halt).

        With ``on_refusal: wait`` the request carries the dispatch's priority class, its
        tenant and how long it has waited, so that the ledger queues it fairly
        (:mod:`~..core.waiters`); a run that halts on refusal sends what earlier
        releases sent.

        Returns:
            The ledger key and what was granted; no key when the ledger could not answer
            and the policy lets the dispatch go uncounted (``on_unavailable: open``).
        """
        waited = 0.0
        controls = self.run.policy.control.check_kills_at_start
        waits = self.settings.on_refusal == "wait"
        tenant = self.run.context.attribution.tenant
        while True:
            self._calls += 1
            ledger_key = f"{self._owner}/{key}#{self._calls}"
            try:
                request = reservation(
                    ledger_key,
                    self._owner,
                    limits,
                    wanted,
                    self.settings.reservation_ttl,
                    lease_of=lease_of,
                    max_share=self.settings.lease_max_share,
                    controls_for=self._control_scopes if controls else None,
                    controls_since_ms=self._controls_since_ms,
                    priority=priority if waits else None,
                    waits=waits,
                    tenant=tenant if waits else None,
                    waited_s=waited,
                    aging_s=self.settings.priority_aging_s if waits else None,
                    shards=self.shards,
                    upstream=upstream,
                )
            except ValidationError as error:
                raise RESERVE.refused(error) from None
            self._reserved = True
            self.holdings.unanswered += 1  # until the answer is in: the ledger may hold it
            result = await self._call(RESERVE, request, f"reserve:{ledger_key}")
            self.holdings.unanswered -= 1
            if result is None:
                return None, {}
            if result.granted:
                self.holdings.granted(ledger_key)  # before a returned kill can halt the run
                self._keep_alive()
            if result.controls:
                self._apply_controls(result.controls)
            if result.granted:
                return ledger_key, result.amounts
            refusal = result.refusal
            assert refusal is not None
            if upstream is not None and refusal.limit == POOL_LIMIT:
                raise PoolDry(refusal.retry_after_s)
            if waits:
                self.holdings.queued = True  # the ledger may keep the run as a waiter
            step = after_refusal(refusal, waited, self.settings.max_wait, self.settings.on_refusal)
            if isinstance(step, Misconfigured):
                self._misconfigured(refusal, dispatch, key)
            if isinstance(step, Unavailable):
                self._unavailable("reserve", RuntimeError(f"ledger full: {refusal.resource}"))
                return None, {}
            if isinstance(step, Halt):
                refused = Refusal(
                    limit=refusal.limit,
                    resource=refusal.resource,
                    scope=refusal.scope,
                    observed=refusal.observed,
                    ceiling=refusal.ceiling,
                    committed=refusal.committed,
                    overage=0.0,
                )
                self.run.release(key)  # the run's own reservation of the dispatch
                raise self.run.stop(
                    BudgetExceeded(self.run.refused(refused, dispatch)), refused=key
                )
            self.run.note_wait(key, refusal.limit, refusal.scope, refusal.observed, refusal.ceiling)
            await temporalio.workflow.sleep(step.pause)
            waited += step.pause

    async def register(self, key: str | None, dispatch: str) -> None:
        """Tell this ledger (the root) the fleet's shard count, and read the run's controls.

        A reservation of nothing that carries ``shards``: the ledger records the count or
        refuses it (:data:`~..core.book.SHARDS_LIMIT`), and holds nothing. Refused, the
        run stops (:meth:`_misconfigured`); unanswered, the policy's ``on_unavailable``
        decides as for any ledger call.

        Args:
            key: The dispatch being reserved when the run registers, if any: its own
                reservation in the run is released when the count is refused.
            dispatch: What the run was doing (for the halt's details).
        """
        self._calls += 1
        ledger_key = f"{self._owner}/shards#{self._calls}"
        controls = self.run.policy.control.check_kills_at_start
        request = reservation(
            ledger_key,
            self._owner,
            [],
            {},
            self.settings.reservation_ttl,
            controls_for=self._control_scopes if controls else None,
            controls_since_ms=self._controls_since_ms,
            shards=self.shards,
        )
        result = await self._call(RESERVE, request, f"reserve:{ledger_key}")
        if result is None:
            return
        if result.controls:
            self._apply_controls(result.controls)
        if result.refusal is not None and result.refusal.limit == SHARDS_LIMIT:
            self._misconfigured(result.refusal, dispatch, key)

    def _misconfigured(self, refusal: LedgerRefusal, dispatch: str, key: str | None) -> NoReturn:
        """The ledger refused the fleet's shard count: stop the run, fail-closed always.

        A configuration error must never let a run go on uncounted, whatever
        ``shared.on_unavailable`` says; asking again would never change the answer.
        """
        recorded, asked = int(refusal.ceiling), int(refusal.observed)
        message = (
            f"ledger {self.ledger_id} serves a fleet with shared.shards: {recorded}, but this "
            f"run's policy says shared.shards: {asked}. A running fleet cannot change its "
            "shard count: its tenant budgets would start afresh on other shard ledgers (or be "
            f"left on the old ones). Set shared.shards back to {recorded}, or drain the fleet "
            "(no governed run left) and give the new count a new shared.ledger_id"
        )
        temporalio.workflow.logger.error("governor: %s; the run stops", message)
        details = self.run.details(
            limit=SHARDS_LIMIT,
            resource="shards",
            scope=f"ledger:{self.ledger_id}",
            observed=float(asked),
            ceiling=float(recorded),
            dispatch=dispatch,
            evidence={"message": message, "recorded_shards": recorded, "policy_shards": asked},
        )
        if key is not None:
            self.run.release(key)  # the run's own reservation of the dispatch
        raise self.run.stop(GovernanceKilled(details), refused=key)

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
            if not self.holdings.open:
                return
            self._renewals += 1
            renewals = self._renewals
            request = EXTEND.request_of({"run": self._owner, "ttl_s": ttl})
            try:
                await self._call_once(EXTEND, request, f"extend:{self._owner}#{renewals}")
            except ActivityError as error:
                temporalio.workflow.logger.warning(
                    "governor: reservations not renewed (%s); they expire charged in full",
                    error.cause or error,
                )

    def _apply_controls(self, controls: StoredControls, halt: bool = True) -> None:
        """Apply fleet kills and resumes the ledger sent back with a reservation, once each."""
        for by_signal in controls.values():
            for stored in by_signal.values():
                self._controls_since_ms = max(self._controls_since_ms, stored.recorded_at_ms)
        if self.run.control is not None:
            self.run.control.apply_stored(
                {
                    scope: {signal: stored.model_dump(mode="json") for signal, stored in by.items()}
                    for scope, by in controls.items()
                }
            )
        if halt and self.run.breach is not None:
            self.run.raise_if_halted()

    async def _settle_key(self, ledger_key: str, actual: dict[str, float]) -> None:
        if ledger_key not in self.holdings.open:
            return
        request = SETTLE.request_of({"key": ledger_key, "actual": actual})
        await self._call(SETTLE, request, f"settle:{ledger_key}")
        self.holdings.settled(ledger_key)  # only once the ledger has it: else release_all

    # -- the run's interface --------------------------------------------------------------

    async def reserve(
        self,
        key: str,
        limits: list[SharedLimit],
        amounts: dict[str, float],
        dispatch: str,
        priority: PriorityClass | None = None,
        upstream: str | None = None,
    ) -> LedgerTicket:
        """Reserve a dispatch in every shared scope that applies, or halt/wait.

        With ``upstream`` the fleet-wide limits among ``limits`` are drawn from the
        shard's pool of that root; :class:`PoolDry` when it cannot cover them.

        Parallel dispatches of one run share its lease for the same scopes: the lease is
        taken (or renewed) by one of them at a time, and a lease that is replaced is
        retired, never forgotten: it is settled once its last dispatch has ended.

        Returns:
            The ticket to settle when the dispatch ends.
        """
        ticket = self.holdings.issue(amounts)
        per_dispatch, leasable = split(limits, self.settings.leases)
        try:
            if leasable:
                wanted = wanted_of(leasable, amounts)
                ticket.lease = await self._lease_for(
                    key, leasable, wanted, dispatch, priority, upstream
                )
                ticket.leased = wanted if ticket.lease is not None else {}
            if per_dispatch:
                wanted = wanted_of(per_dispatch, amounts)
                ticket.per_dispatch = tuple(wanted)
                ticket.ledger_key, _ = await self._reserve(
                    key, per_dispatch, wanted, dispatch, priority=priority, upstream=upstream
                )
        except BaseException:
            await self.settle(ticket, {})  # nothing ran: give back what was taken
            raise
        return ticket

    async def _lease_for(
        self,
        key: str,
        leasable: list[SharedLimit],
        wanted: dict[str, float],
        dispatch: str,
        priority: PriorityClass | None,
        upstream: str | None = None,
    ) -> Lease | None:
        """Hold ``wanted`` against the run's lease of these scopes, renewing it if needed."""
        signature = signature_of(leasable)
        if not self.commands.since(LEASE_LOCK_PATCH):  # a run of the previous release: no lock
            return await self._hold(signature, key, leasable, wanted, dispatch, priority)
        lock = self._lease_locks.setdefault(signature, asyncio.Lock())
        async with lock:  # one renewal at a time: parallel dispatches never orphan a lease
            return await self._hold(signature, key, leasable, wanted, dispatch, priority, upstream)

    async def _hold(
        self,
        signature: Signature,
        key: str,
        leasable: list[SharedLimit],
        wanted: dict[str, float],
        dispatch: str,
        priority: PriorityClass | None,
        upstream: str | None = None,
    ) -> Lease | None:
        """Hold ``wanted`` against the lease of ``signature``, taking a new one if needed."""
        now = temporalio.workflow.now().timestamp()
        max_age = self.settings.reservation_ttl / 2
        lease = self.holdings.fitting(signature, wanted, now, max_age)
        if lease is None:
            await self._retire(signature)
            ledger_key, granted = await self._reserve(
                key,
                leasable,
                wanted,
                dispatch,
                lease_of=self.settings.lease_dispatches,
                priority=priority,
                upstream=upstream,
            )
            if ledger_key is None:
                return None  # uncounted: the ledger is unavailable and policy says open
            lease = self.holdings.take(signature, ledger_key, granted, now)
        lease.hold(wanted)
        return lease

    async def retire(self, signature: Signature) -> None:
        """Retire the run's lease of ``signature``, if any, under its lock (see :meth:`_retire`)."""
        lock = self._lease_locks.setdefault(signature, asyncio.Lock())
        async with lock:
            await self._retire(signature)

    async def _retire(self, signature: Signature) -> None:
        """Stop reserving against a lease; settle it once its dispatches have ended."""
        drained = self.holdings.retire(signature)
        if drained is not None:
            await self._settle_key(drained.ledger_key, drained.used)

    def record(self, ticket: LedgerTicket, actual: dict[str, float]) -> None:
        """Note what a finished dispatch used, without a ledger call (it cannot fail).

        The ledger learns it from :meth:`flush` or, at the latest, from :meth:`release_all`.
        """
        self.holdings.record(ticket, actual)

    async def flush(self, ticket: LedgerTicket) -> None:
        """Tell the ledger about a recorded dispatch now (frees its concurrency slot)."""
        assert ticket.actual is not None
        own = self.holdings.dispatch_settlement(ticket)
        if own is not None:
            await self._settle_key(*own)
        lease = self.holdings.lease_done(ticket)
        if lease is not None:
            await self._settle_key(lease.ledger_key, lease.used)
            self.holdings.forget(lease)
        self.holdings.close(ticket)

    async def settle(self, ticket: LedgerTicket, actual: dict[str, float]) -> None:
        """Commit a finished dispatch's usage in the shared scopes and release the rest."""
        self.record(ticket, actual)
        await self.flush(ticket)

    async def fleet_controls(self) -> None:
        """Ask the ledger for the kills and resumes of the run's scopes it has not seen."""
        self._calls += 1
        request = READ_CONTROLS.request_of(
            {"scopes": self._control_scopes, "since_ms": self._controls_since_ms}
        )
        found = await self._call_once(
            READ_CONTROLS, request, f"read_controls:{self._owner}#{self._calls}"
        )
        if found:
            self._apply_controls(found, halt=False)

    async def baselines(self, keys: list[str]) -> dict[str, BaselineState]:
        """Read spend baselines kept in the ledger (anomaly detection)."""
        request = BASELINE.request_of({"keys": keys})
        return await self._call_once(BASELINE, request, f"baseline:{self._owner}")

    async def observe(self, values: dict[str, float], alpha: float, min_samples: int) -> None:
        """Fold a finished run's spend into the ledger's baselines."""
        request = OBSERVE.request_of({"values": values, "alpha": alpha, "min_samples": min_samples})
        await self._call_once(OBSERVE, request, f"observe:{self._owner}")

    async def release_all(self) -> None:
        """Settle everything the run holds in one ledger call (the run ends).

        Every lease is committed with what its dispatches used; a dispatch whose outcome
        the run never learnt (cancelled before it reported, cut off by a halt) is charged
        what it reserved. Anything else of the run still open in the ledger is released.
        """
        if not self.commands.since(RELEASE_RUN_PATCH):
            await self._release_all_previous()
            return
        settlements = self.holdings.end()
        if self._keeper is not None:
            self._keeper.cancel()
        if not self.holdings.holds_anything():
            # an attempt of the run whose answer was lost may hold what its re-execution
            # never asked for again (RELEASE_CALLED_PATCH)
            if not (self._reserved and self.commands.since(RELEASE_CALLED_PATCH)):
                return
        elif (
            not self.holdings.open
            and not self.holdings.unanswered
            and not self.commands.since(RELEASE_WAITERS_PATCH)
        ):
            return  # only waited, in a run recorded before its waiters were released
        cut = chunks(settlements)
        for number, chunk in enumerate(cut):
            request = RELEASE_RUN.request_of(
                {"run": self._owner, "settlements": chunk, "release_rest": number == len(cut) - 1}
            )
            try:
                await self._call_once(RELEASE_RUN, request, f"release_run:{self._owner}:{number}")
            except ActivityError as error:
                self._unreachable_at_end(error)
                break
        self.holdings.open.clear()

    async def _release_all_previous(self) -> None:
        """The previous release's end of a run: one ``settle`` per lease, then the rest.

        Kept for runs that began under that release: their histories have one ``settle``
        call per lease before a ``release_run``. Each lease is settled with what its
        dispatches used (a dispatch whose outcome is unknown with what it reserved);
        ``release_run`` then releases what else the run holds.
        """
        holdings = self.holdings
        holdings.record_all()
        holdings.tickets.clear()
        for signature in list(holdings.leases):
            await self._retire(signature)
        for lease in holdings.retired:
            await self._settle_key(lease.ledger_key, lease.used)
        holdings.retired.clear()
        if self._keeper is not None:
            self._keeper.cancel()
        if not holdings.open:
            return
        holdings.open.clear()
        request = RELEASE_RUN.request_of(
            {"run": self._owner, "settlements": {}, "release_rest": True}
        )
        try:
            await self._call_once(RELEASE_RUN, request, f"release_run:{self._owner}")
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
            self.ledger_id,
            error.cause or error,
        )


@dataclass
class Ticket:
    """What one dispatch holds in the shared scopes: a part per ledger it reserved in."""

    parts: list[tuple[LedgerBudget, LedgerTicket]] = field(default_factory=list)


class SharedBudget:
    """Reservations of one run in the scopes shared across runs (tenant, agent, tool ...).

    With one ledger (``shared.shards: 1``) every reservation goes to it. With shards, a
    dispatch's tenant scopes are reserved on the tenant's shard and its fleet-wide scopes
    on the root ledger (:class:`~..core.shards.ShardMap`): two reservations, the shard's
    first, and the first is given back when the second is refused. Each ledger's part is
    a :class:`LedgerBudget`; the run makes one ledger call at a time across all of them.

    A run of a sharded fleet first **registers** with the root ledger, once, before its
    first ledger call: a reservation of nothing that carries the fleet's shard count (and
    reads the run's stored controls), so that the root, which records the count, refuses
    a fleet whose ``shared.shards`` changed while its budgets are kept, even when the run
    has only tenant limits and would never reach the root otherwise. This adds one root
    update per run start in sharded fleets only (unsharded runs send what they did). A
    refused count stops the run with ``GovernanceKilled`` (limit ``shared.shards``),
    whatever ``shared.on_unavailable`` says.
    """

    def __init__(self, run: SharedHost) -> None:
        self.run = run
        self.settings = run.policy.shared
        self.shards = ShardMap(self.settings.ledger_id, self.settings.shards)
        self._limits: dict[str, list[SharedLimit]] = {}
        self._one_call = asyncio.Lock()
        self._commands = Commands()
        self._parts: dict[str, LedgerBudget] = {}
        self._registered = not self.shards.sharded
        """Whether the run has told the root the fleet's shard count (or need not)."""
        self._dry_until: dict[str, float] = {}
        """Tenant shard -> until when its pool is taken as dry (workflow time)."""
        self._fallback: dict[tuple[str, Signature], None] = {}
        """Leases the run took on the root and its shard while a pool was dry: retired
        once the pool grants again, so that they hold nothing for the rest of the run."""
        attribution = run.context.attribution
        self._control_scopes = [f"tenant:{attribution.tenant}", f"agent:{run.agent}"]
        """Every ledger the run reserves in is asked for both: a sharded fleet keeps each
        control on the ledger of its scope and on the root, and an agent's on every shard
        (``ControlClient``), so a run sees a kill at its next reservation wherever it
        reserves."""

    @property
    def commands(self) -> Commands:
        """The run's command set (set by the workflow interceptor before the run starts)."""
        return self._commands

    @commands.setter
    def commands(self, commands: Commands) -> None:
        self._commands = commands
        for part in self._parts.values():
            part.commands = commands

    def _part(self, ledger_id: str) -> LedgerBudget:
        part = self._parts.get(ledger_id)
        if part is None:
            part = self._parts[ledger_id] = LedgerBudget(
                self.run,
                ledger_id,
                self._control_scopes,
                self._one_call,
                self._commands,
                self.shards.shards if self.shards.sharded else None,
            )
        return part

    async def _register(self, key: str | None = None, dispatch: str = "run start") -> None:
        """Register the run with the root ledger before its first ledger call, once."""
        if self._registered:
            return
        self._registered = True  # once, answered or not: the shards check counts too
        await self._part(self.shards.root).register(key, dispatch)

    def _in_order(self) -> list[LedgerBudget]:
        """The run's ledger parts, tenant shards first, the root last."""
        return [self._parts[i] for i in self.shards.all_ledgers() if i in self._parts]

    @property
    def open(self) -> set[tuple[str, str]]:
        """The run's reservations not settled yet: ``(ledger id, key)`` on every ledger."""
        return {(part.ledger_id, key) for part in self._parts.values() for key in part.open}

    def limits_for(self, tool: str | None, kind: StartKind | None = None) -> list[SharedLimit]:
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

    async def reserve(
        self,
        key: str,
        limits: list[SharedLimit],
        amounts: dict[str, float],
        dispatch: str,
        *,
        priority: PriorityClass | None = None,
        pool_waited: float = 0.0,
    ) -> Ticket:
        """Reserve a dispatch in every shared scope that applies, or halt/wait.

        ``priority`` is the dispatch's priority class: with ``on_refusal: wait`` the
        ledger queues it by class, with aging (:mod:`~..core.waiters`).

        With hierarchical leases, a dispatch whose shard's pool is dry waits for it as the
        shard says (up to :data:`POOL_WAIT_S` in all, ``pool_waited`` so far), then
        reserves its fleet-wide part on the root.

        Returns:
            The ticket to settle when the dispatch ends.
        """
        if limits:
            await self._register(key, dispatch)
        tenant = self.run.context.attribution.tenant
        groups = self.shards.split(limits, tenant) or {self.shards.root: []}
        pooled = self._pooled(groups, tenant)
        if pooled is not None:
            groups = pooled
        ticket = Ticket()
        try:
            for ledger_id, part_limits in groups.items():
                part = self._part(ledger_id)
                upstream = self.shards.root if pooled and ledger_id != self.shards.root else None
                held = await part.reserve(key, part_limits, amounts, dispatch, priority, upstream)
                ticket.parts.append((part, held))
        except PoolDry as dry:
            for part, held in ticket.parts:  # nothing ran: give back what was taken
                await part.settle(held, {})
            pause = dry.retry_after_s
            if pause is not None and pool_waited + pause <= POOL_WAIT_S:
                await temporalio.workflow.sleep(pause)  # the shard is filling its pool
                waited = pool_waited + pause
            else:
                shard = next(iter(groups))
                self._dry_until[shard] = temporalio.workflow.now().timestamp() + POOL_DRY_S
                waited = pool_waited
            return await self.reserve(
                key, limits, amounts, dispatch, priority=priority, pool_waited=waited
            )
        except BaseException:
            for part, held in ticket.parts:  # nothing ran: give back what was taken
                await part.settle(held, {})
            raise
        if pooled is not None:
            await self._retire_fallback()
        elif self._pooled(groups, tenant, dry_too=True) is not None:  # a pool was dry
            for ledger_id, part_limits in groups.items():
                _, leasable = split(part_limits, self.settings.leases)
                if leasable:
                    self._fallback[ledger_id, signature_of(leasable)] = None
        return ticket

    async def _retire_fallback(self) -> None:
        """The pool grants again: retire the leases taken while it was dry."""
        while self._fallback:  # in the order taken (a dict): the same calls on replay
            ledger_id, signature = next(iter(self._fallback))
            del self._fallback[ledger_id, signature]
            await self._part(ledger_id).retire(signature)

    def _pooled(
        self, groups: dict[str, list[SharedLimit]], tenant: str | None, dry_too: bool = False
    ) -> dict[str, list[SharedLimit]] | None:
        """The groups with the fleet-wide limits a pool may grant moved to the tenant's shard.

        ``None`` when hierarchical leases are off, the dispatch has no such limit or no
        tenant, or (unless ``dry_too``) the shard's pool was found dry a moment ago.
        """
        if not self.settings.hierarchical_leases or not self.shards.sharded or tenant is None:
            return None
        root = self.shards.root
        drawn = [limit for limit in groups.get(root, []) if poolable(limit)]
        shard = self.shards.ledger_of_tenant(tenant)
        now = temporalio.workflow.now().timestamp()
        if not drawn or (not dry_too and self._dry_until.get(shard, 0.0) > now):
            return None
        rest = [limit for limit in groups[root] if not poolable(limit)]
        pooled = {shard: groups.get(shard, []) + drawn}
        if rest:
            pooled[root] = rest
        return pooled

    def record(self, ticket: Ticket, actual: dict[str, float]) -> None:
        """Note what a finished dispatch used, without a ledger call (it cannot fail)."""
        for part, held in ticket.parts:
            part.record(held, actual)

    async def flush(self, ticket: Ticket) -> None:
        """Tell the ledgers about a recorded dispatch now (frees its concurrency slots)."""
        for part, held in ticket.parts:
            await part.flush(held)

    async def settle(self, ticket: Ticket, actual: dict[str, float]) -> None:
        """Commit a finished dispatch's usage in the shared scopes and release the rest."""
        self.record(ticket, actual)
        await self.flush(ticket)

    async def fleet_controls(self) -> None:
        """Ask for the kills and resumes of the run's tenant and agent not seen yet.

        Each is asked of the ledger that always keeps it: the tenant's of its shard, the
        agent type's of the root (one ledger when not sharded).
        """
        await self._register()
        for ledger_id in self.shards.split_scopes(self._control_scopes):
            await self._part(ledger_id).fleet_controls()

    async def baselines(self, keys: list[str]) -> dict[str, BaselineState]:
        """Read spend baselines kept in the root ledger (anomaly detection)."""
        await self._register()
        return await self._part(self.shards.root).baselines(keys)

    async def observe(self, values: dict[str, float], alpha: float, min_samples: int) -> None:
        """Fold a finished run's spend into the root ledger's baselines.

        No registration here: a run that never called a ledger before its end touched no
        tenant budget, and a completed run is not stopped for its fleet's shard count.
        """
        await self._part(self.shards.root).observe(values, alpha, min_samples)

    async def release_all(self) -> None:
        """Settle everything the run holds, ledger by ledger (the run ends)."""
        for part in self._in_order():
            await part.release_all()


__all__ = ["LEDGER_UNAVAILABLE_LIMIT", "LedgerBudget", "SharedBudget", "Ticket"]
