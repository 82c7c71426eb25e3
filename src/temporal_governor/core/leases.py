"""What one run holds in the scopes shared across runs: tickets, leases, open reservations.

A governed run reserves in shared scopes through the ledger workflow. Two ways:

- **per dispatch**: one reservation before the dispatch and one settlement after; always
  used for concurrency limits (a slot is held for exactly one dispatch);
- **leases**: the run reserves a chunk of the scopes' budget once (a :class:`Lease`) and
  reserves against it locally, with no round trip. A lease that no longer fits, or ages,
  is *retired*: it is settled with what its dispatches really used once the last of them
  has ended.

This module is the bookkeeping and every decision about it, with no ``temporalio`` import:
which limits a dispatch leases, whether the run's lease fits, what a retired lease settles,
what the run's end settles, what a refusal leads to. The glue
(``interceptors/_shared.py``) asks it and issues the ledger calls.

Floats are compared with a tolerance of :data:`EPSILON` (the ledger's own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .book import CAPACITY_LIMIT, MAX_SETTLEMENTS, SHARDS_LIMIT, LedgerRefusal, ReserveRequest
from .pools import fits_in, left_of
from .scopes import SharedLimit
from .waiters import rank_of

EPSILON = 1e-9
"""Tolerance of every comparison of amounts (the ledger's)."""

CONCURRENCY = "concurrency"
"""The resource that is never leased: a slot is held for exactly one dispatch."""

DEFAULT_RETRY_S = 0.5
"""Pause before asking again after a refusal that names no time to wait."""

MIN_PAUSE_S = 0.05
"""Shortest pause before asking again after a refusal."""

Amounts = dict[str, float]
"""Resource -> amount."""

Signature = tuple[str, ...]
"""Identifies the scopes a lease covers: its limits' counters and ceilings, sorted."""

Settlement = tuple[str, Amounts]
"""A ledger key and what to commit for it (the rest of its reservation is released)."""


def _add(totals: Amounts, amounts: Mapping[str, float], sign: float = 1.0) -> None:
    for resource, value in amounts.items():
        totals[resource] = totals.get(resource, 0.0) + sign * value


@dataclass
class Lease:
    """A chunk of shared budget held by one run, reserved against locally.

    What is left of it is ``granted - used - held``: ``held`` is what running dispatches
    reserved against it, ``used`` what finished ones really spent.
    """

    ledger_key: str
    """The key of the lease's reservation in the ledger."""
    granted: Amounts
    """What the ledger granted (a fair share: maybe less than asked for)."""
    taken_at: float
    """Epoch seconds at which the lease was asked for."""
    used: Amounts = field(default_factory=dict)
    """What its finished dispatches really used."""
    held: Amounts = field(default_factory=dict)
    """What its running dispatches reserved against it."""
    dispatches: int = 0
    """Dispatches reserved against it so far."""
    retired: bool = False
    """No new dispatch reserves against it; it is settled once drained."""

    def left(self, resource: str) -> float:
        """What is left of the lease for ``resource``."""
        return left_of(self.granted, self.used, self.held, resource)

    def fits(self, wanted: Mapping[str, float]) -> bool:
        """Whether every amount of ``wanted`` fits in what is left of the lease."""
        return fits_in(self.granted, self.used, self.held, wanted)

    def drained(self) -> bool:
        """No dispatch reserved against it is still running."""
        return not any(value > EPSILON for value in self.held.values())

    def stale(self, now: float, max_age: float) -> bool:
        """Older than ``max_age`` seconds: it is renewed rather than reserved against."""
        return now - self.taken_at > max_age

    def hold(self, wanted: Mapping[str, float]) -> None:
        """Reserve ``wanted`` against the lease for one dispatch."""
        _add(self.held, wanted)
        self.dispatches += 1

    def give_back(self, leased: Mapping[str, float], actual: Mapping[str, float]) -> None:
        """A dispatch that held ``leased`` ended having used ``actual``."""
        for resource, value in leased.items():
            self.held[resource] = self.held.get(resource, 0.0) - value
            self.used[resource] = self.used.get(resource, 0.0) + actual.get(resource, 0.0)

    def unused(self) -> Amounts:
        """What settling the lease now gives back to the scopes: granted less used."""
        return {r: v - self.used.get(r, 0.0) for r, v in self.granted.items()}


@dataclass
class Ticket:
    """What one dispatch holds in the shared scopes, to settle when it ends."""

    number: int
    """Unique within the run: tickets are tracked by it until they are settled."""
    reserved: Amounts = field(default_factory=dict)
    """What the dispatch reserved (concurrency left out): its charge if its usage is never
    known (the governor never assumes money was not spent)."""
    lease: Lease | None = None
    """The lease it reserved against, if any."""
    leased: Amounts = field(default_factory=dict)
    """What it holds of its lease."""
    ledger_key: str | None = None
    """Its own reservation in the ledger (per dispatch), if any."""
    per_dispatch: tuple[str, ...] = ()
    """Resources reserved per dispatch (settled with their actual, concurrency with 0)."""
    actual: Amounts | None = None
    """What the dispatch really used, once known."""

    def settlement(self) -> Amounts:
        """What its per-dispatch reservation commits: its actual use, zeros left out."""
        assert self.actual is not None
        return {r: v for r in self.per_dispatch if (v := self.actual.get(r, 0.0))}


def split(limits: list[SharedLimit], leases: bool) -> tuple[list[SharedLimit], list[SharedLimit]]:
    """Which limits a dispatch reserves per dispatch and which against a lease.

    Args:
        limits: The shared limits of the dispatch.
        leases: Whether the policy lets the run lease (``shared.leases``).

    Returns:
        ``(per_dispatch, leasable)``: concurrency is always per dispatch; without leases,
        everything is.
    """
    per_dispatch = [lim for lim in limits if lim.resource == CONCURRENCY]
    leasable = [lim for lim in limits if lim.resource != CONCURRENCY]
    if leasable and not leases:
        return limits, []
    return per_dispatch, leasable


def wanted_of(limits: Iterable[SharedLimit], amounts: Mapping[str, float]) -> Amounts:
    """What a dispatch asks of each limit's resource (0 for a resource it does not use)."""
    return {str(lim.resource): float(amounts.get(lim.resource, 0.0)) for lim in limits}


def signature_of(limits: Iterable[SharedLimit]) -> Signature:
    """The signature of the lease covering ``limits`` (one lease per set of scopes)."""
    return tuple(sorted(f"{lim.counter}|{lim.ceiling:g}" for lim in limits))


def reservation(
    key: str,
    run: str,
    limits: list[SharedLimit],
    wanted: Mapping[str, float],
    ttl_s: float,
    lease_of: int = 0,
    max_share: float = 0.1,
    controls_for: list[str] | None = None,
    controls_since_ms: int = 0,
    priority: str | None = None,
    waits: bool = False,
    tenant: str | None = None,
    waited_s: float = 0.0,
    aging_s: float | None = None,
    waiter: str | None = None,
    shards: int | None = None,
    upstream: str | None = None,
) -> ReserveRequest:
    """The ledger request of a reservation: per dispatch, or a lease of ``lease_of`` dispatches.

    A lease asks for ``lease_of`` times what one dispatch wants, and accepts a fair share
    of what is left (at most ``max_share`` of it) as long as one dispatch fits.

    With ``priority`` (or ``waits``) the request takes part in the ledger's queues of
    waiters (:mod:`.waiters`): ranked by its class and age, with a fair share for its
    tenant, and queued when refused if it ``waits``. Without them it is the request of
    earlier releases.

    Only the fields given are set (the request's JSON carries exactly those).

    Args:
        key: The ledger key of this ask (``owner/dispatch#n``).
        run: ``workflow_id/run_id`` of the caller.
        limits: The limits to reserve in.
        wanted: What one dispatch wants of each resource.
        ttl_s: Seconds before an unsettled reservation is charged in full.
        lease_of: Dispatches' worth a lease asks for (0: per dispatch).
        max_share: The largest fraction of what is left one lease may take.
        controls_for: Scopes whose stored kills and resumes to send back.
        controls_since_ms: Only those recorded after this.
        priority: The dispatch's priority class (``critical`` ... ``background``;
            ``normal`` when only ``waits`` is given).
        waits: The caller asks again when refused (``shared.on_refusal: wait``).
        tenant: The tenant it reserves for (fair share between tenants).
        waited_s: Seconds it has already waited for this reservation.
        aging_s: Seconds of waiting that raise it by one class (the ledger's default
            otherwise).
        waiter: Its identity in the queue, the same on every ask; default: ``key``
            without its ``#n`` ask number.
        shards: The fleet's shard count when above 1 (``shared.shards``): the ledger
            refuses a request of another count than the one it serves.
        upstream: The root ledger's id, for a request to a tenant shard whose fleet-wide
            limits the shard grants out of its pool (hierarchical leases, :mod:`.pools`).

    Raises:
        pydantic.ValidationError: A request the ledger would refuse (NaN, negative or huge
            amounts, oversized names).
        ValueError: ``priority`` is not a priority class.
    """
    fields: dict[str, object] = {
        "key": key,
        "run": run,
        "amounts": {r: v * max(lease_of, 1) for r, v in wanted.items()},
        "limits": limits,
        "ttl_s": ttl_s,
    }
    if lease_of:
        fields["minimum"] = dict(wanted)
        fields["max_share"] = max_share
    if controls_for is not None:
        fields["controls_for"] = controls_for
        fields["controls_since_ms"] = controls_since_ms
    if priority is not None or waits:
        fields["priority"] = rank_of(priority)
        fields["waits"] = waits
        fields["waiter"] = waiter or key.rpartition("#")[0] or key
        if tenant is not None:
            fields["tenant"] = tenant
        if waited_s:
            fields["waited_s"] = waited_s
        if aging_s is not None:
            fields["aging_s"] = aging_s
    if shards is not None:
        fields["shards"] = shards
    if upstream is not None:
        fields["upstream"] = upstream
    return ReserveRequest.model_validate(fields)


@dataclass(frozen=True)
class Wait:
    """Ask again after ``pause`` seconds: the scope may have room by then."""

    pause: float


@dataclass(frozen=True)
class Halt:
    """The scope refused for good: the run halts (``shared.on_refusal: terminate``)."""


@dataclass(frozen=True)
class Unavailable:
    """The ledger stayed full for longer than the run may wait: treat it as down."""


def poolable(limit: SharedLimit) -> bool:
    """Whether a shard may grant ``limit`` out of its pool: a terminate limit, never a slot."""
    return limit.on_breach == "terminate" and limit.resource != CONCURRENCY


@dataclass(frozen=True)
class Misconfigured:
    """The ledger refused the fleet's configuration (its shard count, :data:`.book.SHARDS_LIMIT`).

    Final: asking again never changes the answer, and a configuration error never fails
    open. The run stops (``GovernanceKilled``) whatever ``shared.on_refusal`` and
    ``shared.on_unavailable`` say.
    """


RefusalStep = Wait | Halt | Unavailable | Misconfigured


def after_refusal(
    refusal: LedgerRefusal,
    waited: float,
    max_wait: float,
    on_refusal: str,
) -> RefusalStep:
    """What a run does when the ledger refuses a reservation.

    A full ledger (its own size caps: it is busy, not the budget spent) is always waited
    for, up to ``max_wait``, then counts as unavailable. A budget refusal waits only under
    ``on_refusal: wait`` (for a window to roll over), up to ``max_wait``, then halts. A
    refused shard count is :class:`Misconfigured` at once.

    Args:
        refusal: The ledger's refusal.
        waited: Seconds this reservation has already waited.
        max_wait: ``shared.max_wait``.
        on_refusal: ``shared.on_refusal``.
    """
    if refusal.limit == SHARDS_LIMIT:
        return Misconfigured()
    left = max_wait - waited
    full = refusal.limit == CAPACITY_LIMIT
    if full and left <= 0:
        return Unavailable()
    if (full or on_refusal == "wait") and left > 0:
        return Wait(max(MIN_PAUSE_S, min(left, refusal.retry_after_s or DEFAULT_RETRY_S)))
    return Halt()


class Holdings:
    """Everything one run holds in the shared scopes, and what to settle when.

    The glue calls these in the order of its ledger calls; nothing here waits or fails.
    """

    def __init__(self) -> None:
        self.open: set[str] = set()
        """Ledger keys granted to the run and not settled yet."""
        self.tickets: dict[int, Ticket] = {}
        """Tickets of dispatches not settled yet, by number."""
        self.issued = 0
        """Tickets issued so far."""
        self.leases: dict[Signature, Lease] = {}
        """The lease dispatches reserve against, per set of scopes."""
        self.retired: list[Lease] = []
        """Retired leases some dispatch still holds: settled once drained."""
        self.unanswered = 0
        """Reservations asked for and not answered (cancelled meanwhile): the ledger may
        hold them, so the run's end releases whatever it still holds."""
        self.queued = False
        """A reservation that waits (``on_refusal: wait``) was refused: the ledger may keep
        the run as a waiter, which only the run's end (``release_run``) removes at once."""

    # -- tickets --------------------------------------------------------------------------

    def issue(self, amounts: Mapping[str, float]) -> Ticket:
        """A new ticket for a dispatch about to reserve ``amounts``."""
        self.issued += 1
        ticket = Ticket(
            number=self.issued,
            reserved={r: float(v) for r, v in amounts.items() if r != CONCURRENCY and v},
        )
        self.tickets[ticket.number] = ticket
        return ticket

    def record(self, ticket: Ticket, actual: Mapping[str, float]) -> None:
        """Note what a finished dispatch used (once; later calls change nothing)."""
        if ticket.actual is not None:
            return
        ticket.actual = {r: v for r, v in actual.items() if r != CONCURRENCY}
        if ticket.lease is not None:
            ticket.lease.give_back(ticket.leased, actual)

    def dispatch_settlement(self, ticket: Ticket) -> Settlement | None:
        """The per-dispatch reservation a recorded ticket settles, if any."""
        if ticket.ledger_key is None:
            return None
        return ticket.ledger_key, ticket.settlement()

    def lease_done(self, ticket: Ticket) -> Lease | None:
        """The ticket's lease, if it is retired and no dispatch holds it any more."""
        lease = ticket.lease
        if lease is not None and lease.retired and lease.drained():
            return lease
        return None

    def forget(self, lease: Lease) -> None:
        """A retired lease was settled."""
        if lease in self.retired:
            self.retired.remove(lease)

    def close(self, ticket: Ticket) -> None:
        """A ticket is done with."""
        self.tickets.pop(ticket.number, None)

    # -- leases ---------------------------------------------------------------------------

    def fitting(
        self, signature: Signature, wanted: Mapping[str, float], now: float, max_age: float
    ) -> Lease | None:
        """The run's lease of ``signature`` if ``wanted`` fits in it and it is not stale."""
        lease = self.leases.get(signature)
        if lease is None or lease.stale(now, max_age) or not lease.fits(wanted):
            return None
        return lease

    def retire(self, signature: Signature) -> Lease | None:
        """Stop reserving against the lease of ``signature``.

        Returns:
            The lease if it must be settled now (drained); else it is kept among the
            retired until its last dispatch ends (or ``None`` when there was no lease).
        """
        lease = self.leases.pop(signature, None)
        if lease is None:
            return None
        lease.retired = True
        if lease.drained():
            return lease
        self.retired.append(lease)
        return None

    def take(self, signature: Signature, ledger_key: str, granted: Amounts, now: float) -> Lease:
        """The ledger granted a new lease of ``signature``."""
        lease = Lease(ledger_key=ledger_key, granted=granted, taken_at=now)
        self.leases[signature] = lease
        return lease

    # -- reservations in the ledger -------------------------------------------------------

    def granted(self, ledger_key: str) -> None:
        """The ledger holds a reservation of the run under ``ledger_key``."""
        self.open.add(ledger_key)

    def settled(self, ledger_key: str) -> None:
        """The ledger settled ``ledger_key``."""
        self.open.discard(ledger_key)

    # -- the run's end --------------------------------------------------------------------

    def record_all(self) -> None:
        """Record every unsettled ticket; one whose outcome is unknown with what it reserved."""
        for ticket in list(self.tickets.values()):
            self.record(ticket, ticket.actual if ticket.actual is not None else ticket.reserved)

    def end(self) -> dict[str, Amounts]:
        """Everything the run still holds, settled, and forgotten (the run ends).

        Returns:
            Ledger key -> what to commit, for every open reservation the run knows of:
            dispatches with their actual use (or what they reserved, if never learnt),
            leases with what their dispatches used.
        """
        self.record_all()
        settlements: dict[str, Amounts] = {}
        for ticket in self.tickets.values():
            if ticket.ledger_key is not None and ticket.ledger_key in self.open:
                settlements[ticket.ledger_key] = ticket.settlement()
        for lease in [*self.leases.values(), *self.retired]:
            if lease.ledger_key in self.open:
                settlements[lease.ledger_key] = {r: v for r, v in lease.used.items() if v}
        self.tickets.clear()
        self.leases.clear()
        self.retired.clear()
        return settlements

    def holds_anything(self) -> bool:
        """Whether the ledger may hold something of the run.

        Granted or unanswered reservations, or a waiter of a refused reservation.
        """
        return bool(self.open) or self.unanswered > 0 or self.queued


def chunks(settlements: Mapping[str, Amounts]) -> list[dict[str, Amounts]]:
    """Settlements in key order, cut in ``release_run``-sized chunks (at least one chunk)."""
    items = sorted(settlements.items())
    cut = [dict(items[i : i + MAX_SETTLEMENTS]) for i in range(0, len(items), MAX_SETTLEMENTS)]
    return cut or [{}]


__all__ = [
    "CONCURRENCY",
    "EPSILON",
    "Halt",
    "Holdings",
    "Lease",
    "Misconfigured",
    "RefusalStep",
    "Settlement",
    "Signature",
    "Ticket",
    "Unavailable",
    "Wait",
    "after_refusal",
    "chunks",
    "reservation",
    "signature_of",
    "split",
    "wanted_of",
]
