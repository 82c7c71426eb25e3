"""A worker process's queue of calls to one ledger, and their coalescing into ``batch``.

One workflow's update rate caps the fleet, so a worker process sends at most
``max_in_flight`` updates to one ledger at once (its gate); calls that arrive meanwhile
queue, and the next update takes the queue's head. A call that asked for batching
(``LedgerCall.batch``, policy ``shared.batch_updates``) may share that update, a ``batch``,
with the batchable calls queued behind it: up to :data:`BATCH_MAX_ENTRIES` of them,
:data:`BATCH_MAX_LIMITS` limits and :data:`BATCH_MAX_BYTES` of request. Any other call,
and a call alone in the queue, goes as its own update with its own update id, exactly as
without batching, so a quiet ledger waits for nothing. Each caller gets its own reply or
failure, the same as its own update would have given; a caller that gives up (cancelled,
out of time) leaves the others' batch alone.

Why batching is asked for, never assumed: a ledger worker of an earlier release cannot
replay a history holding a ``batch`` update (it has no handler for it), so a fleet turns
batching on once every worker runs a release that has one. A ledger that refuses
``batch`` as unknown (a worker of an earlier release still serves it) gets single
updates from this process for :data:`NO_BATCH_S`.

Why the caps: the ledger applies a whole batch in one workflow task, which the SDK's
deadlock detector fails after 2 s without a yield; under CPU load one entry of several
limits can cost milliseconds, so a batch is capped by its entries and by the limits they
touch (counted here, from the requests, the same for every attempt).

Everything here is per event loop (a worker's loop): the queue, the gate, the counters.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError

from ..core.book import MAX_KEY_CHARS
from ._workflow import (
    BATCH,
    BATCHABLE,
    LEDGER_WORKFLOW,
    MAX_BATCH_ENTRIES,
    BatchEntry,
    BatchRequest,
    LedgerState,
    MalformedLedgerReply,
)

BATCH_MAX_ENTRIES = 25
"""Most calls one update carries by default (the ledger takes at most
:data:`~temporal_governor.ledger._workflow.MAX_BATCH_ENTRIES`)."""

BATCH_MAX_LIMITS = 100
"""Most limits the calls of one batch touch together (:func:`limits_of`): what the
ledger's workflow task costs grows with them, and it must stay far below the SDK's 2 s
deadlock detector under load (25 reserves of 5 limits each took at most 0.3 s with three
threads contending for the GIL on 2 cores; 20 of them fit). A call above it still goes,
alone."""

BATCH_MAX_BYTES = 256 * 1024
"""Most request bytes (as JSON) one update carries: far below Temporal's 2 MB payload
limit, with the ledger's reply budget (``BATCH_REPLY_BYTES``) on top. A call larger than
this alone still goes, alone."""

NO_BATCH_S = 60.0
"""How long a process sends single updates after a ledger refused ``batch`` as unknown (a
ledger worker of an earlier release, during a rolling deploy)."""

RPC_TIMEOUT = timedelta(seconds=4)
"""How long one update may wait before the caller looks at why (a wedged ledger?)."""

ATTEMPT_TIMEOUT = 10.0
"""Seconds one attempt may wait for the gate and the update together (the wedge check
after it has its own RPC timeouts). Kept here rather than as the local activity's
start-to-close timeout: core's start-to-close timer across local retries is fragile in
temporalio 1.35 (a stale timer can fire against a later attempt)."""

_NO_HANDLER = f"Update handler for '{BATCH.name}' expected but not found"
"""How temporalio (1.35) refuses an update a workflow has no handler for: a
``RuntimeError`` raised before the update is accepted."""


def limits_of(update: str, request: dict[str, Any]) -> int:
    """What a call weighs in a batch: the limits (keys, scopes, settlements) it names.

    At least one: a call that names none (settle, extend) still costs its entry.
    """
    named = {
        "reserve": "limits",
        "release_run": "settlements",
        "baseline": "keys",
        "read_controls": "scopes",
    }.get(update)
    items = request.get(named) if named is not None else None
    return max(1, len(items)) if isinstance(items, list | dict) else 1


@dataclass(eq=False)
class Entry:
    """One waiting call: what it sends, and where its reply goes."""

    client: Client
    update: str
    update_id: str
    request: dict[str, Any]
    task_queue: str
    continue_as_new_after: int
    max_in_flight: int
    max_entries: int
    batchable: bool
    """Whether it may share an update (asked for, batchable, its id fits an entry)."""
    limits: int
    size: int
    reply: asyncio.Future[Any]

    @classmethod
    def of(
        cls,
        client: Client,
        *,
        update: str,
        update_id: str,
        request: dict[str, Any],
        task_queue: str,
        continue_as_new_after: int,
        max_in_flight: int,
        max_entries: int,
        batch: bool,
    ) -> Entry:
        """A call of the running event loop, its weight counted."""
        return cls(
            client=client,
            update=update,
            update_id=update_id,
            request=request,
            task_queue=task_queue,
            continue_as_new_after=continue_as_new_after,
            max_in_flight=max_in_flight,
            max_entries=max_entries,
            batchable=batch and update in BATCHABLE and len(update_id) <= MAX_KEY_CHARS,
            limits=limits_of(update, request),
            size=len(json.dumps(request, separators=(",", ":"))) + len(update_id) + 40,
            reply=asyncio.get_running_loop().create_future(),
        )


@dataclass(frozen=True)
class CoalescingStats:
    """What one process asked of one ledger, and the updates that carried it."""

    calls: int
    """Calls made (each once, however often it was sent)."""
    updates: int
    """Updates sent (single ones and batches; a deferred entry is sent again)."""
    batches: int
    """Updates that were ``batch`` updates (two calls or more)."""


@dataclass(eq=False)
class Coalescer:
    """One process's queue of calls to one ledger (per event loop).

    Invariant: while a live call is queued, exactly one sender task waits for the gate
    (:attr:`waiting`); once it has a slot it takes the queue's head as one update.
    """

    ledger_id: str
    gate: asyncio.Semaphore | None = None
    """At most this many updates in flight (sized by the first call's ``max_in_flight``)."""
    queue: deque[Entry] = field(default_factory=deque)
    waiting: asyncio.Task[None] | None = None
    wedge_check: asyncio.Task[str | None] | None = None
    """The one wedge check its failing callers share."""
    single_until: float = 0.0
    calls: int = 0
    updates: int = 0
    batches: int = 0

    def stats(self) -> CoalescingStats:
        """What it has sent so far."""
        return CoalescingStats(self.calls, self.updates, self.batches)

    async def call(self, entry: Entry) -> Any:
        """Queue a call and wait for its own reply (or failure)."""
        self.calls += 1
        self.queue.append(entry)
        self._ensure_sender()
        try:
            return await entry.reply
        finally:
            if not entry.reply.done():
                entry.reply.cancel()
            self._forget_dead()

    def _ensure_sender(self) -> None:
        if self.waiting is None or self.waiting.done():
            self.waiting = asyncio.get_running_loop().create_task(self._next_update())

    def _forget_dead(self) -> None:
        """Drop the queue's abandoned calls; stop waiting for a slot if none is left."""
        while self.queue and self.queue[0].reply.done():
            self.queue.popleft()
        if self.waiting is not None and not any(not e.reply.done() for e in self.queue):
            # nobody left to send for: a gate that never opens must not keep a task
            self.waiting.cancel()
            self.waiting = None

    async def _next_update(self) -> None:
        me = asyncio.current_task()
        try:
            live = next((e for e in self.queue if not e.reply.done()), None)
            if live is None:
                return
            if self.gate is None:
                self.gate = asyncio.Semaphore(live.max_in_flight)
            gate = self.gate  # released as taken, even if a test swaps the gate meanwhile
            await gate.acquire()
        finally:
            if self.waiting is me:
                self.waiting = None
        try:
            batch = self._take()
            if any(not e.reply.done() for e in self.queue):
                self._ensure_sender()
            if batch:
                await self._send(batch)
        finally:
            gate.release()

    def _take(self) -> list[Entry]:
        """The queue's head: as many calls as one update may carry."""
        batch: list[Entry] = []
        size = limits = 0
        while self.queue:
            entry = self.queue[0]
            if entry.reply.done():
                self.queue.popleft()
                continue
            if batch:
                first = batch[0]
                most = 1 if time.monotonic() < self.single_until else first.max_entries
                if (
                    len(batch) >= most
                    or not (first.batchable and entry.batchable)
                    or entry.client is not first.client
                    or size + entry.size > BATCH_MAX_BYTES
                    or limits + entry.limits > BATCH_MAX_LIMITS
                ):
                    break
            batch.append(self.queue.popleft())
            size += entry.size
            limits += entry.limits
        return batch

    async def _send(self, batch: list[Entry]) -> None:
        """Send one update for the batch; hand every caller its own outcome."""
        argument: dict[str, Any] = {}
        if len(batch) > 1:
            built = _batch_request(batch)
            if built is None:  # a call the batch model refuses: it goes alone
                self._again(batch)
                return
            argument = built
        self.updates += 1
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT):
                if len(batch) == 1:
                    [entry] = batch
                    reply = await self._update(entry, entry.update, entry.request, entry.update_id)
                    if not entry.reply.done():
                        entry.reply.set_result(reply)
                    return
                self.batches += 1
                # a batch's own id is fresh: the ledger deduplicates its entries by theirs
                replies = await self._update(
                    batch[0], BATCH.name, argument, f"batch:{uuid.uuid4().hex}"
                )
        except WorkflowUpdateFailedError as error:
            if len(batch) > 1 and _no_batch_handler(error):
                self.single_until = time.monotonic() + NO_BATCH_S  # a ledger of an earlier release
                self._again(batch)
                return
            _fail(batch, error)
            return
        except asyncio.CancelledError:
            for entry in batch:
                entry.reply.cancel()
            raise
        except Exception as error:
            _fail(batch, error)
            return
        self._answer(batch, replies)

    def _again(self, entries: list[Entry]) -> None:
        """Put calls back first in line, in their order."""
        self.queue.extendleft(reversed(entries))
        self._ensure_sender()

    def _answer(self, batch: list[Entry], data: Any) -> None:
        try:
            replies = BATCH.reply_of(data)
            if [r.id for r in replies] != [e.update_id for e in batch]:
                raise MalformedLedgerReply(
                    "the ledger's reply to batch does not answer its entries in order"
                )
        except MalformedLedgerReply as error:
            _fail(batch, error)
            return
        deferred = []
        for entry, reply in zip(batch, replies, strict=True):
            if entry.reply.done():
                continue
            if reply.deferred:
                deferred.append(entry)
            elif reply.failure is not None:
                cause = ApplicationError(
                    reply.failure.message,
                    type=reply.failure.type,
                    non_retryable=reply.failure.non_retryable,
                )
                entry.reply.set_exception(WorkflowUpdateFailedError(cause))
            else:
                entry.reply.set_result(reply.reply)
        if deferred:  # the ledger's reply was full
            self._again(deferred)

    async def _update(
        self, first: Entry, name: str, argument: dict[str, Any], update_id: str
    ) -> Any:
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            LEDGER_WORKFLOW,
            LedgerState(continue_as_new_after=first.continue_as_new_after).model_dump(mode="json"),
            id=self.ledger_id,
            task_queue=first.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        return await first.client.execute_update_with_start_workflow(
            name,
            argument,
            id=update_id,
            start_workflow_operation=start,
            rpc_timeout=RPC_TIMEOUT,
        )


def _batch_request(batch: list[Entry]) -> dict[str, Any] | None:
    """The ``batch`` update's argument, or ``None`` when the model refuses a call.

    A refused call is marked to go alone; the others may share an update again.
    """
    entries = []
    for entry in batch:
        try:
            entries.append(
                BatchEntry(id=entry.update_id, update=entry.update, request=entry.request)
            )
        except ValueError:
            entry.batchable = False
    if not all(entry.batchable for entry in batch):
        return None
    try:
        return BatchRequest(entries=entries).wire()
    except ValueError:
        for entry in batch:
            entry.batchable = False
        return None


def _no_batch_handler(error: WorkflowUpdateFailedError) -> bool:
    """Whether the ledger refused ``batch`` as an update it has no handler for."""
    cause = error.cause
    return (
        isinstance(cause, ApplicationError)
        and cause.type == "RuntimeError"
        and _NO_HANDLER in cause.message
    )


def _fail(batch: list[Entry], error: BaseException) -> None:
    for entry in batch:
        if not entry.reply.done():
            entry.reply.set_exception(error)


_coalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Coalescer]] = (
    weakref.WeakKeyDictionary()
)


def coalescer(ledger_id: str) -> Coalescer:
    """The running event loop's coalescer of calls to a ledger."""
    by_ledger = _coalescers.setdefault(asyncio.get_running_loop(), {})
    found = by_ledger.get(ledger_id)
    if found is None:
        found = by_ledger[ledger_id] = Coalescer(ledger_id)
    return found


def coalescing_stats(ledger_id: str) -> CoalescingStats:
    """What this process (its running event loop) has asked of a ledger so far."""
    return coalescer(ledger_id).stats()


class Gates:
    """The running event loop's in-flight gates, by ledger id.

    Tests hold a ledger's slots by putting in a gate of their own (``Semaphore(0)``); a
    sender already waiting keeps waiting on the gate it found.
    """

    def get(self, ledger_id: str) -> asyncio.Semaphore | None:
        """A ledger's gate, ``None`` before its first update."""
        return coalescer(ledger_id).gate

    def __getitem__(self, ledger_id: str) -> asyncio.Semaphore:
        gate = self.get(ledger_id)
        if gate is None:
            raise KeyError(ledger_id)
        return gate

    def __setitem__(self, ledger_id: str, gate: asyncio.Semaphore) -> None:
        coalescer(ledger_id).gate = gate


gates = Gates()
"""The running event loop's in-flight gates (see :class:`Gates`)."""


def check_max_entries(max_entries: int) -> None:
    """Refuse a batch size the ledger would refuse."""
    if not 1 <= max_entries <= MAX_BATCH_ENTRIES:
        raise ValueError(
            f"max_entries must be between 1 and {MAX_BATCH_ENTRIES} (the most entries the"
            f" ledger takes in one batch), not {max_entries!r}"
        )
