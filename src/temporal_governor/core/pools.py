"""A tenant shard's pools: chunks of fleet-wide budget it leases from the root ledger.

With hierarchical leases (``shared.hierarchical_leases``) a run sends the fleet-wide part
of a dispatch (a ``global``, agent or tool limit) to its tenant's shard together with the
tenant part, in one reservation. The shard grants the fleet-wide part out of a **pool**:
a lease it holds on the root ledger, taken with the root's own lease protocol (a fair
share of what is left, at most ``max_share`` of it). So the global ceiling holds exactly
(the root never grants more than it has, and a shard never grants more than its pool),
while the root sees a pool's ask, renewal and settlement instead of every run's.

A pool that cannot cover a request refuses it with :data:`POOL_LIMIT` and holds nothing,
telling the run to wait a moment (:meth:`Pools.fill_wait`) while the shard asks for a
pool, or to reserve the fleet-wide part on the root itself, as without pools: a dry pool
never halts a dispatch, and delays it by at most about a second. The refusal is noted as
**demand**: the shard's workflow (outside its update handlers, which never wait) asks the
root for a pool and the next requests draw from it.

A pool is retired (no new grant from it) when it is half its TTL old, when it no longer
covers what is asked of it, or when nobody drew from it for :data:`POOL_IDLE_S`; a retired
pool still held is trimmed to what its holders hold (a new pool of exactly that, the
holders moved to it); once the reservations drawn from it are settled it is settled on
the root with what they really used. What a run's expired reservation is charged (in
full) counts as used.

This module is the bookkeeping and its decisions, with no ``temporalio`` import; the
ledger's book (:mod:`.book`) draws from it and the ledger workflow sends the calls
:meth:`Pools.work` lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .scopes import SharedLimit

POOL_LIMIT = "shared.pool"
"""The limit of a refusal that only says "this shard's pool cannot cover it": nothing is
held, and the run reserves the fleet-wide part on the root instead."""

POOL_START = 2
"""A shard's first pool of a set of limits asks the root for this many times the request
that found it dry (the root's fair-share rule may grant less, never less than that one
request). The multiple then adapts per set of limits: doubled each time a pool ran out,
halved each time one went idle, between :data:`POOL_MIN` and :data:`POOL_MAX`, so a busy
shard asks rarely and a quiet one holds little of the fleet's budget idle."""

POOL_MIN = 1
"""The smallest multiple a pool asks for."""

POOL_MAX = 100
"""The largest multiple a pool asks for."""

POOL_IDLE_S = 10.0
"""An active pool nobody drew from for this long is retired and settled: budget idle in a
shard's pool is budget other shards cannot use."""

DEMAND_KEEP_S = 30.0
"""A dry refusal is remembered as demand this long (no ask after it: nobody needs it)."""

ASK_BACKOFF_S = 1.0
"""Pause before asking the root again after it refused; after calls it could not answer,
the pause doubles up to :data:`MAX_BACKOFF_S`."""

MAX_BACKOFF_S = 30.0
"""Longest pause between two calls to a root that does not answer."""

ASK_GIVE_UP_S = 120.0
"""An ask unanswered for this long is given up: the pool it may have left on the root is
charged there in full when its TTL passes (the safe side), and the demand is dropped."""

FILL_WAIT_S = 0.25
"""How long a request that found the pool dry is told to wait before asking the shard
again, while the shard is asking the root for a pool (``retry_after_s`` of its refusal);
none when the root refused the last ask: the run then reserves on the root at once."""

MAX_POOL_AMOUNT = 1e15
"""The most of one resource a pool asks for (the ledger's ``MAX_AMOUNT``)."""

MAX_POOLS = 64
"""Most pools (active and retired) one shard holds; beyond, requests find it dry."""

MAX_DEMAND = 64
"""Most signatures one shard keeps demand for."""

MIN_PAUSE_S = 0.5
"""The shortest pause between two rounds of :meth:`Pools.work` that a timer asks for."""

_EPSILON = 1e-9


def left_of(
    granted: Mapping[str, float],
    used: Mapping[str, float],
    held: Mapping[str, float],
    resource: str,
) -> float:
    """What is left of a chunk of budget (a run's lease, a shard's pool) for ``resource``."""
    return granted.get(resource, 0.0) - used.get(resource, 0.0) - held.get(resource, 0.0)


def fits_in(
    granted: Mapping[str, float],
    used: Mapping[str, float],
    held: Mapping[str, float],
    wanted: Mapping[str, float],
) -> bool:
    """Whether every amount of ``wanted`` fits in what is left of a chunk of budget."""
    return all(left_of(granted, used, held, r) >= v - _EPSILON for r, v in wanted.items())


def signature_of(limits: list[SharedLimit]) -> str:
    """What identifies the fleet-wide limits a pool covers: counters and ceilings, sorted."""
    return "|".join(sorted(f"{limit.counter}@{limit.ceiling!r}" for limit in limits))


def pool_run(owner: str) -> str:
    """The ``run`` of a shard's pool reservations on the root (released together)."""
    return f"{owner}/pools"


class Pool(BaseModel):
    """One lease a shard holds on the root, drawn from by the shard's reservations."""

    model_config = ConfigDict(extra="forbid")

    key: str
    """Its reservation key on the root."""
    root: str
    """The root ledger's workflow id."""
    signature: str
    granted: dict[str, float]
    used: dict[str, float] = Field(default_factory=dict)
    """What settled (or expired) reservations drawn from it really used."""
    held: dict[str, float] = Field(default_factory=dict)
    """What open reservations drawn from it hold."""
    holders: int = 0
    """Open reservations drawn from it."""
    taken_at: float
    expires_at: float
    """When the root charges it in full unless renewed (epoch seconds)."""
    ttl_s: float
    used_at: float
    """When a reservation last drew from it."""
    retired: bool = False
    settle_after: float = 0.0
    """After a settlement the root did not answer: when to send it again."""
    settle_failures: int = 0
    limits: list[SharedLimit] = Field(default_factory=list)
    """The fleet-wide limits it covers (for a trim's ask)."""
    trimming: str | None = None
    """The key of the ask for its trimmed successor, while it is out."""
    trim_tried: bool = False
    """A trim was asked for and refused: it stays as it is until drained."""

    def left(self, resource: str) -> float:
        """What is left of the pool for ``resource``."""
        return left_of(self.granted, self.used, self.held, resource)

    def fits(self, wanted: Mapping[str, float]) -> bool:
        """Whether every amount of ``wanted`` fits in what is left."""
        return fits_in(self.granted, self.used, self.held, wanted)

    def drained(self) -> bool:
        """No open reservation draws from it."""
        return self.holders <= 0

    def usable(self, now: float) -> bool:
        """Active, younger than half its TTL and not about to expire on the root."""
        return (
            not self.retired
            and now - self.taken_at <= self.ttl_s / 2
            and self.expires_at - now > self.ttl_s / 4
        )

    def settlement(self) -> dict[str, float]:
        """What settling it on the root commits: what its reservations really used.

        That can pass what was granted (a dispatch that spent more than its estimate):
        the root commits the actual, as it does for a run's own lease.
        """
        return {r: self.used.get(r, 0.0) for r in sorted(set(self.granted) | set(self.used))}


class PoolDemand(BaseModel):
    """Requests a shard found dry, by signature: what its next pool ask is made of."""

    model_config = ConfigDict(extra="forbid")

    root: str
    limits: list[SharedLimit]
    amounts: dict[str, float]
    """What the dry requests since the last ask asked, together (of the pooled resources):
    the next pool asks a multiple of it, so a burst of runs gets one pool, not one each."""
    minimum: dict[str, float]
    """The least a pool must hold to cover that request."""
    ttl_s: float
    max_share: float
    shards: int | None = None
    at: float
    """When it was last refused dry."""
    priority: int | None = None
    """The best (lowest) priority rank among the dry requests that carried one: the ask
    takes its place in the root's queues of waiters with it, never ahead of them."""
    backoff_until: float = 0.0
    failures: int = 0
    """Calls of the current ask the root could not answer, in a row."""
    asking: str | None = None
    """The key of an ask whose answer is not in yet: asked again with the same key, so
    that a lost answer never leaves a second pool on the root."""
    refused: bool = False
    """The root refused its last ask (its budget is short): requests reserve there."""
    asked_at: float | None = None
    """When the ask of ``asking`` was first sent: the root took it no sooner, so a pool
    it answers is timed from then (its expiry on the root is no earlier)."""


class PoolState(BaseModel):
    """Everything a shard keeps of its pools; part of the ledger's state."""

    model_config = ConfigDict(extra="forbid")

    pools: dict[str, Pool] = Field(default_factory=dict)
    """Pool key -> pool."""
    demand: dict[str, PoolDemand] = Field(default_factory=dict)
    """Signature -> what was asked of a dry pool."""
    asks: int = 0
    """Pool asks so far (numbers their keys)."""
    scale: dict[str, int] = Field(default_factory=dict)
    """Signature -> the multiple of a dry request its next pool asks for (adaptive)."""
    moved: dict[str, str] = Field(default_factory=dict)
    """Key of a trimmed pool -> the key of the pool its holders moved to."""
    abandoned: dict[str, str] = Field(default_factory=dict)
    """Key of an ask given up -> its root: settled there with nothing used (so a pool the
    root granted but the shard never learnt of is released, not renewed with the rest)."""
    thin: dict[str, float] = Field(default_factory=dict)
    """Signature -> until when its pools are thin (the root's fair share granted less than
    half the ask: its budget is short), so dry requests go to the root without waiting."""


@dataclass(frozen=True)
class PoolCall:
    """One call the shard's workflow makes to the root for its pools.

    ``update`` is ``reserve`` (an ask: ``request`` is the reservation's fields),
    ``settle`` or ``extend``.
    """

    update: str
    root: str
    request: dict[str, Any]
    signature: str = ""
    """For an ask: the demand it answers."""
    trim_of: str = ""
    """For an ask that trims a pool: the key of the pool it replaces."""


def _backoff(failures: int) -> float:
    return float(min(MAX_BACKOFF_S, ASK_BACKOFF_S * 2 ** min(failures - 1, 10)))


class _Backoffs:
    """Calls the root did not answer, by what they were for: when to try each again.

    Soft state (not carried across continue-as-new: the next run tries at once).
    """

    def __init__(self) -> None:
        self._failures: dict[str, int] = {}
        self._after: dict[str, float] = {}

    def failed(self, key: str, now: float) -> None:
        """One more unanswered call for ``key``: wait twice as long as last time."""
        self._failures[key] = self._failures.get(key, 0) + 1
        self._after[key] = now + _backoff(self._failures[key])

    def after(self, key: str, default: float = 0.0) -> float:
        """When to try ``key`` again (``default`` when nothing failed)."""
        return self._after.get(key, default)

    def forget(self, key: str) -> None:
        """A call for ``key`` went through."""
        self._failures.pop(key, None)
        self._after.pop(key, None)


def _ask(
    key: str,
    owner: str,
    amounts: Mapping[str, float],
    minimum: Mapping[str, float],
    limits: list[SharedLimit],
    ttl_s: float,
    max_share: float,
) -> dict[str, Any]:
    """The fields of a lease the shard asks of the root (a ``reserve`` with ``minimum``)."""
    return {
        "key": key,
        "run": pool_run(owner),
        "amounts": dict(amounts),
        "minimum": dict(minimum),
        "limits": [limit.model_dump(mode="json") for limit in limits],
        "ttl_s": ttl_s,
        "max_share": max_share,
    }


def _settle_of(pool: Pool) -> dict[str, Any]:
    return {"key": pool.key, "actual": pool.settlement()}


class Pools:
    """The pool bookkeeping of one shard's book (its state is :class:`PoolState`)."""

    def __init__(self, state: PoolState) -> None:
        self.state = state
        self.dirty = False
        """Something for :meth:`work` to do arrived since it last ran (wakes the workflow)."""
        self._renewals = _Backoffs()
        """By root: renewals there the root did not answer."""
        self._releases = _Backoffs()
        """By key: settlements of abandoned asks the root did not answer."""

    # -- drawing, inside update handlers --------------------------------------------------

    def active(self, signature: str, now: float) -> Pool | None:
        """The usable pool of ``signature``; a pool no longer usable is retired here."""
        for pool in self.state.pools.values():
            if pool.signature != signature or pool.retired:
                continue
            if pool.usable(now):
                return pool
            self._retire(pool)
        return None

    def note_demand(
        self,
        signature: str,
        root: str,
        limits: list[SharedLimit],
        amounts: Mapping[str, float],
        minimum: Mapping[str, float],
        ttl_s: float,
        max_share: float,
        shards: int | None,
        now: float,
        priority: int | None = None,
    ) -> None:
        """A request found the pool of ``signature`` dry: ask the root for one."""
        demand = self.state.demand.get(signature)
        if demand is None:
            if len(self.state.demand) >= MAX_DEMAND:
                return
            demand = PoolDemand(
                root=root,
                limits=limits,
                amounts={},
                minimum={},
                ttl_s=ttl_s,
                max_share=max_share,
                shards=shards,
                at=now,
            )
            self.state.demand[signature] = demand
        if demand.asking is None and not demand.refused:  # the next ask: every dry
            for resource, value in amounts.items():  # request's, so a burst gets one pool
                total = demand.amounts.get(resource, 0.0) + value
                demand.amounts[resource] = min(total, MAX_POOL_AMOUNT)
        for resource, value in minimum.items():
            demand.minimum[resource] = max(demand.minimum.get(resource, 0.0), value)
        if priority is not None:
            demand.priority = (
                priority if demand.priority is None else min(demand.priority, priority)
            )
        demand.at = now
        self.dirty = True

    def fill_wait(self, signature: str, now: float) -> float | None:
        """How long a request that found ``signature``'s pool dry should wait for it.

        ``None`` (reserve on the root now) unless the shard is about to ask the root: not
        when the root refused the last ask, granted a thin pool a moment ago, or did not
        answer (the shard waits before asking again), nor when the shard holds as many
        pools as it may.
        """
        demand = self.state.demand.get(signature)
        if (
            demand is None
            or demand.refused
            or demand.failures > 0
            or demand.backoff_until > now
            or self.state.thin.get(signature, 0.0) > now
            or len(self.state.pools) >= MAX_POOLS
        ):
            return None
        return FILL_WAIT_S

    def draw(self, pool: Pool, amounts: Mapping[str, float], now: float) -> None:
        """A reservation takes ``amounts`` out of ``pool``."""
        for resource, value in amounts.items():
            pool.held[resource] = pool.held.get(resource, 0.0) + value
        pool.holders += 1
        pool.used_at = now

    def give_back(
        self, key: str | None, pooled: Mapping[str, float], actual: Mapping[str, float]
    ) -> None:
        """A reservation drawn from pool ``key`` holding ``pooled`` ended having used ``actual``."""
        pool = self._pool_of(key)
        if pool is None:
            return  # settled on the root already: nothing to correct here
        for resource, value in pooled.items():
            pool.held[resource] = max(0.0, pool.held.get(resource, 0.0) - value)
            pool.used[resource] = pool.used.get(resource, 0.0) + actual.get(resource, 0.0)
        pool.holders -= 1
        if pool.retired and pool.drained():
            self.dirty = True

    def correct(
        self, key: str | None, charged: Mapping[str, float], actual: Mapping[str, float]
    ) -> None:
        """A late settle of an expired reservation: it used ``actual``, not ``charged``."""
        pool = self._pool_of(key)
        if pool is None:
            return  # the pool was settled with the full charge: the root keeps it (safe side)
        for resource, value in charged.items():
            corrected = pool.used.get(resource, 0.0) - value + actual.get(resource, 0.0)
            pool.used[resource] = max(0.0, corrected)

    def _pool_of(self, key: str | None) -> Pool | None:
        """The pool a reservation drew from, following trims (its holders moved on)."""
        while key is not None and key in self.state.moved:
            key = self.state.moved[key]
        return self.state.pools.get(key) if key is not None else None

    def _retire(self, pool: Pool) -> None:
        pool.retired = True
        if pool.drained():
            self.dirty = True

    # -- the workflow's side: calls to the root ------------------------------------------------

    def work(self, owner: str, now: float) -> list[PoolCall]:
        """The calls to make to the root now: settlements, one renewal, asks.

        Args:
            owner: The shard's workflow id (pool keys and their ``run`` on the root).
            now: The workflow's clock.
        """
        self.dirty = False
        calls: list[PoolCall] = []
        for pool in self.state.pools.values():
            # idle: nobody drew from it for a while, held or not (a run's lease drawn from
            # it may last minutes; the pool's rest must not sit idle as long)
            idle = now - pool.used_at > POOL_IDLE_S
            if not pool.retired and (idle or not pool.usable(now)):
                pool.retired = True
                if idle:
                    self._rescale(pool.signature, shrink=True)
            if pool.retired and pool.drained() and pool.settle_after <= now:
                calls.append(PoolCall("settle", pool.root, _settle_of(pool)))
            elif self._trimmable(pool, now):
                calls.append(self._trim(owner, pool))
        for key, root in self.state.abandoned.items():
            if self._releases.after(key) <= now:
                calls.append(PoolCall("settle", root, {"key": key, "actual": {}}))
        for signature in [sig for sig, until in self.state.thin.items() if until <= now]:
            del self.state.thin[signature]
        live = {p.signature for p in self.state.pools.values()} | set(self.state.demand)
        for signature in [sig for sig in self.state.scale if sig not in live]:
            del self.state.scale[signature]
        renew = [
            p
            for p in self.state.pools.values()
            if p.expires_at - now < p.ttl_s / 2 and self._renewals.after(p.root) <= now
        ]
        for root in sorted({p.root for p in renew}):
            ttl = max(p.ttl_s for p in renew if p.root == root)
            calls.append(PoolCall("extend", root, {"run": pool_run(owner), "ttl_s": ttl}))
        for signature, demand in list(self.state.demand.items()):
            if self._stale(demand, now):
                if demand.asking is not None:  # given up: release whatever it may hold
                    self.state.abandoned[demand.asking] = demand.root
                del self.state.demand[signature]
                continue
            if demand.backoff_until > now:
                continue
            active = self.active(signature, now)
            if active is not None and active.fits(demand.minimum):
                del self.state.demand[signature]
                continue
            if active is not None:
                self._retire(active)  # too little left for what is asked: a fresh one
                self._rescale(signature, shrink=False)
                if active.drained():
                    calls.append(PoolCall("settle", active.root, _settle_of(active)))
            if len(self.state.pools) >= MAX_POOLS:
                continue
            if demand.asking is None:
                demand.asking = self._next_key(owner)
                demand.asked_at = now
            amounts = {
                r: min(v * self.scale(signature), max(v, MAX_POOL_AMOUNT))
                for r, v in demand.amounts.items()
            }
            request = _ask(
                demand.asking,
                owner,
                amounts,
                demand.minimum,
                demand.limits,
                demand.ttl_s,
                demand.max_share,
            )
            if demand.shards is not None:
                request["shards"] = demand.shards
            if demand.priority is not None:
                request["priority"] = demand.priority
            calls.append(PoolCall("reserve", demand.root, request, signature))
        return calls

    def scale(self, signature: str) -> int:
        """The multiple of a dry request the next pool of ``signature`` asks for."""
        return self.state.scale.get(signature, POOL_START)

    def _rescale(self, signature: str, *, shrink: bool) -> None:
        """A pool of ``signature`` went idle (``shrink``) or ran out: halve or double."""
        scale = self.scale(signature)
        scale = max(POOL_MIN, scale // 2) if shrink else min(POOL_MAX, scale * 2)
        if len(self.state.scale) < MAX_DEMAND or signature in self.state.scale:
            self.state.scale[signature] = scale

    def _trimmable(self, pool: Pool, now: float) -> bool:
        """A retired pool still held, idle, whose unused rest is more than what is held.

        Its rest would stay reserved on the root until its last holder ends (a run's lease
        may last hours): the shard asks the root for a pool of exactly what is held, moves
        the holders to it and settles this one, so the root gets the rest back, exactly.
        """
        if not pool.retired or pool.drained() or pool.trimming or pool.trim_tried:
            return False
        if not pool.limits:
            return False
        if now - pool.used_at <= POOL_IDLE_S or len(self.state.pools) >= MAX_POOLS:
            return False
        return any(pool.left(r) > max(pool.held.get(r, 0.0), _EPSILON) for r in pool.granted)

    def _next_key(self, owner: str) -> str:
        """The key of the shard's next ask to the root."""
        self.state.asks += 1
        return f"{owner}/pool#{self.state.asks}"

    def _trim(self, owner: str, pool: Pool) -> PoolCall:
        pool.trimming = self._next_key(owner)
        held = {r: v for r, v in pool.held.items() if v > _EPSILON} or {
            r: _EPSILON for r in pool.granted
        }
        request = _ask(pool.trimming, owner, held, held, pool.limits, pool.ttl_s, 1.0)
        return PoolCall("reserve", pool.root, request, pool.signature, trim_of=pool.key)

    def _trimmed(self, call: PoolCall, granted: Mapping[str, float] | None, since: float) -> None:
        """The root answered a trim's ask: move the holders to the new pool, or keep all."""
        old = self.state.pools.get(call.trim_of)
        key = str(call.request["key"])
        if old is None or old.trimming != key:
            if granted:  # nobody is left to draw from it: hand it back at once
                self.state.abandoned[key] = call.root
            return
        old.trimming = None
        if not granted or not all(granted.get(r, 0.0) >= v - _EPSILON for r, v in old.held.items()):
            old.trim_tried = True
            if granted:
                self.state.abandoned[key] = call.root
            return
        self.state.pools[key] = Pool(
            key=key,
            root=old.root,
            signature=old.signature,
            granted=dict(granted),
            held=dict(old.held),
            holders=old.holders,
            taken_at=since,
            expires_at=since + old.ttl_s,
            ttl_s=old.ttl_s,
            used_at=old.used_at,
            retired=True,
            limits=old.limits,
        )
        for moved_from, to in list(self.state.moved.items()):
            if to == old.key:
                self.state.moved[moved_from] = key
        self.state.moved[old.key] = key
        old.held, old.holders = {}, 0  # drained: settled with what it used so far
        self.dirty = True

    def _stale(self, demand: PoolDemand, now: float) -> bool:
        """Nobody asked for it for a while, or its ask went unanswered for too long."""
        if demand.asking is None:
            return now - demand.at > DEMAND_KEEP_S
        return demand.asked_at is not None and now - demand.asked_at > ASK_GIVE_UP_S

    def asked(
        self,
        call: PoolCall,
        granted: Mapping[str, float] | None,
        retry_s: float | None,
        since: float,
        now: float,
    ) -> None:
        """The root answered an ask sent at ``since``: a pool of ``granted``, or a refusal.

        The pool is timed from when its ask was first sent (the root took it no sooner),
        so the shard never takes a pool for alive after the root charged it in full.
        """
        if call.trim_of:
            self._trimmed(call, granted, since)
            return
        demand = self.state.demand.get(call.signature)
        key = str(call.request["key"])
        if granted is not None and any(v > _EPSILON for v in granted.values()):
            amounts = call.request.get("amounts", {})
            if any(granted.get(r, 0.0) < v / 2 for r, v in amounts.items()):
                if len(self.state.thin) < MAX_DEMAND or call.signature in self.state.thin:
                    self.state.thin[call.signature] = now + DEMAND_KEEP_S
            else:
                self.state.thin.pop(call.signature, None)
            if key not in self.state.pools:
                taken = since
                if demand is not None and demand.asking == key and demand.asked_at is not None:
                    taken = min(taken, demand.asked_at)
                ttl = float(call.request["ttl_s"])
                self.state.pools[key] = Pool(
                    key=key,
                    root=call.root,
                    signature=call.signature,
                    granted=dict(granted),
                    taken_at=taken,
                    expires_at=taken + ttl,
                    ttl_s=ttl,
                    used_at=now,
                    limits=[SharedLimit.model_validate(lim) for lim in call.request["limits"]],
                )
            if demand is not None and demand.asking == key:
                del self.state.demand[call.signature]
            return
        if demand is not None:
            demand.asking = demand.asked_at = None  # refused, or nothing: it holds nothing
            demand.failures = 0
            demand.refused = True
            demand.backoff_until = now + max(retry_s or 0.0, ASK_BACKOFF_S)

    def unanswered(self, call: PoolCall, now: float) -> None:
        """The root could not answer a call: try again after a pause (an ask keeps its key).

        The pause doubles with every unanswered call in a row, up to :data:`MAX_BACKOFF_S`.
        """
        if call.update == "reserve" and call.trim_of:
            old = self.state.pools.get(call.trim_of)
            if old is not None and old.trimming == call.request["key"]:
                old.trimming = None  # asked again (a new key) after a pause: the lost
                old.used_at = now  # answer's pool, if any, is abandoned below
                self.state.abandoned[str(call.request["key"])] = call.root
        elif call.update == "reserve":
            demand = self.state.demand.get(call.signature)
            if demand is not None:
                demand.failures += 1
                demand.backoff_until = now + _backoff(demand.failures)
        elif call.update == "settle":
            key = str(call.request["key"])
            pool = self.state.pools.get(key)
            if pool is not None:
                pool.settle_failures += 1
                pool.settle_after = now + _backoff(pool.settle_failures)
            elif key in self.state.abandoned:
                self._releases.failed(key, now)
        elif call.update == "extend":
            self._renewals.failed(call.root, now)

    def settled(self, key: str) -> None:
        """The root took a pool's settlement (or no longer knew it): forget the pool."""
        self.state.pools.pop(key, None)
        self.state.abandoned.pop(key, None)
        self._releases.forget(key)
        for moved_from in [k for k, to in self.state.moved.items() if to == key]:
            del self.state.moved[moved_from]

    def extended(self, root: str, ttl_s: float, since: float, renewed: int) -> None:
        """The root renewed ``renewed`` of the shard's pools there as of ``since``.

        Fewer than the shard holds there means one lapsed on the root (charged in full
        there): every pool of that root is retired, so none grants past its life.
        """
        self._renewals.forget(root)
        mine = [pool for pool in self.state.pools.values() if pool.root == root]
        for pool in mine:
            pool.expires_at = max(pool.expires_at, since + ttl_s)
            if renewed < len(mine):
                self._retire(pool)

    def wake_at(self, now: float) -> float | None:
        """When :meth:`work` has something to do next, at the latest (epoch seconds)."""
        times: list[float] = []
        for pool in self.state.pools.values():
            times.append(max(pool.expires_at - pool.ttl_s / 2, self._renewals.after(pool.root)))
            if not pool.retired:
                times.append(pool.taken_at + pool.ttl_s / 2)
                times.append(pool.used_at + POOL_IDLE_S)
            elif pool.drained():  # to settle (again, after a failure; or after continuing)
                times.append(pool.settle_after)
            elif not pool.trimming and not pool.trim_tried:
                times.append(pool.used_at + POOL_IDLE_S)  # to trim it
        for key in self.state.abandoned:
            times.append(self._releases.after(key, now))
        for demand in self.state.demand.values():
            if demand.backoff_until > now:
                times.append(demand.backoff_until)
            elif len(self.state.pools) < MAX_POOLS:
                times.append(now)  # to ask now (or to drop it)
            else:
                times.append(demand.at + DEMAND_KEEP_S)  # no room for a pool: to drop it
        # never sooner than a short pause: a renewal the root could not take is retried
        # after one, not in a busy loop
        return max(min(times), now + MIN_PAUSE_S) if times else None

    def view(self) -> list[dict[str, Any]]:
        """The pools as JSON, for the ledger's ``state`` query."""
        return [
            pool.model_dump(mode="json", exclude={"signature"})
            for pool in self.state.pools.values()
        ]
