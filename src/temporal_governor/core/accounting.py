"""Pure, deterministic budget arithmetic: reserve, commit, release against limits.

Nothing here knows about Temporal, so the same code runs inside workflow code (where it
must be replay-safe) and in plain unit tests. A :class:`RunLedger` holds the limits that
apply to one workflow run (its own per-task quotas and the allowance carved for it by its
parent) and the reservations of its in-flight dispatches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RESOURCES: tuple[str, ...] = ("tokens", "cost_usd", "tool_calls", "subtasks", "child_workflows")
"""The additive resources a dispatch consumes. Wall time is a deadline, not an amount."""

OnBreach = Literal["terminate", "alert"]
EventKind = Literal[
    "reserve",
    "commit",
    "release",
    "refuse",
    "warn",
    "alert",
    "breach",
    "overage",
    "wait",
    "control",
    "control_rejected",
    "loop",
    "anomaly",
    "throttle",
    "degrade",
]

_EPSILON = 1e-9


@dataclass(frozen=True)
class Ops:
    """What the budget rules use besides ``+ - * /`` and comparisons.

    Python's ``or``, ``max``, ``min`` and conditional expressions need a concrete truth
    value, so the rules take them from here: :data:`FLOAT_OPS` at runtime, the Z3 solver's
    in the bounded proofs (``temporal_governor.verify``), which pass solver terms where
    the annotations say ``float`` and ``bool``. The same rule code is thus run and proved.
    """

    either: Callable[[bool, bool], bool]
    """Logical or of two conditions."""
    max: Callable[[float, float], float]
    """The larger of two numbers, the first when equal (as the builtin ``max``)."""
    min: Callable[[float, float], float]
    """The smaller of two numbers, the first when equal (as the builtin ``min``)."""
    if_then_else: Callable[[bool, float, float], float]
    """The second argument when the first holds, else the third."""


FLOAT_OPS = Ops(
    either=lambda a, b: a or b,
    max=max,
    min=min,
    if_then_else=lambda condition, then, otherwise: then if condition else otherwise,
)
"""The operations of the rules at runtime: plain Python on floats."""


def refuses(
    committed: float, reserved: float, estimate: float, ceiling: float, ops: Ops = FLOAT_OPS
) -> bool:
    """The in-run fit rule of one terminate limit (:meth:`RunLedger.check`).

    A dispatch is refused when committed + reserved + its estimate would exceed the
    ceiling, or when committed spend alone already exceeds it.

    Args:
        committed: The limit's resource committed so far.
        reserved: The resource held by open reservations.
        estimate: The dispatch's estimate of the resource.
        ceiling: The limit's ceiling.
        ops: :data:`FLOAT_OPS`, or the solver's.

    Returns:
        Whether the limit refuses the dispatch.

    """
    observed = committed + reserved + estimate
    return ops.either(observed > ceiling + _EPSILON, committed > ceiling + _EPSILON)


def headroom(ceiling: float, committed: float, reserved: float) -> float:
    """What a limit leaves to reserve: its ceiling less committed and reserved spend."""
    used = committed + reserved
    return ceiling - used


class Amounts(BaseModel):
    """A vector of resource amounts (spent, reserved, estimated or allowed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: float = 0.0
    """Model tokens, input plus output."""
    cost_usd: float = 0.0
    """US dollars."""
    tool_calls: float = 0.0
    """Tool (activity) invocations."""
    subtasks: float = 0.0
    """Child workflows started directly by the run."""
    child_workflows: float = 0.0
    """Child workflows started anywhere in the run's subtree."""

    def get(self, resource: str) -> float:
        """The amount of one resource.

        Args:
            resource: One of :data:`RESOURCES`.

        Returns:
            The amount.

        """
        return float(getattr(self, resource))

    # The arithmetic spells the five fields out: it runs several times per dispatch, and
    # a validating constructor over plain floats is cheaper than ``model_construct``
    # (pydantic 2) and a ``get`` call per resource.

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(
            tokens=float(self.tokens) + float(other.tokens),
            cost_usd=float(self.cost_usd) + float(other.cost_usd),
            tool_calls=float(self.tool_calls) + float(other.tool_calls),
            subtasks=float(self.subtasks) + float(other.subtasks),
            child_workflows=float(self.child_workflows) + float(other.child_workflows),
        )

    def __sub__(self, other: Amounts) -> Amounts:
        return Amounts(
            tokens=float(self.tokens) - float(other.tokens),
            cost_usd=float(self.cost_usd) - float(other.cost_usd),
            tool_calls=float(self.tool_calls) - float(other.tool_calls),
            subtasks=float(self.subtasks) - float(other.subtasks),
            child_workflows=float(self.child_workflows) - float(other.child_workflows),
        )

    def nonzero(self) -> dict[str, float]:
        """The resources with a non-zero amount, as a plain mapping."""
        return {r: v for r in RESOURCES if (v := float(getattr(self, r)))}


ZERO = Amounts()

_NOTHING: dict[str, float] = {}
"""The amounts of a decision that moves none (never changed: pydantic copies what it keeps)."""


@dataclass
class Limit:
    """A ceiling on one resource for one scope of a run."""

    name: str
    """The policy name of the limit, e.g. ``max_tokens_per_task`` or ``allowance``."""
    resource: str
    """One of :data:`RESOURCES`."""
    ceiling: float
    """The most the scope may spend."""
    scope: str
    """Whose budget this is, e.g. ``run planner/run-1``."""
    on_breach: OnBreach = "terminate"
    """``terminate`` refuses the dispatch and halts the run; ``alert`` only reports."""
    warn_at: float | None = None
    """Fraction of the ceiling at which a ``warn`` event is emitted once."""
    warned: bool = False
    alerted: bool = False


class BudgetEvent(BaseModel):
    """One entry of a run ledger's log: a decision, in the order the run made it.

    The log of :class:`RunLedger`, and the ``recent_events`` of the budget query. The
    ledger also logs control and detector events here, in the same flat fields (the
    issuer or detector in ``limit``, the outcome or message in ``scope``): the record
    sinks receive, :class:`~temporal_governor.core.decisions.DecisionRecord`, names them
    in its ``payload``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int
    """Position in the run's decision log, from 1."""
    kind: EventKind
    """What was decided."""
    key: str = ""
    """The dispatch it concerns, e.g. ``activity:3:call_llm``."""
    amounts: dict[str, float] = Field(default_factory=dict)
    """The amounts reserved, committed or released."""
    limit: str = ""
    """For warn, alert, refuse, breach and overage: the limit concerned."""
    scope: str = ""
    """For warn, alert, refuse, breach and overage: the scope concerned."""
    observed: float = 0.0
    """For warn, alert, refuse, breach and overage: the spend that was looked at."""
    ceiling: float = 0.0
    """For warn, alert, refuse, breach and overage: the limit's ceiling."""


GovernanceEvent = BudgetEvent
"""Deprecated name of :class:`BudgetEvent` (before issue #12); goes in the next release."""


class Refusal(BaseModel):
    """Why a reservation was refused: the first ``terminate`` limit it would exceed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: str
    resource: str
    scope: str
    observed: float
    ceiling: float
    committed: float
    overage: float


class LimitState(BaseModel):
    """One limit as the ``governor.budget`` query reports it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: str
    resource: str
    scope: str
    ceiling: float
    committed: float
    reserved: float
    remaining: float
    on_breach: OnBreach


@dataclass
class RunLedger:
    """The budget of one workflow run: limits, committed spend and open reservations.

    Every method is deterministic; the ledger keeps a log of :class:`GovernanceEvent`.
    """

    limits: list[Limit]
    committed: Amounts = ZERO
    reservations: dict[str, Amounts] = field(default_factory=dict)
    events: list[GovernanceEvent] = field(default_factory=list)
    max_events: int = 2000
    event_count: int = 0
    _held: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(RESOURCES, 0.0), init=False, repr=False
    )
    """The sum of open reservations per resource, kept as plain floats: it changes with
    every reservation and settlement, and is read as :attr:`reserved` far less often."""
    _reserved: Amounts | None = field(default=ZERO, init=False, repr=False, compare=False)
    """:attr:`reserved` as last built (``None``: changed since)."""

    @property
    def reserved(self) -> Amounts:
        """The sum of open reservations."""
        reserved = self._reserved
        if reserved is None:
            reserved = self._reserved = Amounts(**self._held)
        return reserved

    def _hold(self, amounts: Amounts, sign: float) -> None:
        """Add (``sign`` 1) or take (-1) a reservation to or from the sum of open ones.

        The same float operations, per resource, as ``reserved + amounts`` and
        ``reserved - amounts``; the sum is 0 again once no reservation is open.
        """
        held = self._held
        if not self.reservations:
            for resource in RESOURCES:
                held[resource] = 0.0
        elif sign > 0:
            for resource in RESOURCES:
                held[resource] = held[resource] + float(getattr(amounts, resource))
        else:
            for resource in RESOURCES:
                held[resource] = held[resource] - float(getattr(amounts, resource))
        self._reserved = None

    def remaining(self, resource: str) -> float | None:
        """What may still be reserved of a resource under every terminate limit.

        Args:
            resource: One of :data:`RESOURCES`.

        Returns:
            The smallest headroom, or ``None`` when no terminate limit covers it.

        """
        committed, reserved = self.committed.get(resource), self._held[resource]
        least: float | None = None
        for limit in self.limits:
            if limit.resource == resource and limit.on_breach == "terminate":
                left = headroom(limit.ceiling, committed, reserved)
                least = left if least is None else min(least, left)
        return least

    def binding_limit(self, resource: str) -> Limit | None:
        """The terminate limit with the least headroom for a resource, if any."""
        candidates = [
            lim for lim in self.limits if lim.resource == resource and lim.on_breach == "terminate"
        ]
        return min(candidates, key=lambda lim: lim.ceiling) if candidates else None

    def check(self, amounts: Amounts) -> Refusal | None:
        """Whether reserving ``amounts`` would exceed a terminate limit, without reserving.

        A dispatch is refused when committed + reserved + its estimate would exceed a
        ceiling, or when committed spend already exceeds it (an earlier actual was above
        its estimate), whatever the estimate.

        Args:
            amounts: The estimate of the dispatch.

        Returns:
            The refusal, or ``None`` when the reservation fits.

        """
        for limit in self.limits:
            if limit.on_breach != "terminate":
                continue
            committed = self.committed.get(limit.resource)
            held, wanted = self._held[limit.resource], amounts.get(limit.resource)
            if refuses(committed, held, wanted, limit.ceiling):
                observed = committed + held + wanted
                return Refusal(
                    limit=limit.name,
                    resource=limit.resource,
                    scope=limit.scope,
                    observed=observed,
                    ceiling=limit.ceiling,
                    committed=committed,
                    overage=max(0.0, committed - limit.ceiling),
                )
        return None

    def reserve(self, key: str, amounts: Amounts) -> Refusal | None:
        """Reserve ``amounts`` for the dispatch ``key`` unless a terminate limit refuses.

        ``alert`` limits that the reservation would exceed emit an ``alert`` event once
        and do not refuse. Reserving an existing key is a no-op (idempotent).

        Args:
            key: The dispatch's idempotency key.
            amounts: Its estimate.

        Returns:
            The refusal, or ``None`` when reserved.

        """
        if key in self.reservations:
            return None
        refusal = self.check(amounts)
        if refusal is not None:
            self._log(
                "refuse",
                key,
                amounts.nonzero(),
                limit=refusal.limit,
                scope=refusal.scope,
                observed=refusal.observed,
                ceiling=refusal.ceiling,
            )
            return refusal
        self.reservations[key] = amounts
        self._hold(amounts, 1.0)
        self._log("reserve", key, amounts.nonzero())
        self._alerts(key, self._held)
        return None

    def commit(self, key: str, actual: Amounts) -> None:
        """Commit the actual usage of a dispatch and release the rest of its reservation.

        Committing an unknown or already settled key is a no-op, so a duplicate
        delivery never counts twice.

        Args:
            key: The dispatch's idempotency key.
            actual: What it really used (may exceed the estimate).

        """
        reserved = self.reservations.pop(key, None)
        if reserved is None:
            return
        self._hold(reserved, -1.0)
        self.committed = self.committed + actual
        self._log("commit", key, actual.nonzero())
        released = {r: reserved.get(r) - actual.get(r) for r in RESOURCES}
        released = {r: v for r, v in released.items() if v > _EPSILON}
        if released:
            self._log("release", key, released)
        for limit in self.limits:
            committed = self.committed.get(limit.resource)
            if limit.on_breach == "terminate" and committed > limit.ceiling + _EPSILON:
                self._log(
                    "overage",
                    key,
                    actual.nonzero(),
                    limit=limit.name,
                    scope=limit.scope,
                    observed=committed,
                    ceiling=limit.ceiling,
                )
        self._warnings(key)
        self._alerts(key, _NOTHING)

    def release(self, key: str) -> None:
        """Release a reservation without committing anything (the dispatch never ran).

        Args:
            key: The dispatch's idempotency key.

        """
        reserved = self.reservations.pop(key, None)
        if reserved is not None:
            self._hold(reserved, -1.0)
            self._log("release", key, reserved.nonzero())

    def note_wait(
        self, key: str, *, limit: str, scope: str, observed: float, ceiling: float
    ) -> None:
        """Record that a dispatch waits for a shared scope's budget or window.

        Args:
            key: The waiting dispatch.
            limit: The limit that refused it for now.
            scope: That limit's scope.
            observed: What the scope would have held.
            ceiling: The limit's ceiling.
        """
        self._log(
            "wait", key, _NOTHING, limit=limit, scope=scope, observed=observed, ceiling=ceiling
        )

    def log_control(self, accepted: bool, signal: str, issuer: str, outcome: str) -> None:
        """Record a control message the run accepted or rejected.

        Args:
            accepted: Whether it was applied.
            signal: Its signal name (kept as ``key``).
            issuer: Who sent it (kept as ``limit``).
            outcome: What it changed, or why it was rejected (kept as ``scope``).

        """
        self._log(
            "control" if accepted else "control_rejected",
            signal,
            _NOTHING,
            limit=issuer,
            scope=outcome,
        )

    def log_detector(
        self,
        kind: EventKind,
        key: str,
        detector: str,
        message: str,
        observed: float = 0.0,
        ceiling: float = 0.0,
    ) -> None:
        """Record what a detector saw or decided (loop, anomaly, throttle, degrade).

        Args:
            kind: The event kind.
            key: The dispatch concerned (may be empty).
            detector: The detector or rule (kept as ``limit``).
            message: What it saw (kept as ``scope``).
            observed: The number it judged.
            ceiling: The threshold it judged against.

        """
        self._log(
            kind, key, _NOTHING, limit=detector, scope=message, observed=observed, ceiling=ceiling
        )

    def log_breach(self, key: str, refusal: Refusal) -> None:
        """Record that a refusal halted the run.

        Args:
            key: The refused dispatch.
            refusal: Why it was refused.

        """
        self._log(
            "breach",
            key,
            _NOTHING,
            limit=refusal.limit,
            scope=refusal.scope,
            observed=refusal.observed,
            ceiling=refusal.ceiling,
        )

    def states(self) -> list[LimitState]:
        """Every limit with its spend and headroom, for the budget query."""
        reserved = self.reserved
        return [
            LimitState(
                limit=limit.name,
                resource=limit.resource,
                scope=limit.scope,
                ceiling=limit.ceiling,
                committed=self.committed.get(limit.resource),
                reserved=reserved.get(limit.resource),
                remaining=limit.ceiling
                - self.committed.get(limit.resource)
                - reserved.get(limit.resource),
                on_breach=limit.on_breach,
            )
            for limit in self.limits
        ]

    def _warnings(self, key: str) -> None:
        for limit in self.limits:
            if limit.warn_at is None or limit.warned:
                continue
            committed = self.committed.get(limit.resource)
            if committed >= limit.warn_at * limit.ceiling - _EPSILON:
                limit.warned = True
                self._log(
                    "warn",
                    key,
                    _NOTHING,
                    limit=limit.name,
                    scope=limit.scope,
                    observed=committed,
                    ceiling=limit.ceiling,
                )

    def _alerts(self, key: str, pending: Mapping[str, float]) -> None:
        for limit in self.limits:
            if limit.on_breach != "alert" or limit.alerted:
                continue
            observed = self.committed.get(limit.resource) + pending.get(limit.resource, 0.0)
            if observed > limit.ceiling + _EPSILON:
                limit.alerted = True
                self._log(
                    "alert",
                    key,
                    _NOTHING,
                    limit=limit.name,
                    scope=limit.scope,
                    observed=observed,
                    ceiling=limit.ceiling,
                )

    def _log(
        self,
        kind: EventKind,
        key: str,
        amounts: dict[str, float],
        *,
        limit: str = "",
        scope: str = "",
        observed: float = 0.0,
        ceiling: float = 0.0,
    ) -> None:
        self.event_count += 1
        self.events.append(
            GovernanceEvent(
                seq=self.event_count,
                kind=kind,
                key=key,
                amounts=amounts,
                limit=limit,
                scope=scope,
                observed=observed,
                ceiling=ceiling,
            )
        )
        if len(self.events) > self.max_events:
            del self.events[: len(self.events) - self.max_events]

    def new_events(self, since: int) -> Sequence[GovernanceEvent]:
        """Events logged after sequence number ``since``.

        Args:
            since: The last sequence number already seen.

        Returns:
            The newer events, oldest first.

        """
        newer = self.event_count - since
        return self.events[-newer:] if newer > 0 else []
