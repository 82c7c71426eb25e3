"""The activity through which governed workflows talk to the ledger.

Workflows cannot send Updates to other workflows, so a governed run reaches the ledger
through this (local) activity: an update-with-start, which starts the ledger if it is not
running yet and applies the update in one call. The update id is the idempotency key.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer, model_validator
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy
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
from ._workflow import (
    LEDGER_FULL,
    LEDGER_WORKFLOW,
    MALFORMED_UPDATE,
    UPDATES,
    LedgerState,
    UpdateName,
)

LEDGER_ACTIVITY = "temporal_governor.ledger"
"""Activity type of :func:`ledger_call`; the governor never governs its own activities."""

LEDGER_UNAVAILABLE = "LedgerUnavailable"
"""``ApplicationError.type`` of a ledger call the ledger cannot answer (its workflow task
keeps failing): non-retryable, so the run decides at once (policy ``shared.on_unavailable``)."""

_RPC_TIMEOUT = timedelta(seconds=4)
"""How long one update may wait before the activity looks at why (a wedged ledger?)."""

_ATTEMPT_TIMEOUT = 10.0
"""Seconds one attempt may wait for the gate and the update together (the wedge check
after it has its own RPC timeouts). Kept here rather than as the local activity's
start-to-close timeout: core's start-to-close timer across local retries is fragile in
temporalio 1.35 (a stale timer can fire against a later attempt)."""

LEDGER_SLOW = "LedgerSlow"
"""``ApplicationError.type`` of an attempt that ran out of time: retried."""


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

    @model_validator(mode="before")
    @classmethod
    def _request_of_its_update(cls, data: Any) -> Any:
        """Validate the request with its update's model (a union cannot tell them apart)."""
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


_gates: dict[str, asyncio.Semaphore] = {}


def _gate(ledger_id: str, size: int) -> asyncio.Semaphore:
    """The per-process limit of in-flight updates to one ledger."""
    gate = _gates.get(ledger_id)
    if gate is None:
        gate = _gates[ledger_id] = asyncio.Semaphore(size)
    return gate


@activity.defn(name=LEDGER_ACTIVITY)
async def ledger_call(call: dict[str, Any]) -> Any:
    """Apply one update to the ledger, starting the ledger if needed.

    Args:
        call: A :class:`LedgerCall` as JSON data. A request its update's model refuses
            fails the call at once, non-retryably (``MalformedLedgerUpdate``), as the
            ledger's own validator would.

    Returns:
        The update's result as JSON data (the caller types it: ``LedgerUpdate.reply_of``).
    """
    parsed = LedgerCall.model_validate(call)
    client = activity.client()
    start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
        LEDGER_WORKFLOW,
        LedgerState(continue_as_new_after=parsed.continue_as_new_after).model_dump(mode="json"),
        id=parsed.ledger_id,
        task_queue=parsed.task_queue or activity.info().task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    try:
        async with (
            asyncio.timeout(_ATTEMPT_TIMEOUT),
            _gate(parsed.ledger_id, parsed.max_in_flight),
        ):
            return await client.execute_update_with_start_workflow(
                parsed.update,
                parsed.request.wire(),
                id=parsed.update_id,
                start_workflow_operation=start,
                rpc_timeout=_RPC_TIMEOUT,
            )
    except TimeoutError:
        await _raise_if_wedged(parsed.ledger_id)  # bounded by its own RPC timeouts
        raise ApplicationError(
            f"ledger {parsed.ledger_id} did not answer {parsed.update} within "
            f"{_ATTEMPT_TIMEOUT:g} s",
            type=LEDGER_SLOW,
        ) from None
    except (WorkflowUpdateRPCTimeoutOrCancelledError, RPCError) as error:
        if isinstance(error, RPCError) and error.status not in (
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.CANCELLED,
            RPCStatusCode.FAILED_PRECONDITION,  # "Workflow Task in failed state"
        ):
            raise
        await _raise_if_wedged(parsed.ledger_id)
        raise
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type in (MALFORMED_UPDATE, LEDGER_FULL):
            # refused by a validator or a size cap: the same request would be refused again
            raise ApplicationError(str(cause), type=cause.type, non_retryable=True) from None
        raise


async def _raise_if_wedged(ledger_id: str) -> None:
    """Fail at once, non-retryably, when the ledger's workflow task keeps failing.

    A ledger whose workflow task fails (a bug, a payload the server refuses) answers no
    update ever again; waiting and retrying would only hang every governed run.
    """
    handle = activity.client().get_workflow_handle(ledger_id)
    try:
        described = await handle.describe(rpc_timeout=_RPC_TIMEOUT)
    except RPCError:
        return  # the server itself is unreachable: retry, it may come back
    pending = described.raw_description.pending_workflow_task
    if not described.raw_description.HasField("pending_workflow_task") or pending.attempt <= 2:
        return
    if not await _last_task_failed(handle.id, described.run_id):
        return  # timed out (its worker died, a deploy): it recovers once a worker polls
    raise ApplicationError(
        f"ledger {ledger_id} cannot make progress: its workflow task has failed "
        f"{pending.attempt - 1} times in a row (see its history in the Temporal UI)",
        type=LEDGER_UNAVAILABLE,
        non_retryable=True,
    )


async def _last_task_failed(workflow_id: str, run_id: str | None) -> bool:
    """Whether the ledger's latest workflow task ended in a failure (not a timeout)."""
    client = activity.client()
    request = GetWorkflowExecutionHistoryReverseRequest(
        namespace=client.namespace,
        execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id or ""),
        maximum_page_size=20,
    )
    try:
        response = await client.workflow_service.get_workflow_execution_history_reverse(
            request, timeout=_RPC_TIMEOUT
        )
    except RPCError:
        return False
    for event in response.history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            return True
        if event.event_type in (
            EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
            EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        ):
            return False
    return False
