"""Ordinary Temporal workflows for tests/test_transparency.py, written as if the governor
did not exist (importable: the sandbox re-imports them).

Each one exercises one feature of Temporal that agent code relies on; the suite runs them
plain and governed and compares what a client and the history show. Module-level dicts
(``TOKENS``, ``CLEANUPS``, ``STARTED``) are how activities tell the test process what
happened to them; they are keyed by workflow id, so the plain and governed runs of one
scenario never mix.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, TimeoutError

# passed through as a real deployment would: re-imported in the sandbox for every plain
# worker, pydantic and the governor took 8 s of each test here
with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from temporal_governor.activity import report_usage

_TIMEOUT = timedelta(seconds=30)
_ONCE = RetryPolicy(maximum_attempts=1)
_TWICE = RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=100))

TOKENS: dict[str, bytes] = {}
"""``<workflow id>:<key>`` -> task token of an activity that completes asynchronously."""
CLEANUPS: dict[str, list[str]] = {}
"""Workflow id -> what its cleanup activities were told."""
STARTED: dict[str, int] = {}
"""Workflow id -> how many times its long-running activity started."""


def failure_of(error: BaseException | None) -> list[dict[str, Any]]:
    """What agent code (or a client) can see of an error: its whole cause chain."""
    chain: list[dict[str, Any]] = []
    while error is not None:
        message = getattr(error, "message", None)
        entry: dict[str, Any] = {"class": type(error).__name__, "message": message or str(error)}
        if isinstance(error, ApplicationError):
            entry.update(
                type=error.type, details=list(error.details), non_retryable=error.non_retryable
            )
        if isinstance(error, TimeoutError):
            entry.update(
                timeout=error.type.name if error.type else None,
                heartbeat=list(error.last_heartbeat_details),
            )
        chain.append(entry)
        error = error.__cause__
    return chain


# -- activities ---------------------------------------------------------------------------


@activity.defn
async def echo(text: str) -> str:
    report_usage(input_tokens=len(text), output_tokens=1, model="m1")
    return f"echo {text}"


@activity.defn
async def refuse(text: str) -> str:
    raise ApplicationError(
        f"refused {text}", {"why": "policy"}, 7, type="Refused", non_retryable=True
    )


@activity.defn
async def spend_then_fail() -> str:
    """An LLM call that was paid for and then failed: no details of its own."""
    report_usage(input_tokens=10, output_tokens=5, model="m1")
    raise ApplicationError("tool broke", type="ToolError", non_retryable=True)


@activity.defn
async def wait_for_human(key: str) -> str:
    TOKENS[f"{activity.info().workflow_id}:{key}"] = activity.info().task_token
    report_usage(input_tokens=3)
    activity.raise_complete_async()


@activity.defn
async def heartbeat_then_fail() -> list[Any]:
    """Attempt 1 heartbeats and fails; attempt 2 returns the details it resumes from."""
    info = activity.info()
    report_usage(input_tokens=4)
    if info.attempt == 1:
        activity.heartbeat("some details!", 1)
        raise ApplicationError("attempt 1 fails")
    return list(info.heartbeat_details)


@activity.defn
async def heartbeat_then_stall() -> str:
    """Attempt 1 heartbeats and fails; attempt 2 never heartbeats: a heartbeat timeout."""
    info = activity.info()
    report_usage(input_tokens=4)
    if info.attempt == 1:
        activity.heartbeat("some details!")
        raise ApplicationError("attempt 1 fails")
    await asyncio.sleep(3)
    return "too late"


@activity.defn
async def wait_for_cancel() -> str:
    run = activity.info().workflow_id or "?"
    STARTED[run] = STARTED.get(run, 0) + 1
    while True:
        activity.heartbeat()
        await asyncio.sleep(0.1)


@activity.defn
async def cleanup(what: str) -> str:
    CLEANUPS.setdefault(activity.info().workflow_id or "?", []).append(what)
    return f"cleaned {what}"


# -- workflows ----------------------------------------------------------------------------


@dataclass
class Hops:
    left: int
    seen: list[str]


@workflow.defn
class Hopper:
    """Continue-as-new: one activity per run, three runs."""

    @workflow.run
    async def run(self, hops: Hops) -> list[str]:
        said = await workflow.execute_activity(
            echo, f"hop {hops.left}", start_to_close_timeout=_TIMEOUT
        )
        seen = [*hops.seen, said]
        if hops.left > 0:
            workflow.continue_as_new(Hops(left=hops.left - 1, seen=seen))
        return seen


@workflow.defn
class Approval:
    """Async activity completion: one request approved, one denied, by the client."""

    @workflow.run
    async def run(self) -> dict[str, Any]:
        approved = await workflow.execute_activity(
            wait_for_human, "approve", start_to_close_timeout=_TIMEOUT, retry_policy=_ONCE
        )
        try:
            await workflow.execute_activity(
                wait_for_human, "deny", start_to_close_timeout=_TIMEOUT, retry_policy=_ONCE
            )
            denied: list[dict[str, Any]] = []
        except ActivityError as error:
            denied = failure_of(error)
        return {"approved": approved, "denied": denied}


@workflow.defn
class Heartbeats:
    """Heartbeat details: resumed on retry, and reported with a heartbeat timeout."""

    @workflow.run
    async def run(self) -> dict[str, Any]:
        resumed = await workflow.execute_activity(
            heartbeat_then_fail,
            start_to_close_timeout=_TIMEOUT,
            heartbeat_timeout=timedelta(seconds=5),
            retry_policy=_TWICE,
        )
        try:
            await workflow.execute_activity(
                heartbeat_then_stall,
                start_to_close_timeout=_TIMEOUT,
                heartbeat_timeout=timedelta(seconds=1),
                retry_policy=_TWICE,
            )
            stalled: list[dict[str, Any]] = []
        except ActivityError as error:
            stalled = failure_of(error)
        return {"resumed": resumed, "stalled": stalled}


@workflow.defn
class Inbox:
    """Signals, queries and updates (one with a validator that rejects)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.closed = False

    @workflow.signal
    def add(self, item: str) -> None:
        self.items.append(item)

    @workflow.signal
    def close(self) -> None:
        self.closed = True

    @workflow.query
    def items_so_far(self) -> list[str]:
        return list(self.items)

    @workflow.update
    async def put(self, item: str) -> int:
        self.items.append(
            await workflow.execute_activity(echo, item, start_to_close_timeout=_TIMEOUT)
        )
        return len(self.items)

    @put.validator
    def _check_put(self, item: str) -> None:
        if not item:
            raise ValueError("an empty item")

    @workflow.update
    def fail_update(self, why: str) -> None:
        raise ApplicationError(f"update failed: {why}", {"why": why}, type="UpdateFailed")

    @workflow.run
    async def run(self) -> list[str]:
        await workflow.wait_condition(lambda: self.closed)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.items


@workflow.defn
class LocalWork:
    """Local activities: one succeeds, one fails for good."""

    @workflow.run
    async def run(self) -> dict[str, Any]:
        said = await workflow.execute_local_activity(echo, "local", start_to_close_timeout=_TIMEOUT)
        try:
            await workflow.execute_local_activity(
                refuse, "locally", start_to_close_timeout=_TIMEOUT, retry_policy=_ONCE
            )
            refused: list[dict[str, Any]] = []
        except (ActivityError, ApplicationError) as error:  # a local one raises its own error
            refused = failure_of(error)
        return {"said": said, "refused": refused}


@workflow.defn
class Helper:
    @workflow.run
    async def run(self, task: str) -> str:
        if task == "fail":
            await workflow.execute_activity(echo, "before failing", start_to_close_timeout=_TIMEOUT)
            raise ApplicationError("child gave up", {"task": task}, type="ChildGaveUp")
        return await workflow.execute_activity(echo, task, start_to_close_timeout=_TIMEOUT)


@workflow.defn
class Parent:
    """Child workflows: one returns, one fails with details; the parent reads both."""

    @workflow.run
    async def run(self) -> dict[str, Any]:
        me = workflow.info().workflow_id
        done = await workflow.execute_child_workflow(Helper.run, "research", id=f"{me}.ok")
        try:
            await workflow.execute_child_workflow(Helper.run, "fail", id=f"{me}.fail")
            failed: list[dict[str, Any]] = []
        except ChildWorkflowError as error:
            failed = failure_of(error)
        return {"done": done, "failed": failed}


@workflow.defn
class Patched:
    """``workflow.patched`` and ``workflow.deprecate_patch`` in agent code."""

    @workflow.run
    async def run(self) -> str:
        workflow.deprecate_patch("old-fix")
        if workflow.patched("new-prompt"):
            return await workflow.execute_activity(echo, "new", start_to_close_timeout=_TIMEOUT)
        return await workflow.execute_activity(echo, "old", start_to_close_timeout=_TIMEOUT)


class Ticket(BaseModel):
    id: str
    tags: list[str]
    priority: int = 3


class Triage(BaseModel):
    ticket: Ticket
    notes: list[str]


@activity.defn
async def triage(ticket: Ticket) -> Triage:
    report_usage(input_tokens=20, output_tokens=10)
    return Triage(ticket=ticket, notes=[f"tagged {tag}" for tag in ticket.tags])


@workflow.defn
class Triager:
    """A pydantic data converter: models in, models out, across an activity."""

    @workflow.run
    async def run(self, ticket: Ticket) -> Triage:
        done = await workflow.execute_activity(triage, ticket, start_to_close_timeout=_TIMEOUT)
        assert isinstance(done, Triage)
        return done.model_copy(update={"notes": [*done.notes, "done"]})


@workflow.defn
class Quick:
    """Started eagerly: one activity."""

    @workflow.run
    async def run(self, text: str) -> str:
        return await workflow.execute_activity(echo, text, start_to_close_timeout=_TIMEOUT)


@workflow.defn
class Cancellable:
    """``hello_cancellation``: the client cancels; the ``finally`` runs a cleanup activity."""

    @workflow.run
    async def run(self) -> str:
        try:
            return await workflow.execute_activity(
                wait_for_cancel,
                start_to_close_timeout=timedelta(seconds=60),
                heartbeat_timeout=timedelta(seconds=2),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        finally:
            await workflow.execute_activity(
                cleanup, "after cancel", start_to_close_timeout=_TIMEOUT
            )


@workflow.defn
class PaidFailure:
    """An activity that reported usage and failed; the workflow does not catch it."""

    @workflow.run
    async def run(self) -> str:
        return await workflow.execute_activity(
            spend_then_fail, start_to_close_timeout=_TIMEOUT, retry_policy=_ONCE
        )


@workflow.defn
class PaidFailureCaught:
    """The same failure, as agent code sees it."""

    @workflow.run
    async def run(self) -> list[dict[str, Any]]:
        try:
            await workflow.execute_activity(
                spend_then_fail, start_to_close_timeout=_TIMEOUT, retry_policy=_ONCE
            )
        except ActivityError as error:
            return failure_of(error)
        return []


TRANSPARENCY_WORKFLOWS: list[type] = [
    Hopper,
    Approval,
    Heartbeats,
    Inbox,
    LocalWork,
    Helper,
    Parent,
    Patched,
    Triager,
    Quick,
    Cancellable,
    PaidFailure,
    PaidFailureCaught,
]
TRANSPARENCY_ACTIVITIES: list[Any] = [
    echo,
    refuse,
    spend_then_fail,
    wait_for_human,
    heartbeat_then_fail,
    heartbeat_then_stall,
    wait_for_cancel,
    cleanup,
    triage,
]
