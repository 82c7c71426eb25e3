"""The ledger: one entity workflow that keeps every scope shared across runs.

Every change is a Workflow Update with a validator. Update handlers here are synchronous
(they never await), so Temporal runs them one at a time and a reservation is checked and
taken against every scope it touches in one step: no time-of-check/time-of-use race, and
"in all scopes or in none". Update ids are idempotency keys, and the ledger also keeps
the outcome of recent keys (carried across continue-as-new), so a retried call, a
replayed workflow task or a duplicate delivery never counts twice.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from datetime import UTC, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

from ..detectors import BaselineState, SpendBaseline
from ..errors import validation_problems
from ..scopes import SharedLimit, SharedResource

LEDGER_WORKFLOW = "temporal-governor-ledger"
"""Workflow type of the ledger."""

MAX_TTL_S = 30 * 86400.0
"""The longest a reservation may stay unsettled (30 days)."""

MALFORMED_UPDATE = "MalformedLedgerUpdate"
"""``ApplicationError.type`` of a ledger update its validator rejected."""

_EPSILON = 1e-9
_MEMO_KEYS = 10_000


class LedgerRefusal(BaseModel):
    """Why the ledger refused a reservation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: str
    scope: str
    resource: str
    observed: float
    """What the scope would hold with this reservation (committed + reserved + request)."""
    ceiling: float
    committed: float = 0.0
    """What the scope had committed (in the current window, for a windowed limit)."""
    retry_after_s: float | None = None
    """When a windowed limit's window rolls over, seconds from now."""


class ReserveRequest(BaseModel):
    """Reserve amounts in every scope of ``limits``, or in none."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    key: str = Field(min_length=1)
    """Idempotency key: run, dispatch (and lease number)."""
    run: str = Field(min_length=1)
    """``workflow_id/run_id`` of the caller, to release everything of a run at once."""
    amounts: dict[SharedResource, NonNegativeFloat]
    limits: list[SharedLimit]
    ttl_s: PositiveFloat = Field(default=600.0, le=MAX_TTL_S)
    """The reservation is released if not settled within this time."""
    minimum: dict[SharedResource, NonNegativeFloat] | None = None
    """For a lease: grant as much of ``amounts`` as a fair share allows, at least this."""
    max_share: float = Field(default=0.1, gt=0, le=1)
    """For a lease: the largest fraction of what is left that one lease may take."""
    controls_for: list[str] = Field(default_factory=list, max_length=10)
    """Scopes (``tenant:<name>``, ``agent:<type>``) whose stored kills and resumes the
    caller wants back with the result, if newer than ``controls_since_ms``."""
    controls_since_ms: int = 0


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
    controls: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Stored kills and resumes of the requested scopes, newer than the caller has seen:
    the caller verifies and applies them (the ledger itself verifies nothing)."""


class SettleRequest(BaseModel):
    """Commit the actual usage of a reservation and release the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    key: str = Field(min_length=1)
    actual: dict[SharedResource, NonNegativeFloat] = Field(default_factory=dict)


class SettleResult(BaseModel):
    """The outcome of a settlement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    settled: bool
    """False when the key was unknown or already settled (nothing changed)."""
    committed: dict[str, float] = Field(default_factory=dict)
    released: dict[str, float] = Field(default_factory=dict)


class ReleaseRunRequest(BaseModel):
    """Release every open reservation of a run (the run is ending)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    run: str = Field(min_length=1)


class ControlRecordRequest(BaseModel):
    """Keep a fleet-wide kill or resume (a tenant's or an agent type's) for runs that start later.

    The ledger stores the message as sent; it does not verify it. Every run that reads it
    verifies its signature itself, and judges its age against ``recorded_at_ms`` (when the
    ledger took it), so a forged or replayed message stored here changes nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    scope: str = Field(pattern=r"^(tenant|agent):.+$", max_length=300)
    """``tenant:<name>`` or ``agent:<workflow type>``."""
    signal: Literal["governor.kill", "governor.resume"]
    message: dict[str, Any]


class BaselineRequest(BaseModel):
    """Read spend baselines (``agent:<type>:<metric>``, ``tenant:<name>:<metric>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[str] = Field(max_length=100)


class ObserveRequest(BaseModel):
    """Fold one finished run's spend into baselines (exponentially weighted)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    values: dict[str, NonNegativeFloat]
    """Baseline key -> the run's value."""
    alpha: float = Field(default=0.2, gt=0, le=1)
    min_samples: int = Field(default=5, ge=1)


class ReadControlsRequest(BaseModel):
    """Read stored kills and resumes of some scopes, newer than ``since_ms``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scopes: list[str] = Field(max_length=10)
    since_ms: int = 0


class StoredControl(BaseModel):
    """A fleet-wide control message as the ledger keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message: dict[str, Any]
    recorded_at_ms: int


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


class LedgerState(BaseModel):
    """Everything the ledger keeps; carried across continue-as-new."""

    model_config = ConfigDict(extra="forbid")

    counters: dict[str, Counter] = Field(default_factory=dict)
    reservations: dict[str, Reservation] = Field(default_factory=dict)
    outcomes: dict[str, str] = Field(default_factory=dict)
    """Recent keys and their outcome (JSON), oldest first, for idempotency."""
    granted: dict[str, float] = Field(default_factory=dict)
    committed: dict[str, float] = Field(default_factory=dict)
    released: dict[str, float] = Field(default_factory=dict)
    continue_as_new_after: int = 2000
    """Updates per run before continuing as new."""
    controls: dict[str, dict[str, StoredControl]] = Field(default_factory=dict)
    """Scope -> signal -> the latest fleet-wide kill and resume of that scope."""
    baselines: dict[str, BaselineState] = Field(default_factory=dict)
    """Spend baselines across runs, by key (``agent:planner:tokens_per_run`` ...)."""


def _add(totals: dict[str, float], amounts: dict[str, float], sign: float = 1.0) -> None:
    for resource, value in amounts.items():
        totals[resource] = totals.get(resource, 0.0) + sign * value


def _clean(value: float) -> float:
    """Drop float residue: what is left of a counter after its last reservation went."""
    return 0.0 if value < _EPSILON else value


def _validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ApplicationError(
            f"malformed {model.__name__}: {validation_problems(error, 'request')}",
            type=MALFORMED_UPDATE,
        ) from None


@workflow.defn(name=LEDGER_WORKFLOW)
class GovernorLedger:
    """The entity workflow that keeps every scope shared across runs."""

    @workflow.init
    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = LedgerState.model_validate(state or {})
        self._outcomes: OrderedDict[str, str] = OrderedDict(self.state.outcomes)
        self._updates = 0
        self._wake = False
        self._deadline: float | None = None

    @workflow.run
    async def run(self, state: dict[str, Any] | None = None) -> None:
        """Sweep expired reservations; continue as new before history grows large."""
        while True:
            timeout = self._next_expiry()
            self._deadline = None if timeout is None else self._now() + timeout.total_seconds()
            self._wake = False
            with contextlib.suppress(TimeoutError):  # the soonest reservation expired
                await workflow.wait_condition(
                    lambda: (
                        self._wake
                        or self._updates >= self.state.continue_as_new_after
                        or workflow.info().is_continue_as_new_suggested()
                    ),
                    timeout=timeout,
                )
            self._sweep()
            if (
                self._updates >= self.state.continue_as_new_after
                or workflow.info().is_continue_as_new_suggested()
            ):
                await workflow.wait_condition(workflow.all_handlers_finished)
                self.state.outcomes = dict(self._outcomes)
                workflow.continue_as_new(self.state.model_dump(mode="json"))

    # -- updates ------------------------------------------------------------------------

    @workflow.update(name="reserve")
    def reserve(self, request: dict[str, Any]) -> dict[str, Any]:
        """Reserve in every scope of the request, or in none."""
        self._updates += 1
        req: ReserveRequest = _validated(ReserveRequest, request)
        earlier = self._outcomes.get(f"reserve:{req.key}")
        if earlier is not None:
            result = ReserveResult.model_validate_json(earlier)
            return result.model_copy(update={"duplicate": True}).model_dump(mode="json")
        result = self._reserve(req)
        controls = self._controls_since(req.controls_for, req.controls_since_ms)
        if controls:
            result = result.model_copy(update={"controls": controls})
        self._remember(f"reserve:{req.key}", result.model_dump_json())
        return result.model_dump(mode="json")

    def _controls_since(self, scopes: list[str], since_ms: int) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for scope in scopes:
            for signal, stored in self.state.controls.get(scope, {}).items():
                if stored.recorded_at_ms > since_ms:
                    found.setdefault(scope, {})[signal] = stored.model_dump(mode="json")
        return found

    @reserve.validator
    def _check_reserve(self, request: dict[str, Any]) -> None:
        req: ReserveRequest = _validated(ReserveRequest, request)
        for limit in req.limits:
            if limit.resource not in req.amounts:
                raise ApplicationError(
                    f"malformed ReserveRequest: limit {limit.name} is on {limit.resource!r}, "
                    f"which the request does not reserve",
                    type=MALFORMED_UPDATE,
                )

    @workflow.update(name="settle")
    def settle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Commit the actual usage of a reservation and release the rest."""
        self._updates += 1
        req: SettleRequest = _validated(SettleRequest, request)
        reservation = self.state.reservations.pop(req.key, None)
        if reservation is None:
            return SettleResult(key=req.key, settled=False).model_dump(mode="json")
        now = self._now()
        actual: dict[str, float] = {
            str(r): float(v) for r, v in req.actual.items() if r != "concurrency"
        }
        for counter_id, held in reservation.counters.items():
            counter = self.state.counters[counter_id]
            self._roll(counter, now)
            counter.reserved = _clean(counter.reserved - held)
            counter.committed += actual.get(counter.resource, 0.0)
        released = {r: v - actual.get(r, 0.0) for r, v in reservation.amounts.items()}
        _add(self.state.committed, actual)
        _add(self.state.released, released)
        self._remember(f"settle:{req.key}", "settled")
        return SettleResult(
            key=req.key, settled=True, committed=actual, released=released
        ).model_dump(mode="json")

    @settle.validator
    def _check_settle(self, request: dict[str, Any]) -> None:
        _validated(SettleRequest, request)

    @workflow.update(name="release_run")
    def release_run(self, request: dict[str, Any]) -> int:
        """Release every open reservation of a run; returns how many were released."""
        self._updates += 1
        req: ReleaseRunRequest = _validated(ReleaseRunRequest, request)
        keys = [key for key, r in self.state.reservations.items() if r.run == req.run]
        for key in keys:
            self._release(key)
        return len(keys)

    @release_run.validator
    def _check_release_run(self, request: dict[str, Any]) -> None:
        _validated(ReleaseRunRequest, request)

    @workflow.update(name="control")
    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Keep the latest kill or resume of a tenant or agent type for runs that start later."""
        self._updates += 1
        req: ControlRecordRequest = _validated(ControlRecordRequest, request)
        stored = StoredControl(message=req.message, recorded_at_ms=int(self._now() * 1000))
        self.state.controls.setdefault(req.scope, {})[req.signal] = stored
        return stored.model_dump(mode="json")

    @control.validator
    def _check_control(self, request: dict[str, Any]) -> None:
        _validated(ControlRecordRequest, request)

    @workflow.update(name="baseline")
    def baseline(self, request: dict[str, Any]) -> dict[str, Any]:
        """The baselines of some keys (those never observed are left out)."""
        self._updates += 1
        req: BaselineRequest = _validated(BaselineRequest, request)
        return {
            key: self.state.baselines[key].model_dump(mode="json")
            for key in req.keys
            if key in self.state.baselines
        }

    @baseline.validator
    def _check_baseline(self, request: dict[str, Any]) -> None:
        _validated(BaselineRequest, request)

    @workflow.update(name="observe")
    def observe(self, request: dict[str, Any]) -> dict[str, Any]:
        """Fold a finished run's values into their baselines; returns the new baselines."""
        self._updates += 1
        req: ObserveRequest = _validated(ObserveRequest, request)
        updated = {}
        for key, value in req.values.items():
            known = self.state.baselines.get(key)
            baseline = (
                SpendBaseline.from_state(known)
                if known is not None
                else SpendBaseline(alpha=req.alpha, min_samples=req.min_samples)
            )
            baseline.update(value)
            self.state.baselines[key] = baseline.state()
            updated[key] = baseline.state().model_dump(mode="json")
        return updated

    @observe.validator
    def _check_observe(self, request: dict[str, Any]) -> None:
        _validated(ObserveRequest, request)

    @workflow.update(name="read_controls")
    def read_controls(self, request: dict[str, Any]) -> dict[str, Any]:
        """The stored kills and resumes of some scopes newer than ``since_ms``.

        For workflows, which cannot query: a run resting in a fleet pause polls this.
        """
        self._updates += 1
        req: ReadControlsRequest = _validated(ReadControlsRequest, request)
        return self._controls_since(req.scopes, req.since_ms)

    @read_controls.validator
    def _check_read_controls(self, request: dict[str, Any]) -> None:
        _validated(ReadControlsRequest, request)

    @workflow.query(name="controls")
    def query_controls(self, scopes: list[str]) -> dict[str, Any]:
        """The stored kills and resumes of these scopes (``tenant:<name>``, ``agent:<type>``)."""
        return self._controls_since(scopes, -1)

    @workflow.query(name="state")
    def query_state(self, scope_prefix: str = "") -> dict[str, Any]:
        """Counters (of scopes starting with ``scope_prefix``), open reservations, totals."""
        now = self._now()
        counters = []
        for counter_id, counter in self.state.counters.items():
            if not counter.scope.startswith(scope_prefix):
                continue
            view = counter.model_copy()
            self._roll(view, now)
            counters.append({"id": counter_id, **view.model_dump(mode="json")})
        return {
            "counters": counters,
            "open_reservations": len(self.state.reservations),
            "reserved": self._open_totals(),
            "granted": self.state.granted,
            "committed": self.state.committed,
            "released": self.state.released,
            "run_id": workflow.info().run_id,
        }

    # -- arithmetic -----------------------------------------------------------------------

    def _reserve(self, req: ReserveRequest) -> ReserveResult:
        now = self._now()
        grant: dict[str, float] = {str(r): float(v) for r, v in req.amounts.items()}
        counters: list[tuple[SharedLimit, Counter]] = []
        for limit in req.limits:
            counter = self.state.counters.get(limit.counter)
            if counter is None:
                counter = Counter(
                    scope=limit.scope, resource=limit.resource, window_s=limit.window_s
                )
                self.state.counters[limit.counter] = counter
            counter.ceiling, counter.limit = limit.ceiling, limit.name
            self._roll(counter, now)
            counters.append((limit, counter))
        if req.minimum is not None:
            grant = self._lease_grant(req, counters)
        for limit, counter in counters:
            if limit.on_breach != "terminate":
                continue
            want = grant.get(limit.resource, 0.0)
            observed = counter.committed + counter.reserved + want
            if observed > limit.ceiling + _EPSILON:
                retry = None
                if counter.window_s is not None and counter.window_start is not None:
                    retry = max(0.0, counter.window_start + counter.window_s - now)
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
        held: dict[str, float] = {}
        for limit, counter in counters:
            amount = grant.get(limit.resource, 0.0)
            counter.reserved += amount
            held[limit.counter] = held.get(limit.counter, 0.0) + amount
        self.state.reservations[req.key] = Reservation(
            run=req.run,
            amounts=grant,
            counters=held,
            expires_at=now + req.ttl_s,
            lease=req.minimum is not None,
        )
        _add(self.state.granted, grant)
        expires_at = now + req.ttl_s
        if self._deadline is None or expires_at < self._deadline:
            self._wake = True  # the sweeping loop must wait for this sooner expiry
        return ReserveResult(key=req.key, granted=True, amounts=grant)

    def _lease_grant(
        self, req: ReserveRequest, counters: list[tuple[SharedLimit, Counter]]
    ) -> dict[str, float]:
        """Never lease more than a fair share of what is left, and at least the minimum."""
        assert req.minimum is not None
        minimum: dict[str, float] = {str(r): float(v) for r, v in req.minimum.items()}
        grant: dict[str, float] = {str(r): float(v) for r, v in req.amounts.items()}
        for limit, counter in counters:
            if limit.on_breach != "terminate":
                continue
            left = limit.ceiling - counter.committed - counter.reserved
            holders = 1 + sum(
                1
                for r in self.state.reservations.values()
                if r.lease and limit.counter in r.counters
            )
            fair = max(min(left / holders, left * req.max_share), minimum.get(limit.resource, 0.0))
            grant[limit.resource] = min(grant.get(limit.resource, 0.0), fair)
        return grant

    def _release(self, key: str) -> None:
        reservation = self.state.reservations.pop(key)
        for counter_id, held in reservation.counters.items():
            counter = self.state.counters[counter_id]
            counter.reserved = _clean(counter.reserved - held)
        _add(self.state.released, reservation.amounts)

    def _sweep(self) -> None:
        now = self._now()
        for key in [k for k, r in self.state.reservations.items() if r.expires_at <= now]:
            self._release(key)

    def _next_expiry(self) -> timedelta | None:
        if not self.state.reservations:
            return None
        soonest = min(r.expires_at for r in self.state.reservations.values())
        return timedelta(seconds=max(0.001, soonest - self._now()))

    def _open_totals(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for reservation in self.state.reservations.values():
            _add(totals, reservation.amounts)
        return totals

    def _remember(self, key: str, outcome: str) -> None:
        self._outcomes[key] = outcome
        while len(self._outcomes) > _MEMO_KEYS:
            self._outcomes.popitem(last=False)

    @staticmethod
    def _roll(counter: Counter, now: float) -> None:
        if counter.window_s is None:
            return
        start = math.floor(now / counter.window_s) * counter.window_s
        if counter.window_start != start:
            counter.window_start = start
            counter.committed = 0.0

    @staticmethod
    def _now() -> float:
        return workflow.now().replace(tzinfo=UTC).timestamp()


__all__ = [
    "LEDGER_WORKFLOW",
    "MALFORMED_UPDATE",
    "ControlRecordRequest",
    "GovernorLedger",
    "LedgerRefusal",
    "LedgerState",
    "ReleaseRunRequest",
    "ReserveRequest",
    "ReserveResult",
    "SettleRequest",
    "SettleResult",
    "StoredControl",
]
