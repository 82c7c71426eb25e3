"""The ledger: one entity workflow that keeps every scope shared across runs.

Every change is a Workflow Update with a validator. Update handlers here are synchronous
(they never await), so Temporal runs them one at a time and a reservation is checked and
taken against every scope it touches in one step: no time-of-check/time-of-use race, and
"in all scopes or in none". Update ids are idempotency keys (Temporal deduplicates them
within a run; the book remembers open and recently closed reservation keys across
continue-as-new), so a retried call or a duplicate delivery never counts twice.

A worker may coalesce concurrent calls into one ``batch`` update (when its policy asks:
``shared.batch_updates``), whose entries carry their own update ids. Temporal deduplicates
the batch, not its entries, so the ledger remembers the reply of every change (reserve,
settle, release_run, extend; an entry or a single update) it applied in this run and
answers a re-sent one with that reply instead of applying it again; reads are simply
answered again. Three choices about batches:

- Rollout: a ledger worker of an earlier release has no ``batch`` handler and cannot
  replay a history holding one, so workers send batches only when asked, once every
  worker of the fleet runs a release with this handler.
- Continue-as-new: every entry counts toward ``continue_as_new_after`` as its own update
  would, so a run applies as many changes whether they came alone or batched, and a
  replay of one run costs what it did before batching (its history is shorter).
- Deferral: a batch stops applying entries once its replies pass
  :data:`BATCH_REPLY_BYTES`, so which entries one batch applied depends on the size of
  its replies. A later release that changes what a reply holds could apply a different
  set of entries near that threshold when it replays an old history: keep reply shapes
  stable, or patch such a change.

All the arithmetic lives in :class:`~temporal_governor.core.book.LedgerBook` (pure,
bounded); this module is the Temporal glue: validation, the clock, expiry timers,
continue-as-new. Each update is described once, as a :class:`LedgerUpdate` (name, request
model, reply type), which callers use too: one validation point for both sides.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, FailureError

from ..core.book import (
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
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
from ..core.pools import PoolCall
from ..errors import GovernorError, validation_problems

LEDGER_WORKFLOW = "temporal-governor-ledger"
"""Workflow type of the ledger."""

LEDGER_ACTIVITY = "temporal_governor.ledger"
"""Activity type of :func:`~._activity.ledger_call`; the governor never governs its own
activities. A tenant shard calls the root through it for its pools."""

LEDGER_UNAVAILABLE = "LedgerUnavailable"
"""``ApplicationError.type`` of a ledger call the ledger cannot answer (its workflow task
keeps failing): non-retryable, so the run decides at once (policy ``shared.on_unavailable``)."""

POOL_CALL_TIMEOUT = timedelta(seconds=20)
"""How long a shard's call to the root for its pools may take, retries included; a call
that did not go through is made again later (an ask with the same key)."""

MALFORMED_UPDATE = "MalformedLedgerUpdate"
"""``ApplicationError.type`` of a ledger update its validator rejected."""

LEDGER_FULL = "LedgerFull"
"""``ApplicationError.type`` of a ledger update refused by one of the ledger's size caps."""

POOL_START_TIMEOUT = timedelta(seconds=5)
"""How long a pool call may wait for a worker to take it (its schedule-to-start)."""

_POOL_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=2),
    non_retryable_error_types=[LEDGER_UNAVAILABLE, MALFORMED_UPDATE, LEDGER_FULL],
)

_PRUNE_EVERY = 500
"""Updates between two prunes of closed windows and idle counters."""

MAX_BATCH_ENTRIES = 500
"""Most entries one ``batch`` update may carry (workers send far fewer by default)."""

BATCH_REPLY_BYTES = 512 * 1024
"""Reply bytes (as compact JSON) after which a batch applies no further entry: the rest
are answered ``deferred`` and sent again, so a reply stays far below Temporal's 2 MB
payload limit whatever its entries answer (the first entry is always applied)."""

MAX_REMEMBERED_REPLIES = 10_000
"""Replies of applied changes remembered in one run (oldest dropped)."""

REMEMBERED: frozenset[str] = frozenset({"reserve", "settle", "release_run", "extend"})
"""Updates whose replies the ledger remembers by update id: the changes a batch carries
(a read is answered again; ``control`` and ``observe`` never go in a batch)."""


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
    "batch",
]
"""The ledger's updates."""

BATCHABLE: frozenset[str] = frozenset(
    {"reserve", "settle", "release_run", "extend", "baseline", "read_controls"}
)
"""Updates a ``batch`` may carry: those that may be applied again without harm (the
reads) or whose every key the book remembers (reservations, settlements, renewals).
``control`` and ``observe`` are always sent alone, deduplicated by their update id."""


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
"""Every update of the ledger a call may send, by name (``batch`` carries calls)."""


class BatchEntry(BaseModel):
    """One call in a ``batch``: its update, its own update id and its request (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=MAX_KEY_CHARS)
    """The call's update id (its idempotency key)."""
    update: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    """An update of :data:`BATCHABLE`; any other fails this entry alone."""
    request: dict[str, Any]
    """The update's JSON argument; validated by the entry's update, one entry at a time."""


class BatchRequest(BaseModel):
    """Calls applied one after the other, in order, each all-or-nothing on its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entries: list[BatchEntry] = Field(min_length=1, max_length=MAX_BATCH_ENTRIES)

    def wire(self) -> dict[str, Any]:
        """The request as the update's JSON argument."""
        return self.model_dump(mode="json")


class EntryFailure(BaseModel):
    """Why one entry of a batch failed: what its update alone would have failed with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    """The ``ApplicationError.type`` (``MalformedLedgerUpdate``, ...)."""
    message: str
    non_retryable: bool = False


class BatchReply(BaseModel):
    """The outcome of one entry: its reply, its failure, or ``deferred`` (not applied)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    reply: JsonValue = None
    """The reply its update alone would have given (JSON data)."""
    failure: EntryFailure | None = None
    deferred: bool = False
    """The batch's reply was full: not applied, send it again."""


BATCH = LedgerUpdate("batch", BatchRequest, TypeAdapter(list[BatchReply]))
"""Apply calls in order, each with its own update id; one reply per entry."""


@workflow.defn(name=LEDGER_WORKFLOW)
class GovernorLedger:
    """The entity workflow that keeps every scope shared across runs."""

    @workflow.init
    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.book = LedgerBook(state)
        self._replies: dict[str, Any] = {}
        """Update id -> reply of the changes this run applied (Temporal's own
        deduplication does not see the entries of a batch)."""
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
            due = [t for t in (soonest, self.book.pools.wake_at(_now())) if t is not None]
            timeout = None if not due else timedelta(seconds=max(0.001, min(due) - _now()))
            self._wake = False
            with contextlib.suppress(TimeoutError):  # the soonest reservation expired
                await workflow.wait_condition(
                    lambda: self._wake or self.book.pools.dirty or self._continue_now(),
                    timeout=timeout,
                )
            self.book.expire(_now())
            await self._tend_pools()
            if self._continue_now():
                await workflow.wait_condition(workflow.all_handlers_finished)
                self.book.expire(_now())
                self.book.prune(_now())
                self.book.fit(_now())  # never carry more than the payload budget
                workflow.continue_as_new(self.book.pack())

    async def _tend_pools(self) -> None:
        """Make the calls a tenant shard's pools need of the root (hierarchical leases).

        Never inside an update handler (they never wait): here, between two rounds of the
        expiry loop, one call at a time, as activities on the shard's own task queue (its
        updates go on being applied while one is out), so that continue-as-new never
        leaves one halfway.
        A ledger without pools (the root, an unsharded ledger, a fleet without
        hierarchical leases) makes no call and its history is what it was.
        """
        owner = workflow.info().workflow_id
        for call in self.book.pools.work(owner, _now()):
            if self._continue_now():
                self.book.pools.dirty = True  # the rest after continuing as new
                return
            since = _now()
            try:
                # an activity, not a local one: a local activity keeps the shard's workflow
                # task open for its whole round trip, and no update is applied meanwhile
                reply = await workflow.execute_activity(
                    LEDGER_ACTIVITY,
                    self._pool_call(call, since),
                    schedule_to_close_timeout=POOL_CALL_TIMEOUT,
                    # on a queue shared with agents' activities it may wait for a slot:
                    # give up soon, and try again after a pause, rather than stall the shard
                    schedule_to_start_timeout=POOL_START_TIMEOUT,
                    retry_policy=_POOL_RETRY,
                )
            except FailureError as error:
                workflow.logger.warning(
                    "ledger %s: pool call %s to %s failed: %s", owner, call.update, call.root, error
                )
                self.book.pools.unanswered(call, _now())
                continue
            finally:
                self.book.expire(_now())  # a slow root never holds up the shard's expiries
            if call.update == "reserve":
                try:
                    result = ReserveResult.model_validate(reply)
                except ValidationError as error:  # a root of another release: not a crash
                    workflow.logger.warning("ledger %s: pool ask answered %s", owner, error)
                    self.book.pools.unanswered(call, _now())
                    continue
                refusal = result.refusal
                self.book.pools.asked(
                    call,
                    result.amounts if result.granted else None,
                    refusal.retry_after_s if refusal is not None else None,
                    since,
                    _now(),
                )
            elif call.update == "settle":
                self.book.pools.settled(str(call.request["key"]))
            else:
                renewed = reply if isinstance(reply, int) else 0
                self.book.pools.extended(call.root, float(call.request["ttl_s"]), since, renewed)

    def _pool_call(self, call: PoolCall, since: float) -> dict[str, Any]:
        """The ledger activity's argument (a ``LedgerCall`` as JSON) for one pool call."""
        if call.update == "extend":
            update_id = f"extend:{call.request['run']}@{int(since * 1000)}"
        else:
            update_id = f"{call.update}:{call.request['key']}"
        return {
            "ledger_id": call.root,
            "update": call.update,
            "request": call.request,
            "update_id": update_id,
            "task_queue": workflow.info().task_queue,
            "continue_as_new_after": self.state.continue_as_new_after,
        }

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

    def _once(self, update_id: str, update: str, request: dict[str, Any]) -> Any:
        """Apply a change once (a re-sent one gets its first reply); a read every time."""
        if update not in REMEMBERED:
            return self._apply[update](self, request)
        if update_id in self._replies:
            return self._replies[update_id]
        reply = self._apply[update](self, request)
        self._replies[update_id] = reply
        if len(self._replies) > MAX_REMEMBERED_REPLIES:
            del self._replies[next(iter(self._replies))]
        return reply

    def _single(self, update: str, request: dict[str, Any]) -> Any:
        info = workflow.current_update_info()
        assert info is not None  # only called by update handlers
        return self._once(info.id, update, request)

    def _reserve(self, request: dict[str, Any]) -> dict[str, Any]:
        now = self._counted()
        req = RESERVE.request_of(request)
        _check_upstream(req)
        result = self.book.reserve(req, now)
        if result.granted and not result.duplicate:
            expires_at = now + req.ttl_s
            if self._deadline is None or expires_at < self._deadline:
                self._wake = True  # the expiry loop must wait for this sooner expiry
        controls = self.book.stored_controls(req.controls_for, req.controls_since_ms)
        if controls:
            result = result.model_copy(update={"controls": controls})
        return result.model_dump(mode="json")

    def _settle(self, request: dict[str, Any]) -> dict[str, Any]:
        now = self._counted()
        return self.book.settle(SETTLE.request_of(request), now).model_dump(mode="json")

    def _release_run(self, request: dict[str, Any]) -> int:
        now = self._counted()
        return self.book.release_run(RELEASE_RUN.request_of(request), now)

    def _extend(self, request: dict[str, Any]) -> int:
        now = self._counted()
        return self.book.extend(EXTEND.request_of(request), now)

    def _baseline(self, request: dict[str, Any]) -> dict[str, Any]:
        self._counted()
        return self.book.baselines(BASELINE.request_of(request))

    def _read_controls(self, request: dict[str, Any]) -> dict[str, Any]:
        self._counted()
        req = READ_CONTROLS.request_of(request)
        return self.book.controls_since(req.scopes, req.since_ms)

    _apply: dict[str, Callable[[GovernorLedger, dict[str, Any]], Any]] = {
        "reserve": _reserve,
        "settle": _settle,
        "release_run": _release_run,
        "extend": _extend,
        "baseline": _baseline,
        "read_controls": _read_controls,
    }
    """What each update of :data:`BATCHABLE` does (the handlers and ``batch`` share it)."""

    @workflow.update(name="reserve")
    def reserve(self, request: dict[str, Any]) -> dict[str, Any]:
        """Reserve in every scope of the request, or in none."""
        reply: dict[str, Any] = self._single("reserve", request)
        return reply

    @reserve.validator
    def _check_reserve(self, request: dict[str, Any]) -> None:
        _check_upstream(RESERVE.request_of(request))

    @workflow.update(name="settle")
    def settle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Commit the actual usage of a reservation and release the rest."""
        reply: dict[str, Any] = self._single("settle", request)
        return reply

    @settle.validator
    def _check_settle(self, request: dict[str, Any]) -> None:
        SETTLE.request_of(request)

    @workflow.update(name="release_run")
    def release_run(self, request: dict[str, Any]) -> int:
        """Settle what an ending run lists, release its other reservations; returns how many."""
        reply: int = self._single("release_run", request)
        return reply

    @release_run.validator
    def _check_release_run(self, request: dict[str, Any]) -> None:
        RELEASE_RUN.request_of(request)

    @workflow.update(name="extend")
    def extend(self, request: dict[str, Any]) -> int:
        """Keep a live run's open reservations from expiring; returns how many."""
        reply: int = self._single("extend", request)
        return reply

    @extend.validator
    def _check_extend(self, request: dict[str, Any]) -> None:
        EXTEND.request_of(request)

    @workflow.update(name="batch")
    def batch(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply calls in order, each all-or-nothing and idempotent by its own update id.

        Returns:
            One :class:`BatchReply` per entry, in order: an entry the ledger refuses (a
            malformed request, an update that cannot be batched) fails alone, and once the
            replies pass :data:`BATCH_REPLY_BYTES` the remaining entries are ``deferred``.
        """
        replies: list[dict[str, Any]] = []
        size = 0
        for entry in BATCH.request_of(request).entries:
            if replies and size > BATCH_REPLY_BYTES:
                replies.append(BatchReply(id=entry.id, deferred=True).model_dump(mode="json"))
                continue
            reply = self._entry(entry).model_dump(mode="json", exclude_defaults=True)
            size += len(json.dumps(reply, separators=(",", ":")))
            replies.append(reply)
        return replies

    @batch.validator
    def _check_batch(self, request: dict[str, Any]) -> None:
        BATCH.request_of(request)

    def _entry(self, entry: BatchEntry) -> BatchReply:
        if entry.update not in BATCHABLE:
            failure = EntryFailure(
                type=MALFORMED_UPDATE,
                message=f"a batch carries {', '.join(sorted(BATCHABLE))}, not {entry.update!r}",
                non_retryable=True,
            )
            return BatchReply(id=entry.id, failure=failure)
        try:
            return BatchReply(id=entry.id, reply=self._once(entry.id, entry.update, entry.request))
        except ApplicationError as error:
            failure = EntryFailure(
                type=error.type or "ApplicationError",
                message=error.message,
                non_retryable=error.non_retryable,
            )
            return BatchReply(id=entry.id, failure=failure)

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
        return self._baseline(request)

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
        return self._read_controls(request)

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


def _check_upstream(req: ReserveRequest) -> None:
    """Refuse a request that names a root other than this shard's (``MalformedLedgerUpdate``).

    Only a tenant shard draws from pools, and only of its own root: its workflow id is
    ``<root>-shard-<i>-of-<n>``.
    """
    if req.upstream is None:
        return
    ledger_id = workflow.info().workflow_id
    if not ledger_id.startswith(f"{req.upstream}-shard-"):
        raise ApplicationError(
            f"malformed ReserveRequest: upstream {req.upstream!r} is not the root of "
            f"ledger {ledger_id!r} (only a tenant shard draws from a pool of its root)",
            type=MALFORMED_UPDATE,
            non_retryable=True,
        )


__all__ = [
    "BASELINE",
    "BATCH",
    "BATCHABLE",
    "BATCH_REPLY_BYTES",
    "CONTROL",
    "EXTEND",
    "LEDGER_ACTIVITY",
    "LEDGER_FULL",
    "LEDGER_UNAVAILABLE",
    "LEDGER_WORKFLOW",
    "MALFORMED_UPDATE",
    "MAX_BATCH_ENTRIES",
    "MAX_SETTLEMENTS",
    "MAX_TTL_S",
    "OBSERVE",
    "READ_CONTROLS",
    "RELEASE_RUN",
    "REMEMBERED",
    "RESERVE",
    "SETTLE",
    "UPDATES",
    "BaselineRequest",
    "BatchEntry",
    "BatchReply",
    "BatchRequest",
    "ControlRecordRequest",
    "EntryFailure",
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
