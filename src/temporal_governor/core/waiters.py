"""Waiters for shared capacity: who gets a freed slot next (priority classes with aging).

A reservation refused by the ledger under ``shared.on_refusal: wait`` asks again after a
pause. Without a queue whoever asks first after capacity frees wins, so a flood of
high-priority work (or one busy tenant) can starve the rest forever. The ledger's book
therefore keeps the refused callers that wait as **waiters**, and holds freed capacity
for the best of them. This module is that queue: pure, deterministic (no clock, no
randomness, ties broken by id) and bounded, carried in the ledger's state.

**Order.** A waiter of class rank ``r`` (:data:`RANKS`: critical 0 ... background 4) that
first asked at ``first``, with its own aging ``A`` (``aging_s``: the policy's
``shared.priority_aging_s``), has the fixed level::

    level = r + floor(first / A)                  # A: aging_s, one class per A seconds

(lower goes first). A caller asking at ``now`` has ``first = now``, so a waiter that has
waited ``k * A`` seconds ranks with fresh callers ``k`` classes above its own: it rises one
class per ``A`` of waiting and overtakes fresh critical work in the end. The level never
changes with the time of asking, so every caller sees the same order of two waiters (a
level that moved with ``now`` let two live waiters each see the other ahead and both be
refused a free slot). Waiters of different agings compare by their level in seconds
(``level * A``). Within one level the tenant with the smaller **share** goes first, share
being what the tenant holds of the counter (open reservations) plus what its own waiters
of that level ahead of this one need (a weighted round robin between tenants); then the
earlier first refusal; then the waiter id. A caller that is not queued yet (or does not
wait) is ranked the same way, as a waiter whose ``first`` is now less the ``waited_s`` it
reports, so a waiter that was dropped keeps its age.

**Holding.** A reservation is granted on a counter only if what is left after it still
covers the needs of every *eligible* waiter ranked ahead of the caller. A waiter is
eligible on a counter when its needs fit now on all its other counters (capacity is not
held for a waiter that another counter blocks) and its need there could ever fit.

**Dropping.** A waiter is told when to ask again (``retry``: :data:`HEAD_RETRY_S` for the
best waiter of the counter, :data:`NEAR_RETRY_S` within one ceiling of needs from the
head, :data:`FAR_RETRY_S` further back, a window's roll-over only when the window's spend
leaves no room for it: until then it holds nothing, see **Holding**). One that has not
asked again by ``last + retry + GRACE_S`` is ignored and dropped, so a dead
run never blocks the queue; a run's end removes its waiters at once; the queue keeps at
most :data:`MAX_WAITERS` (a full queue evicts its worst waiter for a better one).

**The bound.** For a counter of ``N`` slots (a concurrency limit; every waiter needs one)
take a waiter ``W`` of rank ``r`` that starts waiting at ``t0`` while ``Q0`` callers
already wait for the counter, and requests of any class start asking for it at a rate
``lam`` per second (the flood). Let ``H`` be the longest a dispatch holds a slot and ``R``
how long a freed slot may stay held for a waiter ahead before it claims it or is dropped
(at most ``FAR_RETRY_S + GRACE_S`` = 6 s; a live caller's retry plus one ledger call).
Then, as long as ``W`` keeps asking (``shared.max_wait`` not reached) and fits on its
other counters::

    wait(W) <= ceil((Q0 + lam * (r + 1) * A + 1) / N) * (H + R)

Why: a request that starts waiting at ``t >= t0 + (r + 1) * A`` (of the same aging) has a
level above ``W``'s, so at most ``Q0 + lam * (r + 1) * A`` requests are
ever ranked ahead of ``W``; none ranked behind it is granted capacity ``W`` needs; and
every ``H + R`` each of the ``N`` slots is freed and handed to (or held past the drop of)
a waiter ahead. For a windowed limit of ceiling ``C`` and window ``T`` with needs of
``n``, ``(H + R)`` becomes ``T`` (plus ``R`` once) and ``N`` becomes ``floor(C / n)``.
Without aging (``A`` infinite) the count ahead grows with the flood and a low class
starves; with it, the wait is bounded by the flood of the first ``(r + 1) * A`` seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field

RANKS: dict[str, int] = {"critical": 0, "high": 1, "normal": 2, "low": 3, "background": 4}
"""Policy priority class (``PriorityClass``) -> rank; a lower rank is served first."""
MAX_RANK = 4
"""The lowest class's rank (``background``)."""
DEFAULT_RANK = RANKS["normal"]
"""The rank of a caller that names no class."""
AGING_S = 5.0
"""Default seconds of waiting that raise a waiter by one class (``shared.priority_aging_s``)."""
MAX_WAITERS = 1_000
"""Waiters kept at once (all counters together)."""
HEAD_RETRY_S = 0.25
"""What the best waiter of a counter is told to wait before asking again."""
NEAR_RETRY_S = 0.5
"""What a waiter less than one ceiling of needs from the head is told."""
FAR_RETRY_S = 1.0
"""What a waiter further back is told."""
GRACE_S = 5.0
"""A waiter that has not asked again this long after it was told to is dropped."""

_EPSILON = 1e-9


def rank_of(klass: str | None) -> int:
    """The rank of a policy priority class (``None``: ``normal``).

    Raises:
        ValueError: Not a priority class.
    """
    if klass is None:
        return DEFAULT_RANK
    try:
        return RANKS[klass]
    except KeyError:
        raise ValueError(
            f"priority class: expected one of {', '.join(RANKS)}, not {klass!r}"
        ) from None


class Waiter(BaseModel):
    """A refused caller that waits for capacity, as the ledger keeps it."""

    model_config = ConfigDict(extra="forbid")

    run: str
    """``workflow_id/run_id`` of the caller (its end removes its waiters)."""
    tenant: str = ""
    """The tenant it reserves for (fair share between tenants)."""
    rank: int = Field(ge=0, le=MAX_RANK)
    """Its priority class's rank (:data:`RANKS`)."""
    first: float
    """Epoch seconds of its first refusal (its age)."""
    last: float
    """Epoch seconds at which it last asked."""
    retry: float = 0.0
    """Seconds it was told to wait, at ``last``, before asking again."""
    needs: dict[str, float] = Field(default_factory=dict)
    """Counter id -> the amount it needs there (a lease: one dispatch's worth)."""
    aging_s: float = Field(default=AGING_S, gt=0, allow_inf_nan=False)
    """Its own seconds of waiting that raise it by one class (its policy's
    ``shared.priority_aging_s``; states packed before it was kept load the default)."""

    def stale_at(self) -> float:
        """When it is ignored and dropped if it has not asked again."""
        return self.last + self.retry + GRACE_S

    def level(self) -> int:
        """Its fixed class level: its rank plus its first refusal in ``aging_s`` periods.

        Lower goes first; it never depends on when anyone asks.
        """
        return self.rank + math.floor(self.first / self.aging_s)

    def standing(self) -> float:
        """Its level in seconds (``level * aging_s``), comparable across agings."""
        return self.level() * self.aging_s


Holdings = Callable[[str], Mapping[str, float]]
"""Counter id -> tenant -> what the tenant's open reservations hold of it."""

Eligible = Callable[[Waiter, str], bool]
"""Whether capacity of a counter is held for a waiter (see the module docstring)."""


def order(
    candidates: Mapping[str, Waiter],
    counter: str,
    holdings: Holdings,
) -> list[str]:
    """The ids of ``candidates`` in the order they are served on ``counter``.

    The order depends on the waiters alone (each with its own ``aging_s``), never on the
    time of asking nor on who asks.

    Args:
        candidates: Waiter id -> waiter (each with a need on ``counter``).
        counter: The counter id.
        holdings: What each tenant holds of a counter (asked only when two tenants
            share a level).

    Returns:
        Ids, first served first.
    """
    by_level: dict[float, list[str]] = {}
    for id_, waiter in candidates.items():
        by_level.setdefault(waiter.standing(), []).append(id_)
    held: Mapping[str, float] | None = None
    keys: dict[str, tuple[float, float, float, str]] = {}
    for level, ids in by_level.items():
        tenants = {candidates[i].tenant for i in ids}
        if len(tenants) > 1 and held is None:
            held = holdings(counter)
        running: dict[str, float] = {}
        for id_ in sorted(ids, key=lambda i: (candidates[i].first, i)):
            waiter = candidates[id_]
            share = 0.0
            if len(tenants) > 1:
                assert held is not None
                share = running.get(waiter.tenant, held.get(waiter.tenant, 0.0))
                running[waiter.tenant] = share + waiter.needs.get(counter, 0.0)
            keys[id_] = (level, share, waiter.first, id_)
    return sorted(keys, key=keys.__getitem__)


class Waiters:
    """The ledger's waiters: a view over the state's ``waiters`` dict that it changes in place.

    Keeps an index of waiters by counter and the soonest staleness in memory (rebuilt
    from the dict), so a reservation with nobody waiting costs nothing.

    Args:
        waiters: Waiter id -> waiter (the ledger state's, changed in place).
    """

    def __init__(self, waiters: dict[str, Waiter]) -> None:
        self.waiters = waiters
        self._by_counter: dict[str, dict[str, None]] = {}
        self._next_stale = math.inf
        for id_, waiter in waiters.items():
            self._index(id_, waiter)

    def __len__(self) -> int:
        return len(self.waiters)

    def _index(self, id_: str, waiter: Waiter) -> None:
        for counter in waiter.needs:
            self._by_counter.setdefault(counter, {})[id_] = None
        self._next_stale = min(self._next_stale, waiter.stale_at())

    def get(self, id_: str) -> Waiter | None:
        """The waiter of ``id_``, if queued."""
        return self.waiters.get(id_)

    def on(self, counter: str, now: float) -> dict[str, Waiter]:
        """The waiters with a need on ``counter`` that are not stale at ``now``."""
        ids = self._by_counter.get(counter)
        if not ids:
            return {}
        found = {i: self.waiters[i] for i in ids}
        return {i: w for i, w in found.items() if w.stale_at() >= now}

    def remove(self, id_: str) -> None:
        """Forget a waiter (granted, or gone)."""
        waiter = self.waiters.pop(id_, None)
        if waiter is None:
            return
        for counter in waiter.needs:
            ids = self._by_counter.get(counter)
            if ids is not None:
                ids.pop(id_, None)
                if not ids:
                    del self._by_counter[counter]

    def remove_run(self, run: str) -> int:
        """Forget every waiter of an ending run; returns how many."""
        ids = [i for i, w in self.waiters.items() if w.run == run]
        for id_ in ids:
            self.remove(id_)
        return len(ids)

    def clear(self) -> None:
        """Forget every waiter (the state is over its size budget)."""
        self.waiters.clear()
        self._by_counter.clear()
        self._next_stale = math.inf

    def drop_stale(self, now: float) -> int:
        """Drop the waiters that stopped asking; returns how many."""
        if now <= self._next_stale:
            return 0
        stale = [i for i, w in self.waiters.items() if w.stale_at() < now]
        for id_ in stale:
            self.remove(id_)
        self._next_stale = min((w.stale_at() for w in self.waiters.values()), default=math.inf)
        return len(stale)

    def put(self, id_: str, waiter: Waiter, now: float) -> bool:
        """Queue (or update) a waiter; a full queue evicts its worst waiter for a better one.

        Returns:
            Whether the waiter is queued.
        """
        if id_ not in self.waiters and len(self.waiters) >= MAX_WAITERS:
            self.drop_stale(now)
            if len(self.waiters) >= MAX_WAITERS:
                worst = max(
                    self.waiters,
                    key=lambda i: (self.waiters[i].standing(), self.waiters[i].first, i),
                )
                mine = (waiter.standing(), waiter.first, id_)
                theirs = self.waiters[worst]
                if mine >= (theirs.standing(), theirs.first, worst):
                    return False
                self.remove(worst)
        self.remove(id_)
        self.waiters[id_] = waiter
        self._index(id_, waiter)
        return True

    def ahead(
        self,
        asker_id: str,
        asker: Waiter,
        counter: str,
        now: float,
        eligible: Eligible,
        holdings: Holdings,
    ) -> float:
        """What ``counter`` holds for eligible waiters ranked ahead of the asker.

        Args:
            asker_id: The asking caller's waiter id (its own entry is not counted).
            asker: The asker as a waiter (queued or not).
            counter: The counter id.
            now: Epoch seconds (waiters stale then are left out).
            eligible: Whether a waiter is held for on a counter.
            holdings: What each tenant holds of a counter.

        Returns:
            The sum of their needs on ``counter``.
        """
        others = self.on(counter, now)
        others.pop(asker_id, None)
        candidates = {i: w for i, w in others.items() if eligible(w, counter)}
        if not candidates:
            return 0.0
        candidates[asker_id] = asker
        held = 0.0
        for id_ in order(candidates, counter, holdings):
            if id_ == asker_id:
                break
            held += candidates[id_].needs.get(counter, 0.0)
        return held


def retry_for(ahead: float, ceiling: float) -> float:
    """What a waiter of a counter without a window is told, by what is held ahead of it."""
    if ahead <= _EPSILON:
        return HEAD_RETRY_S
    if ahead < ceiling:
        return NEAR_RETRY_S
    return FAR_RETRY_S


__all__ = [
    "AGING_S",
    "DEFAULT_RANK",
    "FAR_RETRY_S",
    "GRACE_S",
    "HEAD_RETRY_S",
    "MAX_RANK",
    "MAX_WAITERS",
    "NEAR_RETRY_S",
    "RANKS",
    "Eligible",
    "Holdings",
    "Waiter",
    "Waiters",
    "order",
    "rank_of",
    "retry_for",
]
