"""The ledger: one entity workflow that keeps every scope shared across runs.

Every change is a Workflow Update with a validator. Update handlers here are synchronous
(they never await), so Temporal runs them one at a time and a reservation is checked and
taken against every scope it touches in one step: no time-of-check/time-of-use race, and
"in all scopes or in none". Update ids are idempotency keys (Temporal deduplicates them
within a run; the book remembers open and recently closed reservation keys across
continue-as-new), so a retried call or a duplicate delivery never counts twice.

All the arithmetic lives in :class:`~temporal_governor.core.book.LedgerBook` (pure,
bounded); this module is the Temporal glue: validation, the clock, expiry timers,
continue-as-new. Each update is described once, as a :class:`LedgerUpdate` (name, request
model, reply type), which callers use too: one validation point for both sides.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
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
    StoredControls,
)
from ..core.detectors import BaselineState
from ..errors import GovernorError, validation_problems

LEDGER_WORKFLOW = "temporal-governor-ledger"
"""Workflow type of the ledger."""

MALFORMED_UPDATE = "MalformedLedgerUpdate"
"""``ApplicationError.type`` of a ledger update its validator rejected."""

LEDGER_FULL = "LedgerFull"
"""``ApplicationError.type`` of a ledger update refused by one of the ledger's size caps."""

_PRUNE_EVERY = 500
"""Updates between two prunes of closed windows and idle counters."""


_RequestT = TypeVar("_RequestT", bound=BaseModel)
_ReplyT = TypeVar("_ReplyT")

UpdateName = Literal[
    "reserve",
    "settle",
    "release_run",
    "extend",
    "control",
    "read_controls",
    "baseline",
    "observe",
]
"""The ledger's updates."""


class MalformedLedgerReply(GovernorError):
    """A ledger reply that is not what its update answers: a governor bug or version skew.

    Raised in workflow code, it fails the workflow task (retried), never the run: a fixed
    worker takes the run on from the recorded reply.
    """


def _malformed(model: type[BaseModel], error: ValidationError) -> ApplicationError:
    return ApplicationError(
        f"malformed {model.__name__}: {validation_problems(error, 'request')}",
        type=MALFORMED_UPDATE,
        non_retryable=True,
    )


@dataclass(frozen=True)
class LedgerUpdate(Generic[_RequestT, _ReplyT]):
    """One update of the ledger: its name, its request model and the type of its reply.

    The one place where a caller's request and the ledger's reply are validated: callers
    build requests with :meth:`request_of` and read replies with :meth:`reply_of`; the
    ledger's handlers validate with :attr:`request` too.
    """

    name: UpdateName
    request: type[_RequestT]
    reply: TypeAdapter[_ReplyT]

    def request_of(self, data: Any) -> _RequestT:
        """``data`` (JSON data or the request model) as this update's request.

        Raises:
            ApplicationError: ``MalformedLedgerUpdate`` (non-retryable), naming every
                problem, as the ledger's validator would have refused it.
        """
        if isinstance(data, self.request):
            return data
        try:
            return self.request.model_validate(data)
        except ValidationError as error:
            raise self.refused(error) from None

    def refused(self, error: ValidationError) -> ApplicationError:
        """The failure of a request the ledger refuses (``MalformedLedgerUpdate``)."""
        return _malformed(self.request, error)

    def reply_of(self, data: Any) -> _ReplyT:
        """The ledger's reply (JSON data) as this update's typed reply.

        Raises:
            MalformedLedgerReply: The reply is not of this update's reply type.
        """
        try:
            return self.reply.validate_python(data)
        except ValidationError as error:
            raise MalformedLedgerReply(
                f"the ledger's reply to {self.name} is malformed: "
                f"{validation_problems(error, 'reply')}"
            ) from None


RESERVE = LedgerUpdate("reserve", ReserveRequest, TypeAdapter(ReserveResult))
"""Reserve in every scope of the request, or in none."""
SETTLE = LedgerUpdate("settle", SettleRequest, TypeAdapter(SettleResult))
"""Commit the actual usage of a reservation and release the rest."""
RELEASE_RUN = LedgerUpdate("release_run", ReleaseRunRequest, TypeAdapter(int))
"""Settle what an ending run lists, release its other reservations; replies how many."""
EXTEND = LedgerUpdate("extend", ExtendRequest, TypeAdapter(int))
"""Keep a live run's open reservations from expiring; replies how many."""
CONTROL = LedgerUpdate("control", ControlRecordRequest, TypeAdapter(StoredControl))
"""Keep the latest kill or resume of a tenant or agent type."""
READ_CONTROLS = LedgerUpdate(
    "read_controls", ReadControlsRequest, TypeAdapter[StoredControls](StoredControls)
)
"""The stored kills and resumes of some scopes newer than a time."""
BASELINE = LedgerUpdate(
    "baseline", BaselineRequest, TypeAdapter[dict[str, BaselineState]](dict[str, BaselineState])
)
"""The spend baselines of some keys (those never observed are left out)."""
OBSERVE = LedgerUpdate(
    "observe", ObserveRequest, TypeAdapter[dict[str, BaselineState]](dict[str, BaselineState])
)
"""Fold a finished run's values into their baselines; replies the new baselines."""

UPDATES: dict[str, LedgerUpdate[Any, Any]] = {
    update.name: update
    for update in (RESERVE, SETTLE, RELEASE_RUN, EXTEND, CONTROL, READ_CONTROLS, BASELINE, OBSERVE)
}
"""Every update of the ledger, by name."""


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
        req = RESERVE.request_of(request)
        result = self.book.reserve(req, now)
        if result.granted and not result.duplicate:
            expires_at = now + req.ttl_s
            if self._deadline is None or expires_at < self._deadline:
                self._wake = True  # the expiry loop must wait for this sooner expiry
        controls = self.book.stored_controls(req.controls_for, req.controls_since_ms)
        if controls:
            result = result.model_copy(update={"controls": controls})
        return result.model_dump(mode="json")

    @reserve.validator
    def _check_reserve(self, request: dict[str, Any]) -> None:
        RESERVE.request_of(request)

    @workflow.update(name="settle")
    def settle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Commit the actual usage of a reservation and release the rest."""
        now = self._counted()
        return self.book.settle(SETTLE.request_of(request), now).model_dump(mode="json")

    @settle.validator
    def _check_settle(self, request: dict[str, Any]) -> None:
        SETTLE.request_of(request)

    @workflow.update(name="release_run")
    def release_run(self, request: dict[str, Any]) -> int:
        """Settle what an ending run lists, release its other reservations; returns how many."""
        now = self._counted()
        return self.book.release_run(RELEASE_RUN.request_of(request), now)

    @release_run.validator
    def _check_release_run(self, request: dict[str, Any]) -> None:
        RELEASE_RUN.request_of(request)

    @workflow.update(name="extend")
    def extend(self, request: dict[str, Any]) -> int:
        """Keep a live run's open reservations from expiring; returns how many."""
        now = self._counted()
        return self.book.extend(EXTEND.request_of(request), now)

    @extend.validator
    def _check_extend(self, request: dict[str, Any]) -> None:
        EXTEND.request_of(request)

    @workflow.update(name="control")
    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Keep the latest kill or resume of a tenant or agent type for runs that start later."""
        now = self._counted()
        req = CONTROL.request_of(request)
        try:
            stored = self.book.record_control(req, now)
        except CapacityError as error:
            raise ApplicationError(str(error), type=LEDGER_FULL, non_retryable=True) from None
        return stored.model_dump(mode="json")

    @control.validator
    def _check_control(self, request: dict[str, Any]) -> None:
        CONTROL.request_of(request)

    @workflow.update(name="baseline")
    def baseline(self, request: dict[str, Any]) -> dict[str, Any]:
        """The baselines of some keys (those never observed are left out)."""
        self._counted()
        return self.book.baselines(BASELINE.request_of(request))

    @baseline.validator
    def _check_baseline(self, request: dict[str, Any]) -> None:
        BASELINE.request_of(request)

    @workflow.update(name="observe")
    def observe(self, request: dict[str, Any]) -> dict[str, Any]:
        """Fold a finished run's values into their baselines; returns the new baselines."""
        now = self._counted()
        return self.book.observe(OBSERVE.request_of(request), now)

    @observe.validator
    def _check_observe(self, request: dict[str, Any]) -> None:
        OBSERVE.request_of(request)

    @workflow.update(name="read_controls")
    def read_controls(self, request: dict[str, Any]) -> dict[str, Any]:
        """The stored kills and resumes of some scopes newer than ``since_ms``.

        For workflows, which cannot query: a run resting in a fleet pause polls this.
        """
        self._counted()
        req = READ_CONTROLS.request_of(request)
        return self.book.controls_since(req.scopes, req.since_ms)

    @read_controls.validator
    def _check_read_controls(self, request: dict[str, Any]) -> None:
        READ_CONTROLS.request_of(request)

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
    "BASELINE",
    "CONTROL",
    "EXTEND",
    "LEDGER_FULL",
    "LEDGER_WORKFLOW",
    "MALFORMED_UPDATE",
    "MAX_SETTLEMENTS",
    "MAX_TTL_S",
    "OBSERVE",
    "READ_CONTROLS",
    "RELEASE_RUN",
    "RESERVE",
    "SETTLE",
    "UPDATES",
    "BaselineRequest",
    "ControlRecordRequest",
    "ExtendRequest",
    "GovernorLedger",
    "LedgerRefusal",
    "LedgerState",
    "LedgerUpdate",
    "MalformedLedgerReply",
    "ObserveRequest",
    "ReadControlsRequest",
    "ReleaseRunRequest",
    "ReserveRequest",
    "ReserveResult",
    "SettleRequest",
    "SettleResult",
    "StoredControl",
    "StoredControls",
    "UpdateName",
]
