"""The activity through which governed workflows talk to the ledger.

Workflows cannot send Updates to other workflows, so a governed run reaches the ledger
through this (local) activity: an update-with-start, which starts the ledger if it is not
running yet and applies the update in one call. The update id is the idempotency key.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.client import WithStartWorkflowOperation, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError

from ..workflows._ledger import LEDGER_FULL, LEDGER_WORKFLOW, MALFORMED_UPDATE, LedgerState

LEDGER_ACTIVITY = "temporal_governor.ledger"
"""Activity type of :func:`ledger_call`; the governor never governs its own activities."""


class LedgerCall(BaseModel):
    """One call to the ledger."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ledger_id: str
    update: Literal[
        "reserve", "settle", "release_run", "control", "read_controls", "baseline", "observe"
    ]
    request: dict[str, Any]
    update_id: str
    """Idempotency key of the call."""
    task_queue: str | None = None
    """Where the ledger runs if it must be started (default: this activity's queue)."""
    continue_as_new_after: int = 2000
    max_in_flight: int = 5
    """Most updates this worker process sends to one ledger at once (Temporal refuses more
    than 10 in-flight updates per workflow by default)."""


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
        call: A :class:`LedgerCall` as JSON data.

    Returns:
        The update's result.
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
        async with _gate(parsed.ledger_id, parsed.max_in_flight):
            return await client.execute_update_with_start_workflow(
                parsed.update,
                parsed.request,
                id=parsed.update_id,
                start_workflow_operation=start,
            )
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type in (MALFORMED_UPDATE, LEDGER_FULL):
            # refused by a validator or a size cap: the same request would be refused again
            raise ApplicationError(str(cause), type=cause.type, non_retryable=True) from None
        raise
