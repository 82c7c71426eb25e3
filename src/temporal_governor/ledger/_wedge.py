"""Whether a ledger is wedged: its workflow task keeps failing, so it answers nothing.

A ledger whose workflow task fails (a bug, a payload the server refuses) answers no update
ever again; waiting and retrying would only hang every governed run, so a caller that saw
its update time out asks here and fails at once, non-retryably, when the ledger is wedged.
A task that timed out (its worker died, a deploy) or that the SDK's deadlock detector
failed (a slow task under CPU load) is no wedge: both recover on a later attempt, and the
caller's own retries and ``shared.call_timeout`` bound the wait.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import Client
from temporalio.service import RPCError

_DEADLOCK = "[TMPRL1101]"
"""How temporalio marks a workflow task its deadlock detector failed (no yield in 2 s)."""


async def wedged(client: Client, ledger_id: str, *, rpc_timeout: timedelta) -> str | None:
    """Why the ledger cannot make progress, or ``None`` when it may yet.

    Args:
        client: The client to look with.
        ledger_id: The ledger's workflow id.
        rpc_timeout: The bound of each of the (at most two) calls to the server.

    Returns:
        A message for the caller's ``LedgerUnavailable`` failure when the ledger's workflow
        task has failed more than twice in a row (a failure, not a timeout or a deadlock).
    """
    handle = client.get_workflow_handle(ledger_id)
    try:
        described = await handle.describe(rpc_timeout=rpc_timeout)
    except RPCError:
        return None  # the server itself is unreachable: retry, it may come back
    pending = described.raw_description.pending_workflow_task
    if not described.raw_description.HasField("pending_workflow_task") or pending.attempt <= 2:
        return None
    if not await _last_task_failed(client, handle.id, described.run_id, rpc_timeout):
        return None
    return (
        f"ledger {ledger_id} cannot make progress: its workflow task has failed "
        f"{pending.attempt - 1} times in a row (see its history in the Temporal UI)"
    )


async def _last_task_failed(
    client: Client, workflow_id: str, run_id: str | None, rpc_timeout: timedelta
) -> bool:
    """Whether the ledger's latest workflow task ended in a failure that is no deadlock."""
    request = GetWorkflowExecutionHistoryReverseRequest(
        namespace=client.namespace,
        execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id or ""),
        maximum_page_size=20,
    )
    try:
        response = await client.workflow_service.get_workflow_execution_history_reverse(
            request, timeout=rpc_timeout
        )
    except RPCError:
        return False
    for event in response.history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            failure = event.workflow_task_failed_event_attributes.failure
            return _DEADLOCK not in failure.message
        if event.event_type in (
            EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
            EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        ):
            return False
    return False
