"""The lease simulation's engine: runs of a fleet against one ledger book, event by event.

Each step is the one ``interceptors/_shared.py`` (``LedgerBudget``) takes, through the
same pure functions; the methods below name the glue method they stand for. The ledger
calls are made on a :class:`~temporal_governor.core.book.LedgerBook` directly, with the
requests the glue would send.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from dataclasses import dataclass, field
from itertools import accumulate

from ..core.book import (
    CAPACITY_LIMIT,
    ExtendRequest,
    LedgerBook,
    LedgerRefusal,
    ReleaseRunRequest,
    SettleRequest,
)
from ..core.leases import (
    Holdings,
    Lease,
    Signature,
    Ticket,
    chunks,
    reservation,
    signature_of,
    split,
    wanted_of,
)
from ..core.scopes import SharedLimit
from ._lease_figures import GLOBAL, RESOURCE, Scenario, ScopeFigures, SimulationResult, slack

_START, _DONE, _RENEW = 0, 1, 2
"""Kinds of event: a run starts, a dispatch ends, a run's renewal timer fires."""

_RECOUNT_EVERY = 256
"""Global refusals between two full recounts of the running global stranded amount."""


@dataclass(eq=False)
class _Run:
    """One governed run: its tenant, what it has still to dispatch, and its holdings."""

    number: int
    tenant: int
    owner: str
    """Its ``workflow_id/run_id`` in the ledger."""
    remaining: int
    """Dispatches it has still to make."""
    parallel: int
    """Dispatches it makes at a time."""
    leasable: list[SharedLimit]
    signature: Signature
    holdings: Holdings = field(default_factory=Holdings)
    in_flight: int = 0
    ended: bool = False
    renewing: bool = False
    """Its renewal timer runs (``LedgerBudget._keep_alive``)."""
    calls: int = 0
    """Reservations asked for (the ``#n`` of its ledger keys)."""


Event = tuple[float, int, int, _Run, Ticket | None, float]
"""When, sequence number (ties in order), kind, run, the ended dispatch's ticket, its actual."""


class Fleet:
    """The simulation's state: the ledger's book, the runs, the event queue, the figures.

    Args:
        scenario: What to simulate.
        book_type: The ledger book (a subclass only to test the checks themselves).
    """

    def __init__(self, scenario: Scenario, book_type: type[LedgerBook] = LedgerBook) -> None:
        s = self.s = scenario
        self.rng = random.Random(s.seed)
        self.result = SimulationResult(scenario=s)
        self.book_type = book_type
        self.book = book_type()
        self.updates_since_new = 0
        self.max_age = s.reservation_ttl / 2
        weights = [1.0 / (rank + 1) ** s.tenant_skew for rank in range(s.tenants)]
        self.cumulative = list(accumulate(weights))
        total = self.cumulative[-1]
        mean_actual = (s.estimate_min + s.estimate_max) / 2 * (1 + s.actual_min_fraction) / 2
        demand = [s.dispatches * mean_actual * w / total for w in weights]
        rng = self.rng
        self.ceilings = [
            max(s.estimate_max, d * rng.uniform(s.tenant_quota_min, s.tenant_quota_max))
            for d in demand
        ]
        allowed = sum(min(c, d) for c, d in zip(self.ceilings, demand, strict=True))
        self.global_ceiling = self.result.global_ceiling = s.global_share * allowed
        self.global_limit = SharedLimit(
            name="global.max_tokens", scope=GLOBAL, resource=RESOURCE, ceiling=self.global_ceiling
        )
        self.scopes = [f"tenant:t{t:05d}" for t in range(s.tenants)]
        self.limits: dict[int, tuple[list[SharedLimit], Signature]] = {}
        self.events: list[Event] = []
        self.sequence = 0
        self.attempts = 0
        self.charged = [0.0] * s.tenants
        """Per tenant: what its dispatches were charged (reported actual or estimate)."""
        self.leases_of: dict[int, dict[str, Lease]] = {}
        """Tenant -> its runs' open leases (current and retired) by ledger key."""
        self.open_leases: dict[str, Lease] = {}
        """Every open lease by ledger key (each covers the global scope)."""
        self.stranded_global = 0.0
        """Sum of ``left`` over every open lease: idle budget in the global scope."""
        self.refused_scopes: set[str] = set()

    # -- scopes ---------------------------------------------------------------------------

    def limits_of(self, tenant: int) -> tuple[list[SharedLimit], Signature]:
        """A run's leasable limits and their lease's signature (the same for its tenant)."""
        known = self.limits.get(tenant)
        if known is None:
            limits = [
                self.global_limit,
                SharedLimit(
                    name=f"tenants.t{tenant:05d}.quotas.max_tokens",
                    scope=self.scopes[tenant],
                    resource=RESOURCE,
                    ceiling=self.ceilings[tenant],
                ),
            ]
            per_dispatch, leasable = split(limits, leases=True)
            assert not per_dispatch  # token limits are always leased
            known = self.limits[tenant] = (leasable, signature_of(leasable))
        return known

    def check(self, run: _Run, now: float) -> None:
        """After a ledger step: the global scope and the run's tenant within their ceiling."""
        counters = self.book.state.counters
        result = self.result
        for limit in run.leasable:
            counter = counters.get(limit.counter)
            if counter is None:
                continue
            result.checks += 1
            excess = counter.committed + counter.reserved - limit.ceiling
            result.max_excess = max(result.max_excess, excess)
            if excess > slack(limit.ceiling):
                result.ceilings_passed += 1
                if len(result.violations) < 3:
                    result.violations.append(
                        f"{limit.scope} at t={now:.3f}s: committed {counter.committed:.6g} + "
                        f"reserved {counter.reserved:.6g} > ceiling {limit.ceiling:.6g}"
                    )

    # -- the ledger -----------------------------------------------------------------------

    def updated(self, now: float) -> None:
        """Count a ledger update; continue as new as the ledger workflow does."""
        self.result.ledger_updates += 1
        self.updates_since_new += 1
        if self.updates_since_new >= self.s.continue_as_new_after:
            book = self.book
            self.result.expired += book.expire(now)  # live runs renew: nothing expires
            book.prune(now)
            book.fit(now)
            self.book = self.book_type(book.pack())
            self.updates_since_new = 0
            self.result.continued_as_new += 1

    def settle_lease(self, run: _Run, lease: Lease, now: float) -> None:
        """``LedgerBudget._settle_key``: settle a drained lease with what it used."""
        if lease.ledger_key not in run.holdings.open:
            return
        self.drop_lease(run, lease)
        request = SettleRequest.model_validate({"key": lease.ledger_key, "actual": lease.used})
        self.book.settle(request, now)
        self.updated(now)
        run.holdings.settled(lease.ledger_key)
        self.check(run, now)

    def drop_lease(self, run: _Run, lease: Lease) -> None:
        """A lease is about to be settled: audit it, and stop counting it as stranded.

        Its dispatches must have used no more than the ledger reserved for it.
        """
        held = self.book.state.reservations.get(lease.ledger_key)
        reserved = held.amounts.get(RESOURCE, 0.0) if held is not None else 0.0
        if lease.used.get(RESOURCE, 0.0) > reserved + slack(reserved):
            self.result.leases_overdrawn += 1
        self.stranded_global -= lease.left(RESOURCE)
        del self.leases_of[run.tenant][lease.ledger_key]
        del self.open_leases[lease.ledger_key]

    # -- runs -----------------------------------------------------------------------------

    def push(self, when: float, kind: int, run: _Run, ticket: Ticket | None, actual: float) -> None:
        """Queue an event."""
        self.sequence += 1
        heapq.heappush(self.events, (when, self.sequence, kind, run, ticket, actual))

    def new_run(self, now: float) -> None:
        """A run of a tenant drawn from the Zipf law starts at ``now``."""
        s, rng = self.s, self.rng
        tenant = min(
            bisect.bisect_left(self.cumulative, rng.random() * self.cumulative[-1]),
            s.tenants - 1,
        )
        leasable, signature = self.limits_of(tenant)
        self.result.runs += 1
        number = self.result.runs
        run = _Run(
            number=number,
            tenant=tenant,
            owner=f"sim-{number}/1",
            remaining=min(
                s.dispatches_per_run_max,
                int(math.exp(rng.random() * math.log(s.dispatches_per_run_max + 1))),
            ),
            parallel=rng.randint(1, s.parallel_max),
            leasable=leasable,
            signature=signature,
        )
        self.push(now, _START, run, None, 0.0)

    def dispatch(self, run: _Run, now: float) -> None:
        """``LedgerBudget.reserve`` of the run's next dispatch on a free slot, or its end."""
        if run.ended:
            return
        s = self.s
        if run.remaining == 0 or self.attempts >= s.dispatches:
            if run.in_flight == 0:
                self.end(run, now, halted=False)
            return
        self.attempts += 1
        run.remaining -= 1
        rng = self.rng
        estimate = s.estimate_min + rng.random() * (s.estimate_max - s.estimate_min)
        amounts = {RESOURCE: estimate}
        holdings = run.holdings
        ticket = holdings.issue(amounts)
        wanted = wanted_of(run.leasable, amounts)
        lease = holdings.fitting(run.signature, wanted, now, self.max_age)
        if lease is None:
            lease = self.renew(run, wanted, now)
            if lease is None:  # refused: nothing ran, the run halts (on_refusal: terminate)
                holdings.record(ticket, {})
                self.flush(run, ticket, now)
                self.end(run, now, halted=True)
                return
        lease.hold(wanted)
        ticket.lease, ticket.leased = lease, wanted
        self.stranded_global -= estimate
        run.in_flight += 1
        actual = estimate * (s.actual_min_fraction + rng.random() * (1 - s.actual_min_fraction))
        self.push(now + rng.expovariate(1 / s.duration_mean_s), _DONE, run, ticket, actual)

    def renew(self, run: _Run, wanted: dict[str, float], now: float) -> Lease | None:
        """``LedgerBudget._hold`` without a fitting lease: retire it, ask for a new one."""
        holdings = run.holdings
        current = holdings.leases.get(run.signature)
        if current is not None and current.stale(now, self.max_age):
            self.result.leases_aged += 1
        drained = holdings.retire(run.signature)
        if drained is not None:
            self.settle_lease(run, drained, now)
        run.calls += 1
        key = f"{run.owner}/lease#{run.calls}"
        request = reservation(
            key,
            run.owner,
            run.leasable,
            wanted,
            self.s.reservation_ttl,
            lease_of=self.s.lease_dispatches,
            max_share=self.s.lease_max_share,
        )
        answer = self.book.reserve(request, now)
        self.updated(now)
        self.check(run, now)
        if not answer.granted:
            assert answer.refusal is not None
            self.refused(run, wanted[RESOURCE], answer.refusal)
            return None
        holdings.granted(key)
        lease = holdings.take(run.signature, key, answer.amounts, now)
        self.result.leases += 1
        self.leases_of.setdefault(run.tenant, {})[key] = lease
        self.open_leases[key] = lease
        self.stranded_global += lease.left(RESOURCE)
        if not run.renewing:
            run.renewing = True
            self.push(now + self.s.reservation_ttl / 2, _RENEW, run, None, 0.0)
        return lease

    def done(self, run: _Run, ticket: Ticket, actual: float, now: float) -> None:
        """A dispatch reported ``actual`` and ended: ``LedgerBudget.settle``."""
        if run.ended:
            return  # cancelled by the run's halt: charged what it reserved at the end
        run.holdings.record(ticket, {RESOURCE: actual})
        self.stranded_global += ticket.leased[RESOURCE] - actual
        self.charged[run.tenant] += actual
        self.result.dispatches_run += 1
        self.flush(run, ticket, now)
        run.in_flight -= 1
        self.dispatch(run, now)

    def flush(self, run: _Run, ticket: Ticket, now: float) -> None:
        """``LedgerBudget.flush``: settle what the ended dispatch lets go."""
        holdings = run.holdings
        own = holdings.dispatch_settlement(ticket)
        assert own is None  # nothing is reserved per dispatch (no concurrency limit)
        lease = holdings.lease_done(ticket)
        if lease is not None:
            self.settle_lease(run, lease, now)
            holdings.forget(lease)
        holdings.close(ticket)

    def renew_reservations(self, run: _Run, now: float) -> None:
        """``LedgerBudget._renew``: extend the run's reservations every half TTL."""
        if run.ended or not run.holdings.open:
            run.renewing = False
            return
        request = ExtendRequest.model_validate({"run": run.owner, "ttl_s": self.s.reservation_ttl})
        self.book.extend(request, now)
        self.updated(now)
        self.push(now + self.s.reservation_ttl / 2, _RENEW, run, None, 0.0)

    def end(self, run: _Run, now: float, halted: bool) -> None:
        """``LedgerBudget.release_all``: settle all the run holds, in ``release_run`` chunks."""
        holdings = run.holdings
        for ticket in holdings.tickets.values():
            if ticket.actual is None:  # cancelled before it reported: charged its estimate
                self.charged[run.tenant] += ticket.reserved[RESOURCE]
                self.result.dispatches_cancelled += 1
        leases = [*holdings.leases.values(), *holdings.retired]
        settlements = holdings.end()  # what is left of a lease stays left: leased == reserved
        for lease in leases:
            if lease.ledger_key in holdings.open:
                self.drop_lease(run, lease)
        if holdings.holds_anything():
            cut = chunks(settlements)
            for number, chunk in enumerate(cut):
                request = ReleaseRunRequest.model_validate(
                    {"run": run.owner, "settlements": chunk, "release_rest": number == len(cut) - 1}
                )
                self.book.release_run(request, now)
                self.updated(now)
                self.check(run, now)
            holdings.open.clear()
        run.ended = True
        self.result.runs_halted += halted
        if self.attempts < self.s.dispatches:
            self.new_run(now)

    # -- refusals -------------------------------------------------------------------------

    def refused(self, run: _Run, wanted: float, refusal: LedgerRefusal) -> None:
        """Measure the budget idle in other runs' leases on the refusing scope."""
        if refusal.limit == CAPACITY_LIMIT:
            self.result.capacity_refusals += 1
            return
        scope, ceiling = refusal.scope, refusal.ceiling
        figures: ScopeFigures
        if scope == GLOBAL:
            figures = self.result.global_figures
            leases = self.open_leases
            idle = self.stranded_global
            if figures.refusals % _RECOUNT_EVERY == 0:  # keep the running sum honest
                recount = sum(lease.left(RESOURCE) for lease in leases.values())
                drift = abs(recount - idle)
                self.result.stranded_drift = max(self.result.stranded_drift, drift)
                idle = self.stranded_global = recount
        else:
            figures = self.result.tenant_figures
            leases = self.leases_of.get(run.tenant, {})
            idle = sum(lease.left(RESOURCE) for lease in leases.values())
        figures.refusals += 1
        self.refused_scopes.add(scope)
        own = [*run.holdings.leases.values(), *run.holdings.retired]
        own_keys = {lease.ledger_key for lease in own if lease.ledger_key in leases}
        stranded = idle - sum(leases[key].left(RESOURCE) for key in own_keys)
        counter = self.book.state.counters[f"{scope}|{RESOURCE}|total"]
        if ceiling - counter.committed - counter.reserved + idle >= wanted - slack(ceiling):
            figures.early += 1
        if stranded / ceiling > figures.max_stranded:
            figures.max_stranded = stranded / ceiling
            figures.max_stranded_scope = scope
            figures.max_stranded_ceiling = ceiling
            figures.max_stranded_holders = len(
                {key.rpartition("/lease#")[0] for key in leases if key not in own_keys}
            )

    # -- the whole simulation -------------------------------------------------------------

    def run(self) -> SimulationResult:
        """Simulate until every dispatch was attempted and every run has ended."""
        s = self.s
        for _ in range(s.runs_at_once):
            self.new_run(self.rng.uniform(0.0, s.duration_mean_s * 10))
        events = self.events
        now = 0.0
        while events:
            now, _, kind, run, ticket, actual = heapq.heappop(events)
            if kind == _DONE:
                assert ticket is not None
                self.done(run, ticket, actual, now)
            elif kind == _START:
                for _ in range(run.parallel):
                    self.dispatch(run, now)
            else:
                self.renew_reservations(run, now)
        self.finish(now)
        return self.result

    def finish(self, now: float) -> None:
        """The end: every ceiling, exactness, the ledger's totals, nothing left open."""
        result, book = self.result, self.book
        result.expired += book.expire(now)
        counters = book.state.counters
        charged = {GLOBAL: sum(self.charged)}
        ceilings = {GLOBAL: self.global_ceiling}
        for tenant in self.limits:
            charged[self.scopes[tenant]] = self.charged[tenant]
            ceilings[self.scopes[tenant]] = self.ceilings[tenant]
        for scope, ceiling in ceilings.items():
            counter = counters.get(f"{scope}|{RESOURCE}|total")
            committed = counter.committed if counter is not None else 0.0
            reserved = counter.reserved if counter is not None else 0.0
            result.checks += 1
            result.max_excess = max(result.max_excess, committed + reserved - ceiling)
            if committed + reserved - ceiling > slack(ceiling):
                result.ceilings_passed += 1
            result.open_at_end += reserved > slack(ceiling)
            error = abs(committed - charged[scope])
            result.max_exactness_error = max(result.max_exactness_error, error)
            result.inexact_scopes += error > slack(committed)
            if scope in self.refused_scopes:
                figures = result.global_figures if scope == GLOBAL else result.tenant_figures
                figures.scopes_refusing += 1
            if scope == GLOBAL:
                left = max(0.0, ceiling - committed - self.s.estimate_max) / ceiling
                result.global_left_at_end = left
        glob = counters.get(f"{GLOBAL}|{RESOURCE}|total")
        result.committed = glob.committed if glob is not None else 0.0
        result.charged = charged[GLOBAL]
        state = book.state
        result.totals_error = abs(
            state.granted.get(RESOURCE, 0.0)
            - state.committed.get(RESOURCE, 0.0)
            - state.released.get(RESOURCE, 0.0)
        )
        result.open_at_end += len(state.reservations) + len(self.open_leases)
        result.stranded_drift = max(result.stranded_drift, abs(self.stranded_global))


__all__ = ["Fleet"]
