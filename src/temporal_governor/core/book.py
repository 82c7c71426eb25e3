"""The shared ledger's book: pure, deterministic arithmetic of scopes shared across runs.

The ledger entity workflow (``workflows/_ledger.py``) is thin glue around a
:class:`LedgerBook`: it validates each Workflow Update into one of the request models
below, hands it to the book with the workflow's clock, and carries the book's
:meth:`~LedgerBook.pack` across continue-as-new. Nothing here imports ``temporalio``, so
every rule (all-or-nothing reservations, fair-share leases, windows, expiry, pruning,
size bounds) is tested with plain unit tests.

The book is **bounded by design**: every key, scope and message has a size cap (a request
over it is refused by validation), every collection has a count cap, closed windows and
idle counters are pruned, and the idempotency memory keeps short digests pruned by age.
Whatever the load, the packed state stays far below Temporal's payload limit.

A caller that names its priority class (``ReserveRequest.priority``) takes part in the
**queues of waiters** (:mod:`.waiters`): capacity that frees is held for the best waiter
(priority with aging, fair share between tenants), so no class and no tenant starves.
Callers that do not name one (earlier releases) are decided exactly as before.

A **sharded fleet's** requests carry its shard count (``shards``), and a ledger records
the count it serves: a request of another count is refused (:data:`SHARDS_LIMIT`), so a
fleet whose ``shared.shards`` changes while its budgets are kept never starts its tenant
budgets afresh on new shards nor strands them on old ones (:meth:`LedgerBook.shards_refusal`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import zlib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from ..policy import MAX_SHARDS
from .accounting import FLOAT_OPS, Ops
from .detectors import BaselineState, SpendBaseline
from .pools import POOL_LIMIT, Pools, PoolState, signature_of
from .scopes import SharedLimit, SharedResource
from .shards import TENANT_PREFIXES
from .waiters import AGING_S, MAX_RANK, MAX_WAITERS, Waiter, Waiters, retry_for

MAX_TTL_S = 30 * 86400.0
"""The longest a reservation may stay unsettled (30 days)."""
MAX_KEY_CHARS = 512
"""Longest idempotency key or run id a request may carry."""
MAX_NAME_CHARS = 300
"""Longest scope, limit name or baseline key a request may carry."""
MAX_AMOUNT = 1e15
"""Largest amount of any resource one request may carry."""
MAX_LIMITS = 32
"""Most limits one reservation may touch."""
MAX_SETTLEMENTS = 500
"""Most settlements one ``release_run`` may carry."""
MAX_CONTROL_BYTES = 16 * 1024
"""Largest control message (as compact JSON) the ledger stores; the same figure as the cap
on a control signal's payload (``temporal_governor.control.MAX_CONTROL_BYTES`` is this)."""
MAX_OPEN_RESERVATIONS = 5_000
"""Open reservations at once; beyond it a reservation is refused (limit ``ledger.capacity``)."""
MAX_COUNTERS = 50_000
"""Counters at once; beyond it a reservation that needs a new one is refused."""
MAX_CONTROL_SCOPES = 1_000
"""Scopes with a stored fleet kill or resume; beyond it a new scope's record is refused."""
MAX_BASELINES = 2_000
"""Spend baselines kept; the least recently updated is dropped beyond it."""
MAX_WAITERS_KEPT = MAX_WAITERS
"""Waiters kept at once (:data:`.waiters.MAX_WAITERS`); a full queue evicts its worst."""
MAX_EXPIRED = 2_000
"""Expired reservations remembered (for a late settle to correct its conservative charge)."""
EXPIRED_KEEP_S = 6 * 3600.0
"""How long an expired reservation is remembered."""
MAX_CLOSED = 2_000
"""Closed reservation keys remembered (digests), so a late duplicate never re-reserves."""
CLOSED_KEEP_S = 600.0
"""How long a closed reservation key is remembered."""
CONTROL_KEEP_S = 86_400.0
"""A scope whose latest resume is newer than its kill is forgotten after this long."""
MAX_CONTROLS_BYTES = 256 * 1024
"""All stored fleet control messages together (as compact JSON); beyond it a new one is refused."""
MAX_PACKED_BYTES = 1024 * 1024
"""The packed state's budget (a quarter of headroom below Temporal's 2 MB payload limit is
kept for the growth between two measurements): once past it, anything that would grow the
state (a new counter, reservation or fleet control) is refused until pruning frees room."""
MEASURE_EVERY_BYTES = 128 * 1024
"""The packed size is measured again once the state may have grown by this much."""
CAPACITY_LIMIT = "ledger.capacity"
"""The ``limit`` of a refusal caused by the book's own size caps."""
SHARDS_LIMIT = "shared.shards"
"""The ``limit`` of a refusal because the request's shard count is not the one the ledger
serves: its ``ceiling`` is the ledger's count, its ``observed`` the request's (1 for a
request without ``shards``). Final: asking again never changes the answer."""

_EPSILON = 1e-9

Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
Amount = Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)]
Shards = Annotated[int, Field(ge=2, le=MAX_SHARDS, strict=True)]
"""A sharded fleet's shard count (an unsharded fleet's requests carry none)."""


class _Request(BaseModel):
    """A ledger update's request: validated on construction, sent as :meth:`wire`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def wire(self) -> dict[str, Any]:
        """The request as the update's JSON argument: the fields that were set, only.

        A request parsed from JSON gives back the same JSON, so a call carries exactly what
        its caller built, and ledgers of earlier releases (which may not know a newer
        optional field) keep accepting what the caller did not set.
        """
        return self.model_dump(mode="json", exclude_unset=True)


class LedgerRefusal(BaseModel):
    """Why the ledger refused a reservation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: str
    scope: str
    resource: str
    observed: float
    """What the scope would hold with this reservation (committed + reserved + request,
    plus what it holds for waiters ranked ahead of a caller with a priority class)."""
    ceiling: float
    committed: float = 0.0
    """What the scope had committed (in the current window, for a windowed limit)."""
    retry_after_s: float | None = None
    """When a windowed limit's window rolls over, seconds from now."""


class ReserveRequest(_Request):
    """Reserve amounts in every scope of ``limits``, or in none."""

    key: Key
    """Idempotency key: run, dispatch (and lease number)."""
    run: Key
    """``workflow_id/run_id`` of the caller, to release everything of a run at once."""
    amounts: dict[SharedResource, Amount]
    limits: list[SharedLimit] = Field(max_length=MAX_LIMITS)
    ttl_s: float = Field(default=600.0, gt=0, le=MAX_TTL_S)
    """The reservation is charged in full (conservatively) if not settled within this time."""
    minimum: dict[SharedResource, Amount] | None = None
    """For a lease: grant as much of ``amounts`` as a fair share allows, at least this."""
    max_share: float = Field(default=0.1, gt=0, le=1)
    """For a lease: the largest fraction of what is left that one lease may take."""
    controls_for: list[Name] = Field(default_factory=list, max_length=10)
    """Scopes (``tenant:<name>``, ``agent:<type>``) whose stored kills and resumes the
    caller wants back with the result, if newer than ``controls_since_ms``."""
    controls_since_ms: int = Field(default=0, ge=-1, le=2**53)
    priority: int | None = Field(default=None, ge=0, le=MAX_RANK)
    """The caller's priority class as a rank (:data:`.waiters.RANKS`: 0 critical ... 4
    background). Set, the request takes part in the queues of waiters: it is granted only
    what leaves enough for the eligible waiters ranked ahead of it. Unset (callers of
    earlier releases), it is decided as before: no queue holds anything against it."""
    waits: bool = False
    """The caller asks again when refused (``on_refusal: wait``): a refusal queues it as a
    waiter. A caller that does not wait is ranked like a newcomer of its class, held back
    only by waiters ranked ahead of it, and never queued (its refusal is final)."""
    tenant: Name | None = None
    """The tenant the caller reserves for (fair share between tenants of one class)."""
    waiter: Key | None = None
    """The caller's identity in the queue, the same on every ask of one reservation (the
    ledger key changes per ask); default: ``key``."""
    waited_s: float = Field(default=0.0, ge=0, le=MAX_TTL_S, allow_inf_nan=False)
    """Seconds the caller has already waited for this reservation, so its age survives
    being dropped from the queue."""
    aging_s: float = Field(default=AGING_S, gt=0, le=MAX_TTL_S, allow_inf_nan=False)
    """Seconds of waiting that raise a waiter by one class (``shared.priority_aging_s``)."""
    shards: Shards | None = None
    """The caller's fleet's shard count (``shared.shards``), set only when above 1: the
    ledger records it and refuses a request of another count (:data:`SHARDS_LIMIT`).
    Unset (an unsharded fleet, or a caller of an earlier release), the request is the
    one earlier releases sent. A request that reserves nothing (no ``limits``, no
    ``amounts``) only registers the count (and reads the controls it asks for)."""
    upstream: Key | None = None
    """Hierarchical leases (``shared.hierarchical_leases``), sent to a tenant shard: the
    root ledger's id. The request's fleet-wide limits (every limit not of a tenant or
    owner scope) are then granted out of the shard's pool of that root
    (:mod:`.pools`), all-or-nothing with its tenant limits; a pool that cannot cover
    them refuses with ``shared.pool`` and holds nothing. Unset: the request of earlier
    releases."""

    @field_serializer("limits")
    def _whole_limits(self, limits: list[SharedLimit]) -> list[dict[str, Any]]:
        # every field of a limit, even in a :meth:`wire` dump (the ledger reads them all)
        return [limit.model_dump(mode="json") for limit in limits]

    @field_validator("limits")
    @classmethod
    def _bounded_limits(cls, limits: list[SharedLimit]) -> list[SharedLimit]:
        for limit in limits:
            if len(limit.scope) > MAX_NAME_CHARS or len(limit.name) > MAX_NAME_CHARS:
                raise ValueError(f"scope and limit names are at most {MAX_NAME_CHARS} characters")
            if not math.isfinite(limit.ceiling) or limit.ceiling > MAX_AMOUNT:
                raise ValueError(f"ceilings are finite and at most {MAX_AMOUNT:g}")
        return limits

    @model_validator(mode="after")
    def _limits_reserve_something(self) -> ReserveRequest:
        for limit in self.limits:
            if limit.resource not in self.amounts:
                raise ValueError(
                    f"limit {limit.name} is on {limit.resource!r}, "
                    "which the request does not reserve"
                )
        if self.priority is None and (self.waits or self.waiter is not None):
            raise ValueError("waits and waiter need a priority (the caller's class rank)")
        if self.upstream is not None:
            for limit in self.limits:
                fleet_wide = not limit.scope.startswith(TENANT_PREFIXES)
                if fleet_wide and (
                    limit.on_breach != "terminate" or limit.resource == "concurrency"
                ):
                    raise ValueError(
                        f"limit {limit.name} cannot be drawn from a pool: only terminate "
                        "limits on tokens, cost and tool calls are"
                    )
        return self


class StoredControl(BaseModel):
    """A fleet-wide control message as the ledger keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message: dict[str, Any]
    recorded_at_ms: int


StoredControls = dict[str, dict[str, StoredControl]]
"""Scope (``tenant:<name>``, ``agent:<type>``) -> signal -> its latest stored message."""


class ReserveResult(BaseModel):
    """The outcome of a reservation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    granted: bool
    amounts: dict[str, float] = Field(default_factory=dict)
    """What was reserved (a lease may get less than it asked for)."""
    refusal: LedgerRefusal | None = None
    duplicate: bool = False
    """The key was seen before; this is the earlier outcome."""
    controls: StoredControls = Field(default_factory=dict)
    """Stored kills and resumes of the requested scopes, newer than the caller has seen:
    the caller verifies and applies them (the ledger itself verifies nothing)."""


class SettleRequest(_Request):
    """Commit the actual usage of a reservation and release the rest."""

    key: Key
    actual: dict[SharedResource, Amount] = Field(default_factory=dict)


class SettleResult(BaseModel):
    """The outcome of a settlement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    settled: bool
    """False when the key was unknown or already settled (nothing changed)."""
    committed: dict[str, float] = Field(default_factory=dict)
    released: dict[str, float] = Field(default_factory=dict)
    late: bool = False
    """The reservation had expired and was charged in full; this corrected the charge."""


class ReleaseRunRequest(_Request):
    """A run ends: settle what it lists, release every other reservation it still holds."""

    run: Key
    settlements: dict[Key, dict[SharedResource, Amount]] = Field(
        default_factory=dict, max_length=MAX_SETTLEMENTS
    )
    """Reservation key -> what it really used."""
    release_rest: bool = True
    """Release the run's other open reservations (the last chunk of a run's settlements)."""


class ExtendRequest(_Request):
    """A live run keeps its open reservations from expiring (it renews them at TTL/2)."""

    run: Key
    ttl_s: float = Field(default=600.0, gt=0, le=MAX_TTL_S)


class ControlRecordRequest(_Request):
    """Keep a fleet-wide kill or resume (a tenant's or an agent type's) for runs that start later.

    The ledger stores the message as sent; it does not verify it. Every run that reads it
    verifies its signature itself, and judges its age against ``recorded_at_ms`` (when the
    ledger took it), so a forged or replayed message stored here changes nothing.
    """

    scope: str = Field(pattern=r"^(tenant|agent):.+$", max_length=MAX_NAME_CHARS)
    """``tenant:<name>`` or ``agent:<workflow type>``."""
    signal: Literal["governor.kill", "governor.resume"]
    message: dict[str, Any]

    @field_validator("message")
    @classmethod
    def _bounded_message(cls, message: dict[str, Any]) -> dict[str, Any]:
        size = _json_size(message)
        if size > MAX_CONTROL_BYTES:
            raise ValueError(f"a control message is at most {MAX_CONTROL_BYTES} bytes, not {size}")
        return message


class BaselineRequest(_Request):
    """Read spend baselines (``agent:<type>:<metric>``, ``tenant:<name>:<metric>``)."""

    keys: list[Name] = Field(max_length=100)


class ObserveRequest(_Request):
    """Fold one finished run's spend into baselines (exponentially weighted)."""

    values: dict[Name, Amount] = Field(max_length=100)
    """Baseline key -> the run's value."""
    alpha: float = Field(default=0.2, gt=0, le=1)
    min_samples: int = Field(default=5, ge=1, le=10_000)


class ReadControlsRequest(_Request):
    """Read stored kills and resumes of some scopes, newer than ``since_ms``."""

    scopes: list[Name] = Field(max_length=10)
    since_ms: int = Field(default=0, ge=-1, le=2**53)


class Counter(BaseModel):
    """Committed and reserved amounts of one scope, resource and window."""

    model_config = ConfigDict(extra="forbid")

    scope: str
    resource: str
    window_s: float | None = None
    window_start: float | None = None
    """Epoch seconds at which the current window started."""
    committed: float = 0.0
    reserved: float = 0.0
    ceiling: float | None = None
    """The ceiling last requested for it (for display)."""
    limit: str = ""


class Reservation(BaseModel):
    """An open reservation: how much it holds on which counters, until when."""

    model_config = ConfigDict(extra="forbid")

    run: str
    amounts: dict[str, float]
    counters: dict[str, float]
    """Counter id -> amount held."""
    expires_at: float
    """Epoch seconds."""
    lease: bool = False
    tenant: str | None = None
    """The tenant it was reserved for, when the caller said (fair share between waiters)."""
    pool: str | None = None
    """The key of the shard's pool its fleet-wide part was drawn from (hierarchical leases)."""
    pooled: dict[str, float] = Field(default_factory=dict)
    """What it holds of that pool."""


class Expired(BaseModel):
    """A reservation that expired unsettled and was charged in full."""

    model_config = ConfigDict(extra="forbid")

    amounts: dict[str, float]
    counters: dict[str, list[float]]
    """Counter id -> [amount charged, window start it was charged in (or -1)]."""
    at: float
    pool: str | None = None
    pooled: dict[str, float] = Field(default_factory=dict)
    """What it was charged of its pool (hierarchical leases)."""


class LedgerState(BaseModel):
    """Everything the ledger keeps; carried across continue-as-new (see :meth:`LedgerBook.pack`)."""

    model_config = ConfigDict(extra="forbid")

    counters: dict[str, Counter] = Field(default_factory=dict)
    reservations: dict[str, Reservation] = Field(default_factory=dict)
    expired: dict[str, Expired] = Field(default_factory=dict)
    """Digest of a key -> an expired reservation, oldest first (bounded, pruned by age)."""
    closed: dict[str, float] = Field(default_factory=dict)
    """Digest of a closed reservation key -> when it closed, oldest first (bounded)."""
    outcomes: dict[str, str] = Field(default_factory=dict)
    """Unused since 0.2 (read from older ledgers and dropped)."""
    granted: dict[str, float] = Field(default_factory=dict)
    committed: dict[str, float] = Field(default_factory=dict)
    released: dict[str, float] = Field(default_factory=dict)
    continue_as_new_after: int = Field(default=2000, ge=1)
    """Updates per run before continuing as new."""
    controls: dict[str, dict[str, StoredControl]] = Field(default_factory=dict)
    """Scope -> signal -> the latest fleet-wide kill and resume of that scope."""
    baselines: dict[str, BaselineState] = Field(default_factory=dict)
    """Spend baselines across runs, by key (``agent:planner:tokens_per_run`` ...)."""
    waiters: dict[str, Waiter] = Field(default_factory=dict)
    """Waiter id -> a refused caller waiting for capacity (bounded, dropped when it stops
    asking; soft state: losing it loses only what was held, never budget)."""
    shards: Shards | None = None
    """The shard count of the fleet the ledger serves, recorded at its first request of a
    sharded fleet; ``None`` for a ledger no sharded fleet has used (an older state too)."""
    pools: PoolState = Field(default_factory=PoolState)
    """A tenant shard's pools of fleet-wide budget leased from the root (hierarchical
    leases, :mod:`.pools`)."""


class CapacityError(ValueError):
    """A request the book cannot take without passing one of its size caps."""


def _json_size(data: Any) -> int:
    return len(json.dumps(data, separators=(",", ":"), default=str).encode())


def _add(totals: dict[str, float], amounts: dict[str, float], sign: float = 1.0) -> None:
    for resource, value in amounts.items():
        totals[resource] = totals.get(resource, 0.0) + sign * value


def _clean(value: float, ops: Ops = FLOAT_OPS) -> float:
    """Drop float residue: what is left of a counter after its last reservation went."""
    return ops.if_then_else(value < _EPSILON, 0.0, value)


def shared_refuses(committed: float, reserved: float, wanted: float, ceiling: float) -> bool:
    """The book's fit rule: a terminate limit refuses what would take its counter past it.

    Args:
        committed: The counter's committed amount (in its current window).
        reserved: The amount its open reservations hold.
        wanted: What the reservation asks of it (for a lease, the grant).
        ceiling: The limit's ceiling.

    Returns:
        Whether the reservation is refused.

    """
    return committed + reserved + wanted > ceiling + _EPSILON


def lease_grant(
    wanted: float,
    ceiling: float,
    committed: float,
    reserved: float,
    holders: int,
    max_share: float,
    minimum: float,
    ops: Ops = FLOAT_OPS,
) -> float:
    """What a lease is granted of one terminate limit's resource: a fair share of what is left.

    At most ``wanted``, at most ``1 / holders`` and ``max_share`` of what is left, but at
    least ``minimum`` (which the fit rule then refuses if it does not fit).

    Args:
        wanted: What the lease asks for.
        ceiling: The limit's ceiling.
        committed: Its counter's committed amount.
        reserved: What its counter's open reservations hold.
        holders: Open leases on the counter, this one included.
        max_share: The largest fraction of what is left one lease may take.
        minimum: The least the lease accepts.
        ops: :data:`~temporal_governor.accounting.FLOAT_OPS`, or the solver's.

    Returns:
        The grant.

    """
    left = ceiling - committed - reserved
    fair = ops.max(ops.min(left / holders, left * max_share), minimum)
    return ops.min(wanted, fair)


def _waiter_id(req: ReserveRequest) -> str:
    return req.waiter or req.key


def _digest(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def _roll(counter: Counter, now: float) -> None:
    if counter.window_s is None:
        return
    start = math.floor(now / counter.window_s) * counter.window_s
    if counter.window_start != start:
        counter.window_start = start
        counter.committed = 0.0


class LedgerBook:
    """The shared scopes' counters and reservations, and every rule that changes them.

    Args:
        state: What a previous run of the ledger carried (:meth:`pack` output, or a plain
            :class:`LedgerState` as JSON data); empty for a new ledger.
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = self.unpack(state)
        self.state.outcomes = {}
        self.packed_bytes = 0
        """The packed size at the last measurement."""
        self._grown = MEASURE_EVERY_BYTES  # measure before the first growth
        self._measured_at = 0.0
        self._waiters = Waiters(self.state.waiters)
        self.pools = Pools(self.state.pools)
        """The shard's pools of fleet-wide budget (hierarchical leases)."""
        self._lease_holders: dict[str, int] = {}
        """Counter id -> open lease reservations on it: an index of ``state.reservations``
        (never carried; rebuilt here), so a lease grant does not scan them all."""
        for reservation in self.state.reservations.values():
            self._index(reservation, 1)

    def _index(self, reservation: Reservation, sign: int) -> None:
        """Count an open lease reservation in (``1``) or out (``-1``) of :attr:`_lease_holders`."""
        if not reservation.lease:
            return
        holders = self._lease_holders
        for counter_id in reservation.counters:
            left = holders.get(counter_id, 0) + sign
            if left > 0:
                holders[counter_id] = left
            else:
                holders.pop(counter_id, None)

    def _pop(self, key: str) -> Reservation | None:
        """Take an open reservation out of the book (and of the lease index)."""
        reservation = self.state.reservations.pop(key, None)
        if reservation is not None:
            self._index(reservation, -1)
        return reservation

    @property
    def waiters(self) -> Waiters:
        """The queues of waiters (over ``state.waiters``)."""
        if self._waiters.waiters is not self.state.waiters:
            self._waiters = Waiters(self.state.waiters)
        return self._waiters

    # -- size -----------------------------------------------------------------------------

    def _grow(self, estimate: int, now: float) -> None:
        """Admit growth of about ``estimate`` bytes, or raise :class:`CapacityError`.

        Growth is counted pessimistically (as if incompressible) and the packed size is
        measured again every :data:`MEASURE_EVERY_BYTES`, so the packed state never passes
        :data:`MAX_PACKED_BYTES` by more than that plus one request.
        """
        over = self.packed_bytes > MAX_PACKED_BYTES
        if self._grown >= MEASURE_EVERY_BYTES or (over and now - self._measured_at >= 1.0):
            self.fit(now)
        if self.packed_bytes > MAX_PACKED_BYTES:
            raise CapacityError(f"state of {self.packed_bytes} bytes packed")
        self._grown += estimate

    def fit(self, now: float) -> int:
        """Measure the packed state; over its budget, forget what is only nice to have.

        Called as the state grows, at most once a second while it is over its budget (what
        settled or expired meanwhile may have freed room), and before every
        continue-as-new.

        Returns:
            The packed size in bytes.
        """
        self.packed_bytes = len(self.pack()["packed"])
        if self.packed_bytes > MAX_PACKED_BYTES:
            self.prune(now, squeeze=True)
            self.packed_bytes = len(self.pack()["packed"])
        self._grown, self._measured_at = 0, now
        return self.packed_bytes

    # -- carrying across continue-as-new ------------------------------------------------

    @staticmethod
    def unpack(data: dict[str, Any] | None) -> LedgerState:
        """The state from :meth:`pack` output or plain :class:`LedgerState` data."""
        if data and "packed" in data:
            raw = zlib.decompress(base64.b64decode(data["packed"]), bufsize=1 << 20)
            return LedgerState.model_validate_json(raw)
        return LedgerState.model_validate(data or {})

    def pack(self) -> dict[str, Any]:
        """The state as a small payload: compact JSON, compressed, base64."""
        raw = self.state.model_dump_json(exclude_defaults=True).encode()
        return {"packed": base64.b64encode(zlib.compress(raw, 6)).decode("ascii")}

    # -- reservations -------------------------------------------------------------------

    def reserve(self, req: ReserveRequest, now: float) -> ReserveResult:
        """Reserve in every scope of the request, or in none.

        A key already open answers with its reservation (``duplicate``); a key closed a
        short while ago answers as a duplicate that holds nothing.
        """
        open_ = self.state.reservations.get(req.key)
        if open_ is not None:
            return ReserveResult(key=req.key, granted=True, amounts=open_.amounts, duplicate=True)
        if _digest(req.key) in self.state.closed:
            # a late duplicate of a reservation already closed: hold nothing new
            return ReserveResult(key=req.key, granted=True, amounts={}, duplicate=True)
        refusal = self.shards_refusal(req.shards, req.limits, now)
        if refusal is not None:
            return ReserveResult(key=req.key, granted=False, refusal=refusal)
        if not req.limits and not req.amounts:
            return ReserveResult(key=req.key, granted=True)  # a registration: nothing held
        try:
            return self._reserve(req, now)
        except CapacityError as error:
            return ReserveResult(
                key=req.key,
                granted=False,
                refusal=LedgerRefusal(
                    limit=CAPACITY_LIMIT,
                    scope="ledger",
                    resource=str(error),
                    observed=0.0,
                    ceiling=0.0,
                    retry_after_s=1.0,
                ),
            )

    def _reserve(self, req: ReserveRequest, now: float) -> ReserveResult:
        if len(self.state.reservations) >= MAX_OPEN_RESERVATIONS:
            raise CapacityError(f"{MAX_OPEN_RESERVATIONS} open reservations")
        new = [lim for lim in req.limits if lim.counter not in self.state.counters]
        if len(self.state.counters) + len(new) > MAX_COUNTERS:
            self.prune(now)
            if len(self.state.counters) + len(new) > MAX_COUNTERS:
                raise CapacityError(f"{MAX_COUNTERS} counters")
        self._grow(
            len(req.key)
            + len(req.run)
            + len(req.tenant or "")
            + 64 * len(req.limits)
            + sum(2 * len(lim.counter) + len(lim.name) + 120 for lim in new),
            now,
        )
        grant: dict[str, float] = {str(r): float(v) for r, v in req.amounts.items()}
        upstream = [
            limit
            for limit in req.limits
            if req.upstream is not None and not limit.scope.startswith(TENANT_PREFIXES)
        ]
        counters: list[tuple[SharedLimit, Counter]] = []
        for limit in req.limits:
            if upstream and limit in upstream:
                continue  # drawn from the shard's pool, not counted here
            counter = self.state.counters.get(limit.counter)
            if counter is None:
                counter = Counter(
                    scope=limit.scope, resource=limit.resource, window_s=limit.window_s
                )
                self.state.counters[limit.counter] = counter
            counter.ceiling, counter.limit = limit.ceiling, limit.name
            _roll(counter, now)
            counters.append((limit, counter))
        asker = self._asker(req, counters, now)
        ahead = self._ahead(req, asker, counters, now) if asker is not None else {}
        if req.minimum is not None:
            grant = self._lease_grant(req, counters, ahead)
        for limit, counter in counters:
            if limit.on_breach != "terminate":
                continue
            want = grant.get(limit.resource, 0.0)
            held_ahead = ahead.get(limit.counter, 0.0)
            if shared_refuses(
                counter.committed, counter.reserved + held_ahead, want, limit.ceiling
            ):
                observed = counter.committed + counter.reserved + held_ahead + want
                retry = None
                spent = counter.committed + want > limit.ceiling + _EPSILON
                if spent and counter.window_s is not None and counter.window_start is not None:
                    # only the window's roll-over frees spend; reservations and capacity
                    # held for waiters free sooner
                    retry = max(0.0, counter.window_start + counter.window_s - now)
                if asker is not None and req.waits:
                    if retry is None:
                        retry = retry_for(held_ahead, limit.ceiling)
                    self._queue(req, asker, retry, now)
                return ReserveResult(
                    key=req.key,
                    granted=False,
                    refusal=LedgerRefusal(
                        limit=limit.name,
                        scope=limit.scope,
                        resource=limit.resource,
                        observed=observed,
                        ceiling=limit.ceiling,
                        committed=counter.committed,
                        retry_after_s=retry,
                    ),
                )
        pool_key: str | None = None
        pooled: dict[str, float] = {}
        if upstream:
            drawn = self._draw(req, upstream, grant, now)
            if isinstance(drawn, LedgerRefusal):
                return ReserveResult(key=req.key, granted=False, refusal=drawn)
            pool_key, pooled = drawn
        held: dict[str, float] = {}
        for limit, counter in counters:
            amount = grant.get(limit.resource, 0.0)
            counter.reserved += amount
            held[limit.counter] = held.get(limit.counter, 0.0) + amount
        reservation = Reservation(
            run=req.run,
            amounts=grant,
            counters=held,
            expires_at=now + req.ttl_s,
            lease=req.minimum is not None,
            tenant=req.tenant,
            pool=pool_key,
            pooled=pooled,
        )
        self.state.reservations[req.key] = reservation
        self._index(reservation, 1)
        if asker is not None:
            self.waiters.remove(_waiter_id(req))
        _add(self.state.granted, grant)
        return ReserveResult(key=req.key, granted=True, amounts=grant)

    def _draw(
        self,
        req: ReserveRequest,
        upstream: list[SharedLimit],
        grant: dict[str, float],
        now: float,
    ) -> tuple[str, dict[str, float]] | LedgerRefusal:
        """Draw the fleet-wide part of ``grant`` from the shard's pool, or refuse it dry.

        A lease gets what it asks for while the pool has it, or what is left (at least
        its minimum); ``grant`` is lowered to that. No share rule one level down: the
        pool is a capped share of the root already and is sized by what was asked of it,
        and splitting it further shrank each following lease and multiplied the shard's
        updates (measured: docs/benchmarks.md).
        """
        assert req.upstream is not None
        signature = signature_of(upstream)
        resources = sorted({str(limit.resource) for limit in upstream})
        asked: dict[str, float] = {str(r): float(v) for r, v in req.amounts.items()}
        least: dict[str, float] = {
            str(r): float(v) for r, v in (req.minimum or req.amounts).items()
        }
        pool = self.pools.active(signature, now)
        if pool is not None and pool.root != req.upstream:
            pool = None  # a pool of another root (the ledger's validator refuses that)
        if pool is not None and req.minimum is not None:
            for resource in resources:
                grant[resource] = min(
                    grant.get(resource, 0.0),
                    lease_grant(
                        grant.get(resource, 0.0),
                        pool.granted.get(resource, 0.0),
                        pool.used.get(resource, 0.0),
                        pool.held.get(resource, 0.0),
                        1,  # first come, first served within the pool: the pool is a
                        1.0,  # fair share of the root already, and sized by its demand
                        least.get(resource, 0.0),
                    ),
                )
        wanted = {resource: grant.get(resource, 0.0) for resource in resources}
        if pool is None or not pool.fits(wanted):
            self.pools.note_demand(
                signature,
                req.upstream,
                upstream,
                {r: asked.get(r, 0.0) for r in resources},
                {r: least.get(r, 0.0) for r in resources},
                req.ttl_s,
                req.max_share,
                req.shards,
                now,
                priority=req.priority,
            )
            return LedgerRefusal(
                limit=POOL_LIMIT,
                scope=f"ledger:{req.upstream}",
                resource=",".join(resources),
                observed=0.0,
                ceiling=0.0,
                retry_after_s=self.pools.fill_wait(signature, now),
            )
        self.pools.draw(pool, wanted, now)
        return pool.key, wanted

    # -- the fleet's shard count ------------------------------------------------------------

    def shards_refusal(
        self, shards: int | None, limits: list[SharedLimit], now: float
    ) -> LedgerRefusal | None:
        """Refuse a request whose fleet's shard count is not the one this ledger serves.

        Shard ledger ids carry their count, so a fleet whose ``shared.shards`` changes
        reads fresh shards: its tenant budgets would start afresh (or stay stranded on
        the old shards). The ledger therefore records the count of the first sharded
        request (the root at a run's registration, a shard at its first reservation) and
        refuses, for good:

        - a request of another count than the recorded one;
        - a sharded request that touches no tenant scope (one for the root) while the
          ledger, with no recorded count, keeps tenant budgets: it was used unsharded,
          and the fleet went from 1 to N shards;
        - an unsharded request that touches tenant scopes while the ledger records
          N > 1: the fleet went from N shards to 1.

        Args:
            shards: The request's count (``None``: an unsharded fleet's request).
            limits: The limits the request touches.
            now: Epoch seconds (to judge whether a windowed budget is still current).

        Returns:
            The refusal (:data:`SHARDS_LIMIT`), or ``None`` (a first count is recorded).
        """
        recorded = self.state.shards
        tenants = any(limit.scope.startswith(TENANT_PREFIXES) for limit in limits)
        if shards is None:
            if recorded is not None and tenants:
                return _shards_refused(recorded, 1)
            return None
        if recorded is None:
            if not tenants and self.keeps_tenant_budgets(now):
                return _shards_refused(1, shards)
            self.state.shards = shards
            return None
        return _shards_refused(recorded, shards) if shards != recorded else None

    def keeps_tenant_budgets(self, now: float) -> bool:
        """Whether a tenant or owner scope holds a budget (reserved, or spent in a total).

        Spend in a window that has ended counts for nothing: that budget is new anyway.
        """
        for counter in self.state.counters.values():
            if not counter.scope.startswith(TENANT_PREFIXES):
                continue
            if counter.reserved > _EPSILON:
                return True
            current = counter.window_s is None or (
                counter.window_start is not None and counter.window_start + counter.window_s > now
            )
            if current and counter.committed > _EPSILON:
                return True
        return False

    # -- waiters --------------------------------------------------------------------------

    def _asker(
        self, req: ReserveRequest, counters: list[tuple[SharedLimit, Counter]], now: float
    ) -> Waiter | None:
        """The caller as a waiter (queued or not); ``None`` for a caller without a class."""
        if req.priority is None:
            return None
        self.waiters.drop_stale(now)
        needs: dict[str, float] = {}
        each = req.minimum if req.minimum is not None else req.amounts
        for limit, _ in counters:
            need = float(each.get(limit.resource, 0.0))
            if limit.on_breach == "terminate" and need > _EPSILON:
                needs[limit.counter] = needs.get(limit.counter, 0.0) + need
        first = now - req.waited_s
        queued = self.waiters.get(_waiter_id(req))
        if queued is not None:
            first = min(first, queued.first)
        return Waiter(
            run=req.run,
            tenant=req.tenant or "",
            rank=req.priority,
            first=first,
            last=now,
            needs=needs,
            aging_s=req.aging_s,
        )

    def _ahead(
        self,
        req: ReserveRequest,
        asker: Waiter,
        counters: list[tuple[SharedLimit, Counter]],
        now: float,
    ) -> dict[str, float]:
        """Counter id -> what it holds for eligible waiters ranked ahead of the caller."""
        if not len(self.waiters):
            return {}
        ahead: dict[str, float] = {}
        for limit, _ in counters:
            if limit.on_breach != "terminate" or limit.counter in ahead:
                continue
            ahead[limit.counter] = self.waiters.ahead(
                _waiter_id(req),
                asker,
                limit.counter,
                now,
                lambda waiter, counter: self._eligible(waiter, counter, now),
                self._tenant_holdings,
            )
        return ahead

    def _room(self, counter_id: str, now: float, *, held: bool = True, spent: bool = True) -> float:
        """What a counter has left now.

        Args:
            counter_id: The counter id.
            now: Epoch seconds (a window that has rolled by then is spent nothing).
            held: Count what open reservations hold (``False``: once they are gone).
            spent: Count what the current window (or total) has spent (``False``: at
                best, ever).
        """
        counter = self.state.counters.get(counter_id)
        if counter is None or counter.ceiling is None:
            return math.inf
        committed = counter.committed if spent else 0.0
        if counter.window_s is not None:
            rolled = math.floor(now / counter.window_s) * counter.window_s
            if counter.window_start != rolled:
                committed = 0.0
        reserved = counter.reserved if held else 0.0
        return counter.ceiling - committed - reserved

    def _eligible(self, waiter: Waiter, counter_id: str, now: float) -> bool:
        """Capacity of ``counter_id`` is held for the waiter: nothing else blocks it.

        On ``counter_id`` itself its need must fit once the open reservations are gone,
        within the current window's spend (what only a roll-over frees is not held).
        """
        for other, need in waiter.needs.items():
            if other == counter_id:
                if need > self._room(other, now, held=False) + _EPSILON:
                    return False
            elif need > self._room(other, now) + _EPSILON:
                return False
        return True

    def _tenant_holdings(self, counter_id: str) -> dict[str, float]:
        held: dict[str, float] = {}
        for reservation in self.state.reservations.values():
            amount = reservation.counters.get(counter_id)
            if amount is not None and reservation.tenant is not None:
                held[reservation.tenant] = held.get(reservation.tenant, 0.0) + amount
        return held

    def _queue(self, req: ReserveRequest, asker: Waiter, retry: float, now: float) -> None:
        """Queue (or refresh) a refused caller that waits; skipped when the book is full."""
        if not asker.needs or any(
            need > self._room(counter, now, held=False, spent=False) + _EPSILON
            for counter, need in asker.needs.items()
        ):
            self.waiters.remove(_waiter_id(req))
            return  # it never fits: holding anything for it would only block others
        id_ = _waiter_id(req)
        if self.waiters.get(id_) is None:
            try:
                self._grow(
                    len(id_)
                    + len(req.run)
                    + len(asker.tenant)
                    + sum(len(c) + 24 for c in asker.needs)
                    + 100,
                    now,
                )
            except CapacityError:
                return  # the caller keeps its age (``waited_s``) and asks again
        asker.retry = retry
        self.waiters.put(id_, asker, now)

    def _lease_grant(
        self,
        req: ReserveRequest,
        counters: list[tuple[SharedLimit, Counter]],
        ahead: dict[str, float],
    ) -> dict[str, float]:
        """Never lease more than a fair share of what is left, and at least the minimum."""
        assert req.minimum is not None
        minimum: dict[str, float] = {str(r): float(v) for r, v in req.minimum.items()}
        grant: dict[str, float] = {str(r): float(v) for r, v in req.amounts.items()}
        # lease holders per counter (this lease included), from the index: a scan of the
        # open reservations made every grant cost O(open reservations)
        holders = {
            limit.counter: 1 + self._lease_holders.get(limit.counter, 0)
            for limit, _ in counters
            if limit.on_breach == "terminate"
        }
        for limit, counter in counters:
            if limit.on_breach != "terminate":
                continue
            grant[limit.resource] = lease_grant(
                grant.get(limit.resource, 0.0),
                limit.ceiling,
                counter.committed,
                counter.reserved + ahead.get(limit.counter, 0.0),
                holders[limit.counter],
                req.max_share,
                minimum.get(limit.resource, 0.0),
            )
        return grant

    def settle(self, req: SettleRequest, now: float) -> SettleResult:
        """Commit the actual usage of a reservation and release the rest.

        A reservation that expired (and was charged in full) is corrected to its actual
        usage, in the windows it was charged in; an unknown key changes nothing.
        """
        actual: dict[str, float] = {
            str(r): float(v) for r, v in req.actual.items() if r != "concurrency"
        }
        reservation = self._pop(req.key)
        if reservation is None:
            return self._settle_expired(req.key, actual)
        if reservation.pool is not None:
            self.pools.give_back(reservation.pool, reservation.pooled, actual)
        for counter_id, held in reservation.counters.items():
            counter = self.state.counters[counter_id]
            _roll(counter, now)
            counter.reserved = _clean(counter.reserved - held)
            counter.committed += actual.get(counter.resource, 0.0)
        released = {r: v - actual.get(r, 0.0) for r, v in reservation.amounts.items()}
        _add(self.state.committed, actual)
        _add(self.state.released, released)
        self._close(req.key, now)
        return SettleResult(key=req.key, settled=True, committed=actual, released=released)

    def _settle_expired(self, key: str, actual: dict[str, float]) -> SettleResult:
        expired = self.state.expired.pop(_digest(key), None)
        if expired is None:
            return SettleResult(key=key, settled=False)
        for counter_id, (charged, window_start) in expired.counters.items():
            counter = self.state.counters.get(counter_id)
            if counter is None:
                continue
            if counter.window_s is not None and counter.window_start != window_start:
                continue  # that window is closed: nothing left to correct
            counter.committed = _clean(
                counter.committed - charged + actual.get(counter.resource, 0.0)
            )
        if expired.pool is not None:
            self.pools.correct(expired.pool, expired.pooled, actual)
        correction = {r: actual.get(r, 0.0) - v for r, v in expired.amounts.items()}
        _add(self.state.committed, correction)
        _add(self.state.released, {r: -v for r, v in correction.items()})
        released = {r: v - actual.get(r, 0.0) for r, v in expired.amounts.items()}
        return SettleResult(key=key, settled=True, committed=actual, released=released, late=True)

    def release_run(self, req: ReleaseRunRequest, now: float) -> int:
        """Settle the listed reservations of an ending run and release its others.

        Returns:
            How many reservations were settled or released.
        """
        done = 0
        for key, actual in req.settlements.items():
            owned = self.state.reservations.get(key)
            if owned is not None and owned.run != req.run:
                continue  # never settle another run's reservation
            if self.settle(SettleRequest(key=key, actual=actual), now).settled:
                done += 1
        if req.release_rest:
            for key in [k for k, r in self.state.reservations.items() if r.run == req.run]:
                self._release(key, now)
                done += 1
            self.waiters.remove_run(req.run)
        return done

    def extend(self, req: ExtendRequest, now: float) -> int:
        """Push back the expiry of every open reservation of a live run.

        Returns:
            How many reservations were extended.
        """
        extended = 0
        for reservation in self.state.reservations.values():
            if reservation.run == req.run:
                reservation.expires_at = max(reservation.expires_at, now + req.ttl_s)
                extended += 1
        return extended

    def _release(self, key: str, now: float) -> None:
        reservation = self._pop(key)
        assert reservation is not None
        if reservation.pool is not None:
            self.pools.give_back(reservation.pool, reservation.pooled, {})
        for counter_id, held in reservation.counters.items():
            counter = self.state.counters[counter_id]
            counter.reserved = _clean(counter.reserved - held)
        _add(self.state.released, reservation.amounts)
        self._close(key, now)

    def expire(self, now: float) -> int:
        """Charge every reservation past its ``ttl_s`` in full: its run never settled it.

        What a run that died (terminated from outside, timed out) really spent is unknown,
        and the governor never assumes money was not spent. A late settle corrects it.

        Returns:
            How many reservations expired.
        """
        keys = [k for k, r in self.state.reservations.items() if r.expires_at <= now]
        for key in keys:
            reservation = self._pop(key)
            assert reservation is not None
            charged: dict[str, list[float]] = {}
            for counter_id, held in reservation.counters.items():
                counter = self.state.counters[counter_id]
                _roll(counter, now)
                counter.reserved = _clean(counter.reserved - held)
                amount = held if counter.resource != "concurrency" else 0.0
                counter.committed += amount
                start = counter.window_start if counter.window_start is not None else -1.0
                charged[counter_id] = [amount, start]
            amounts = {r: v for r, v in reservation.amounts.items() if r != "concurrency"}
            _add(self.state.committed, amounts)
            _add(
                self.state.released,
                {r: v - amounts.get(r, 0.0) for r, v in reservation.amounts.items()},
            )
            if reservation.pool is not None:  # charged in full: what it held counts as used
                self.pools.give_back(reservation.pool, reservation.pooled, reservation.pooled)
            self.state.expired[_digest(key)] = Expired(
                amounts=amounts,
                counters=charged,
                at=now,
                pool=reservation.pool,
                pooled=reservation.pooled,
            )
            self._close(key, now)
        return len(keys)

    def next_expiry(self) -> float | None:
        """When the soonest open reservation expires (epoch seconds), if any."""
        if not self.state.reservations:
            return None
        return min(r.expires_at for r in self.state.reservations.values())

    def _close(self, key: str, now: float) -> None:
        closed = self.state.closed
        closed[_digest(key)] = now
        while len(closed) > MAX_CLOSED:
            del closed[next(iter(closed))]

    # -- pruning ------------------------------------------------------------------------

    def prune(self, now: float, squeeze: bool = False) -> None:
        """Forget what no longer matters: closed windows, idle counters, old memories.

        With ``squeeze`` (the state is over its budget) also forget what is only nice to
        have: expired reservations (a late settle then changes nothing), closed-key digests
        and the older half of the spend baselines.
        """
        self.waiters.drop_stale(now)
        if squeeze:
            self.waiters.clear()  # soft state: callers keep their age and ask again
            self.state.expired.clear()
            self.state.closed.clear()
            baselines = self.state.baselines
            for key in list(baselines)[: len(baselines) // 2]:
                del baselines[key]
        counters = self.state.counters
        held = {c for r in self.state.reservations.values() for c in r.counters}
        remembered = {c for e in self.state.expired.values() for c in e.counters}
        for counter_id in list(counters):
            counter = counters[counter_id]
            if counter_id in held or counter.reserved > _EPSILON:
                continue
            ended = (
                counter.window_s is not None
                and counter.window_start is not None
                and counter.window_start + counter.window_s <= now
                and counter_id not in remembered
            )
            idle = counter.committed <= _EPSILON and counter_id not in remembered
            if ended or idle:
                del counters[counter_id]
        _drop_old(self.state.expired, lambda e: e.at, now - EXPIRED_KEEP_S, MAX_EXPIRED)
        _drop_old(self.state.closed, lambda at: at, now - CLOSED_KEEP_S, MAX_CLOSED)
        for scope in list(self.state.controls):
            stored = self.state.controls[scope]
            kill, resume = stored.get("governor.kill"), stored.get("governor.resume")
            if (
                resume is not None
                and (kill is None or resume.recorded_at_ms >= kill.recorded_at_ms)
                and resume.recorded_at_ms <= (now - CONTROL_KEEP_S) * 1000
            ):
                del self.state.controls[scope]

    # -- fleet controls and baselines ---------------------------------------------------

    def record_control(self, req: ControlRecordRequest, now: float) -> StoredControl:
        """Keep the latest kill or resume of a scope."""
        if req.scope not in self.state.controls:
            self.prune(now)
            if len(self.state.controls) >= MAX_CONTROL_SCOPES:
                raise CapacityError(
                    f"the ledger keeps fleet controls of at most {MAX_CONTROL_SCOPES} scopes"
                )
        size = _json_size(req.message)
        kept = sum(
            _json_size(stored.message)
            for scope, signals in self.state.controls.items()
            for signal, stored in signals.items()
            if (scope, signal) != (req.scope, req.signal)
        )
        if kept + size > MAX_CONTROLS_BYTES:
            raise CapacityError(
                f"stored fleet controls would take {kept + size} bytes, "
                f"above the ledger's {MAX_CONTROLS_BYTES}"
            )
        self._grow(size + len(req.scope.encode()) + 64, now)
        stored = StoredControl(message=req.message, recorded_at_ms=int(now * 1000))
        self.state.controls.setdefault(req.scope, {})[req.signal] = stored
        return stored

    def stored_controls(self, scopes: list[str], since_ms: int) -> StoredControls:
        """Stored kills and resumes of ``scopes`` recorded after ``since_ms``."""
        found: StoredControls = {}
        for scope in scopes:
            for signal, stored in self.state.controls.get(scope, {}).items():
                if stored.recorded_at_ms > since_ms:
                    found.setdefault(scope, {})[signal] = stored
        return found

    def controls_since(self, scopes: list[str], since_ms: int) -> dict[str, dict[str, Any]]:
        """:meth:`stored_controls` as JSON data."""
        return {
            scope: {signal: stored.model_dump(mode="json") for signal, stored in by.items()}
            for scope, by in self.stored_controls(scopes, since_ms).items()
        }

    def baselines(self, req: BaselineRequest) -> dict[str, Any]:
        """The baselines of some keys (those never observed are left out)."""
        return {
            key: self.state.baselines[key].model_dump(mode="json")
            for key in req.keys
            if key in self.state.baselines
        }

    def observe(self, req: ObserveRequest, now: float = 0.0) -> dict[str, Any]:
        """Fold a finished run's values into their baselines; returns the new baselines."""
        updated = {}
        baselines = self.state.baselines
        for key, value in req.values.items():
            if key not in baselines:
                try:
                    self._grow(len(key.encode()) + 120, now)
                except CapacityError:
                    continue  # advisory: no new baseline while the state is over its budget
            known = baselines.pop(key, None)  # re-inserted last: least recently updated first
            baseline = (
                SpendBaseline.from_state(known)
                if known is not None
                else SpendBaseline(alpha=req.alpha, min_samples=req.min_samples)
            )
            baseline.update(value)
            baselines[key] = baseline.state()
            updated[key] = baselines[key].model_dump(mode="json")
        while len(baselines) > MAX_BASELINES:
            del baselines[next(iter(baselines))]
        return updated

    # -- views --------------------------------------------------------------------------

    def view(self, scope_prefix: str, now: float) -> dict[str, Any]:
        """Counters (of scopes starting with ``scope_prefix``), open reservations, totals."""
        counters = []
        for counter_id, counter in self.state.counters.items():
            if not counter.scope.startswith(scope_prefix):
                continue
            shown = counter.model_copy()
            _roll(shown, now)
            counters.append({"id": counter_id, **shown.model_dump(mode="json")})
        reserved: dict[str, float] = {}
        for reservation in self.state.reservations.values():
            _add(reserved, reservation.amounts)
        return {
            "counters": counters,
            "open_reservations": len(self.state.reservations),
            "reserved": reserved,
            "granted": self.state.granted,
            "committed": self.state.committed,
            "released": self.state.released,
            "expired_unsettled": len(self.state.expired),
            "waiters": len(self.state.waiters),
            "shards": self.state.shards,
            "pools": self.pools.view(),
            "pools_asked": self.state.pools.asks,
        }


def _shards_refused(recorded: int, asked: int) -> LedgerRefusal:
    return LedgerRefusal(
        limit=SHARDS_LIMIT,
        scope="ledger",
        resource="shards",
        observed=float(asked),
        ceiling=float(recorded),
    )


def _drop_old(items: dict[str, Any], at: Any, before: float, most: int) -> None:
    """Drop entries of an oldest-first dict older than ``before``, and beyond ``most``."""
    while items:
        first = next(iter(items))
        if len(items) > most or at(items[first]) < before:
            del items[first]
        else:
            break


__all__ = [
    "CAPACITY_LIMIT",
    "MAX_CONTROL_BYTES",
    "MAX_SETTLEMENTS",
    "MAX_TTL_S",
    "MAX_WAITERS_KEPT",
    "SHARDS_LIMIT",
    "BaselineRequest",
    "CapacityError",
    "ControlRecordRequest",
    "Counter",
    "ExtendRequest",
    "LedgerBook",
    "LedgerRefusal",
    "LedgerState",
    "ObserveRequest",
    "ReadControlsRequest",
    "ReleaseRunRequest",
    "Reservation",
    "ReserveRequest",
    "ReserveResult",
    "SettleRequest",
    "SettleResult",
    "StoredControl",
    "StoredControls",
    "lease_grant",
    "shared_refuses",
]
