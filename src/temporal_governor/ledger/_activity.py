"""The activity through which governed workflows talk to the ledger.

Workflows cannot send Updates to other workflows, so a governed run reaches the ledger
through this (local) activity: an update-with-start, which starts the ledger if it is not
running yet and applies the update in one call. The update id is the idempotency key.

Calls go through the worker process's queue to their ledger (``_coalescer``): at most
``max_in_flight`` updates in flight per ledger, and, for a call that asks for it
(:attr:`LedgerCall.batch`), one ``batch`` update for several queued calls. Here each
call's failure is sorted: refused for good, slow (retried) or a wedged ledger.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer, model_validator
from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from ..core.book import (
    BaselineRequest,
    ControlRecordRequest,
    ExtendRequest,
    ObserveRequest,
    ReadControlsRequest,
    ReleaseRunRequest,
    ReserveRequest,
    SettleRequest,
)
from ._coalescer import (
    ATTEMPT_TIMEOUT,
    BATCH_MAX_ENTRIES,
    RPC_TIMEOUT,
    Coalescer,
    Entry,
    check_max_entries,
    coalescer,
    gates,
)
from ._wedge import wedged
from ._workflow import (
    BATCH,
    LEDGER_ACTIVITY,
    LEDGER_FULL,
    LEDGER_UNAVAILABLE,
    MALFORMED_UPDATE,
    UPDATES,
    UpdateName,
)

LEDGER_SLOW = "LedgerSlow"
"""``ApplicationError.type`` of an attempt that ran out of time: retried."""

_gates = gates
"""The running event loop's in-flight gate per ledger id; tests hold a ledger's slots
by putting in one of their own (``_gates[ledger_id] = asyncio.Semaphore(0)``)."""


LedgerRequest = (
    ReserveRequest
    | SettleRequest
    | ReleaseRunRequest
    | ExtendRequest
    | ControlRecordRequest
    | ReadControlsRequest
    | BaselineRequest
    | ObserveRequest
)
"""The request of any ledger update."""


class LedgerCall(BaseModel):
    """One call to the ledger: an update and its typed request.

    As JSON (the local activity's argument) the request is exactly the update's JSON
    argument (:meth:`~temporal_governor.core.book.ReserveRequest.wire`); parsed back, it
    is validated by the model of its ``update``: a request of the wrong model, or one the
    ledger would refuse, never leaves the caller.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ledger_id: str
    update: UpdateName
    request: LedgerRequest
    update_id: str
    """Idempotency key of the call."""
    task_queue: str | None = None
    """Where the ledger runs if it must be started (default: this activity's queue)."""
    continue_as_new_after: int = 2000
    max_in_flight: int = 5
    """Most updates this worker process sends to one ledger at once (Temporal refuses more
    than 10 in-flight updates per workflow by default)."""
    batch: bool = False
    """Whether the call may share a ``batch`` update with this process's concurrent calls
    to its ledger (policy ``shared.batch_updates``). When false it always goes as its own
    update, with its own update id, as before batching: a ledger worker of an earlier
    release, which has no ``batch`` handler, can replay every update it gets."""

    @model_validator(mode="before")
    @classmethod
    def _request_of_its_update(cls, data: Any) -> Any:
        """Validate the request with its update's model (a union cannot tell them apart)."""
        if isinstance(data, dict) and data.get("update") == BATCH.name:
            raise ValueError("a call is one update; batches are made by the activity")
        if isinstance(data, dict) and data.get("update") in UPDATES and "request" in data:
            update = UPDATES[data["update"]]
            request = data["request"]
            if isinstance(request, BaseModel) and not isinstance(request, update.request):
                raise ValueError(
                    f"{data['update']} takes a {update.request.__name__}, "
                    f"not a {type(request).__name__}"
                )
            return {**data, "request": update.request_of(request)}
        return data

    @field_serializer("request")
    def _request_json(self, request: LedgerRequest) -> dict[str, Any]:
        return request.wire()


async def call_ledger(
    client: Client,
    call: LedgerCall,
    *,
    task_queue: str,
    max_entries: int = BATCH_MAX_ENTRIES,
) -> Any:
    """Apply one call to its ledger through this process's queue of calls to it.

    What :func:`ledger_call` does; for code that is not an activity (benchmarks, tools).
    A call with ``batch=True`` may share a ``batch`` update with concurrent calls.

    Args:
        client: The client to send with.
        call: The call.
        task_queue: Where the ledger runs if it must be started.
        max_entries: Most calls one ``batch`` update may carry, from 1 (every call its own
            update) to the ledger's ``MAX_BATCH_ENTRIES``.

    Returns:
        The update's reply as JSON data.

    Raises:
        ValueError: ``max_entries`` is out of range.
        ApplicationError: ``MalformedLedgerUpdate`` or ``LedgerFull`` (non-retryable) when
            the ledger refuses the request, ``LedgerUnavailable`` (non-retryable) when its
            workflow task keeps failing, ``LedgerSlow`` when the attempt ran out of time.
    """
    check_max_entries(max_entries)
    entry = Entry.of(
        client,
        update=call.update,
        update_id=call.update_id,
        request=call.request.wire(),
        task_queue=task_queue,
        continue_as_new_after=call.continue_as_new_after,
        max_in_flight=call.max_in_flight,
        max_entries=max_entries,
        batch=call.batch,
    )
    queue = coalescer(call.ledger_id)
    try:
        async with asyncio.timeout(ATTEMPT_TIMEOUT):
            return await queue.call(entry)
    except TimeoutError:
        await _raise_if_wedged(queue, client)  # bounded by its own RPC timeouts
        raise ApplicationError(
            f"ledger {call.ledger_id} did not answer {call.update} within {ATTEMPT_TIMEOUT:g} s",
            type=LEDGER_SLOW,
        ) from None
    except (WorkflowUpdateRPCTimeoutOrCancelledError, RPCError) as error:
        if isinstance(error, RPCError) and error.status not in (
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.CANCELLED,
            RPCStatusCode.FAILED_PRECONDITION,  # "Workflow Task in failed state"
        ):
            raise
        await _raise_if_wedged(queue, client)
        raise
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type in (MALFORMED_UPDATE, LEDGER_FULL):
            # refused by a validator or a size cap: the same request would be refused again
            raise ApplicationError(str(cause), type=cause.type, non_retryable=True) from None
        raise


async def _raise_if_wedged(queue: Coalescer, client: Client) -> None:
    """Fail non-retryably (``LedgerUnavailable``) when the ledger is wedged.

    One check for every caller of the queue that fails at the same time.
    """
    if queue.wedge_check is None or queue.wedge_check.done():
        queue.wedge_check = asyncio.get_running_loop().create_task(
            wedged(client, queue.ledger_id, rpc_timeout=RPC_TIMEOUT)
        )
    message = await asyncio.shield(queue.wedge_check)
    if message is not None:
        raise ApplicationError(message, type=LEDGER_UNAVAILABLE, non_retryable=True)


@activity.defn(name=LEDGER_ACTIVITY)
async def ledger_call(call: dict[str, Any]) -> Any:
    """Apply one update to the ledger, starting the ledger if needed.

    A call that asks for it (``batch``) may share a ``batch`` update with concurrent calls
    to its ledger in this worker process; each gets exactly the reply or failure its own
    update would have given.

    Args:
        call: A :class:`LedgerCall` as JSON data. A request its update's model refuses
            fails the call at once, non-retryably (``MalformedLedgerUpdate``), as the
            ledger's own validator would.

    Returns:
        The update's result as JSON data (the caller types it: ``LedgerUpdate.reply_of``).
    """
    parsed = LedgerCall.model_validate(call)
    task_queue = parsed.task_queue or activity.info().task_queue
    return await call_ledger(activity.client(), parsed, task_queue=task_queue)
