"""Workflows and activities of tests/test_no_private_sdk.py (importable: the sandbox re-imports them).

A run fails with its own error, or lets an activity's failure through, after spending;
a governed parent catches the failure of a child that spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, ChildWorkflowError

from temporal_governor.usage import report_usage


@dataclass
class Failure:
    """What an activity or run raises after it spent ``tokens``."""

    tokens: int = 10
    builtin: bool = False
    """Raise a ``ValueError`` (a built-in exception) instead of an ``ApplicationError``."""
    details: list[Any] = field(default_factory=lambda: [{"why": "broken"}, "second"])


@activity.defn
async def spend_and_fail(failure: Failure) -> str:
    """Reports usage, then fails (not retried)."""
    report_usage(input_tokens=failure.tokens)
    if failure.builtin:
        raise ValueError("bad value")
    raise ApplicationError("tool broke", *failure.details, type="ToolBroke", non_retryable=True)


@activity.defn
async def spend_ok(tokens: int) -> str:
    """Reports usage and succeeds."""
    report_usage(input_tokens=tokens)
    return "ok"


_ONCE: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(maximum_attempts=1),
}


@workflow.defn
class OwnError:
    """Spends, then fails with an error of its own."""

    @workflow.run
    async def run(self, failure: Failure) -> None:
        await workflow.execute_activity(spend_ok, failure.tokens, **_ONCE)
        raise ApplicationError("run gave up", *failure.details, type="GaveUp", non_retryable=True)


@workflow.defn
class LetThrough:
    """Lets the failure of an activity that spent end the run, unchanged."""

    @workflow.run
    async def run(self, failure: Failure) -> None:
        await workflow.execute_activity(spend_and_fail, failure, **_ONCE)


@workflow.defn
class CatchingParent:
    """Runs ``OwnError`` as a child and returns what its failure shows agent code."""

    @workflow.run
    async def run(self, failure: Failure) -> dict[str, Any]:
        try:
            await workflow.execute_child_workflow(OwnError.run, failure)
        except ChildWorkflowError as error:
            cause = error.cause
            assert isinstance(cause, ApplicationError)
            return {"type": cause.type, "message": cause.message, "details": list(cause.details)}
        return {}


WORKFLOWS = [OwnError, LetThrough, CatchingParent]
ACTIVITIES = [spend_and_fail, spend_ok]
