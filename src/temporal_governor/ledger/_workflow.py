"""The ledger: one entity workflow that keeps every scope shared across runs.

Every change is a Workflow Update with a validator. Update handlers here are synchronous
(they never await), so Temporal runs them one at a time and a reservation is checked and
taken against every scope it touches in one step: no time-of-check/time-of-use race, and
"in all scopes or in none". Update ids are idempotency keys (Temporal deduplicates them
within a run; the book remembers open and recently closed reservation keys across
continue-as-new), so a retried call or a duplicate delivery never counts twice.

All the arithmetic lives in :class:`~temporal_governor.book.LedgerBook` (pure, bounded);
this module is the Temporal glue: validation, the clock, expiry timers, continue-as-new.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

from ..core.book import (
    MAX_SETTLEMENTS,
    MAX_TTL_S,
    BaselineRequest,
    CapacityError,
    ControlRecordRequest,
    ExtendRequest,
    LedgerBook,
    LedgerRefusal,
    LedgerState,
    ObserveRequest,
    ReadControlsRequest,
    ReleaseRunRequest,
    ReserveRequest,
    ReserveResult,
    SettleRequest,
    SettleResult,
    StoredControl,
)
from ..errors import validation_problems

LEDGER_WORKFLOW = "temporal-governor-ledger"
"""Workflow type of the ledger."""

MALFORMED_UPDATE = "MalformedLedgerUpdate"
"""``ApplicationError.type`` of a ledger update its validator rejected."""

LEDGER_FULL = "LedgerFull"
"""``ApplicationError.type`` of a ledger update refused by one of the ledger's size caps."""

_PRUNE_EVERY = 500
"""Updates between two prunes of closed windows and idle counters."""


def _validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ApplicationError(
            f"malformed {model.__name__}: {validation_problems(error, 'request')}",
            type=MALFORMED_UPDATE,
            non_retryable=True,
        ) from None


@workflow.defn(name=LEDGER_WORKFLOW)
class GovernorLedger:
    """The entity workflow that keeps every scope shared across runs."""

    @workflow.init
    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.book = LedgerBook(state)
        self._updates = 0
        self._wake = False
        self._deadline: float | None = None

    @property
    def state(self) -> LedgerState:
        """The book's state."""
        return self.book.state

    @workflow.run
    async def run(self, state: dict[str, Any] | None = None) -> None:
        """Expire unsettled reservations; continue as new before history grows large."""
        while True:
            soonest = self.book.next_expiry()
            self._deadline = soonest
            timeout = None if soonest is None else timedelta(seconds=max(0.001, soonest - _now()))
            self._wake = False
            with contextlib.suppress(TimeoutError):  # the soonest reservation expired
                await workflow.wait_condition(
                    lambda: self._wake or self._continue_now(), timeout=timeout
                )
            self.book.expire(_now())
            if self._continue_now():
                await workflow.wait_condition(workflow.all_handlers_finished)
                self.book.expire(_now())
                self.book.prune(_now())
                self.book.fit(_now())  # never carry more than the payload budget
                workflow.continue_as_new(self.book.pack())

    def _continue_now(self) -> bool:
        return (
            self._updates >= self.state.continue_as_new_after
            or workflow.info().is_continue_as_new_suggested()
        )

    def _counted(self) -> float:
        """Count an update; prune now and then. Returns the workflow's clock."""
        self._updates += 1
        now = _now()
        if self._updates % _PRUNE_EVERY == 0:
            self.book.prune(now)
        return now

    # -- updates ------------------------------------------------------------------------

    @workflow.update(name="reserve")
    def reserve(self, request: dict[str, Any]) -> dict[str, Any]:
        """Reserve in every scope of the request, or in none."""
        now = self._counted()
        req: ReserveRequest = _validated(ReserveRequest, request)
        result = self.book.reserve(req, now)
        if result.granted and not result.duplicate:
            expires_at = now + req.ttl_s
            if self._deadline is None or expires_at < self._deadline:
                self._wake = True  # the expiry loop must wait for this sooner expiry
        controls = self.book.controls_since(req.controls_for, req.controls_since_ms)
        if controls:
            result = result.model_copy(update={"controls": controls})
        return result.model_dump(mode="json")

    @reserve.validator
    def _check_reserve(self, request: dict[str, Any]) -> None:
        _validated(ReserveRequest, request)

    @workflow.update(name="settle")
    def settle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Commit the actual usage of a reservation and release the rest."""
        now = self._counted()
        req: SettleRequest = _validated(SettleRequest, request)
        return self.book.settle(req, now).model_dump(mode="json")

    @settle.validator
    def _check_settle(self, request: dict[str, Any]) -> None:
        _validated(SettleRequest, request)

    @workflow.update(name="release_run")
    def release_run(self, request: dict[str, Any]) -> int:
        """Settle what an ending run lists, release its other reservations; returns how many."""
        now = self._counted()
        req: ReleaseRunRequest = _validated(ReleaseRunRequest, request)
        return self.book.release_run(req, now)

    @release_run.validator
    def _check_release_run(self, request: dict[str, Any]) -> None:
        _validated(ReleaseRunRequest, request)

    @workflow.update(name="extend")
    def extend(self, request: dict[str, Any]) -> int:
        """Keep a live run's open reservations from expiring; returns how many."""
        now = self._counted()
        return self.book.extend(_validated(ExtendRequest, request), now)

    @extend.validator
    def _check_extend(self, request: dict[str, Any]) -> None:
        _validated(ExtendRequest, request)

    @workflow.update(name="control")
    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Keep the latest kill or resume of a tenant or agent type for runs that start later."""
        now = self._counted()
        req: ControlRecordRequest = _validated(ControlRecordRequest, request)
        try:
            stored = self.book.record_control(req, now)
        except CapacityError as error:
            raise ApplicationError(str(error), type=LEDGER_FULL, non_retryable=True) from None
        return stored.model_dump(mode="json")

    @control.validator
    def _check_control(self, request: dict[str, Any]) -> None:
        _validated(ControlRecordRequest, request)

    @workflow.update(name="baseline")
    def baseline(self, request: dict[str, Any]) -> dict[str, Any]:
        """The baselines of some keys (those never observed are left out)."""
        self._counted()
        return self.book.baselines(_validated(BaselineRequest, request))

    @baseline.validator
    def _check_baseline(self, request: dict[str, Any]) -> None:
        _validated(BaselineRequest, request)

    @workflow.update(name="observe")
    def observe(self, request: dict[str, Any]) -> dict[str, Any]:
        """Fold a finished run's values into their baselines; returns the new baselines."""
        now = self._counted()
        return self.book.observe(_validated(ObserveRequest, request), now)

    @observe.validator
    def _check_observe(self, request: dict[str, Any]) -> None:
        _validated(ObserveRequest, request)

    @workflow.update(name="read_controls")
    def read_controls(self, request: dict[str, Any]) -> dict[str, Any]:
        """The stored kills and resumes of some scopes newer than ``since_ms``.

        For workflows, which cannot query: a run resting in a fleet pause polls this.
        """
        self._counted()
        req: ReadControlsRequest = _validated(ReadControlsRequest, request)
        return self.book.controls_since(req.scopes, req.since_ms)

    @read_controls.validator
    def _check_read_controls(self, request: dict[str, Any]) -> None:
        _validated(ReadControlsRequest, request)

    @workflow.query(name="controls")
    def query_controls(self, scopes: list[str]) -> dict[str, Any]:
        """The stored kills and resumes of these scopes (``tenant:<name>``, ``agent:<type>``)."""
        return self.book.controls_since(scopes, -1)

    @workflow.query(name="state")
    def query_state(self, scope_prefix: str = "") -> dict[str, Any]:
        """Counters (of scopes starting with ``scope_prefix``), open reservations, totals."""
        return {**self.book.view(scope_prefix, _now()), "run_id": workflow.info().run_id}


def _now() -> float:
    return workflow.now().replace(tzinfo=UTC).timestamp()


__all__ = [
    "LEDGER_FULL",
    "LEDGER_WORKFLOW",
    "MALFORMED_UPDATE",
    "MAX_SETTLEMENTS",
    "MAX_TTL_S",
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
