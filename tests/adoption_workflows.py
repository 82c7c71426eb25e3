"""Representative workflows for the adoption tests, written as if nobody knew the governor.

Importable by this release and by the previous one (tests/previous_release.py runs them
with that release's code): only ``report_usage`` of the governor is used, in activities.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    try:
        from temporal_governor.activity import report_usage
    except ImportError:  # test_adoption also runs these workflows on the previous release
        from temporal_governor import report_usage

_T = timedelta(seconds=30)

CLEANED: set[str] = set()
"""Workflow ids whose cleanup activity ran (this process)."""


@activity.defn
async def answer(prompt: str) -> str:
    """A model call: reports its usage."""
    report_usage(input_tokens=10, output_tokens=len(prompt))
    return f"answer to {prompt}"


@activity.defn
async def refuse(prompt: str) -> str:
    """A model call that fails after it spent."""
    report_usage(input_tokens=10)
    raise ApplicationError(f"refused {prompt}", "why", type="Refused", non_retryable=True)


@activity.defn
async def slow(seconds: float) -> float:
    """A long call that heartbeats (so it learns of its cancellation)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        activity.heartbeat()
        await asyncio.sleep(0.1)
    report_usage(input_tokens=5)
    return seconds


@activity.defn
async def cleanup(workflow_id: str) -> None:
    CLEANED.add(workflow_id)


ACTIVITIES = [answer, refuse, slow, cleanup]


@workflow.defn
class Conversation:
    """Activities, a timer, a query and signals; waits for ``finish`` before its last turn."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.finished = False

    @workflow.signal
    def say(self, text: str) -> None:
        self.said.append(text)

    @workflow.signal
    def finish(self) -> None:
        self.finished = True

    @workflow.query
    def transcript(self) -> list[str]:
        return list(self.said)

    @workflow.run
    async def run(self, topic: str) -> list[str]:
        replies = [await workflow.execute_activity(answer, topic, start_to_close_timeout=_T)]
        await workflow.sleep(0.2)
        await workflow.wait_condition(lambda: self.finished)
        for text in list(self.said):
            replies.append(await workflow.execute_activity(answer, text, start_to_close_timeout=_T))
        return replies


@workflow.defn
class Helper:
    """A child: one activity."""

    @workflow.run
    async def run(self, topic: str) -> str:
        return await workflow.execute_activity(answer, topic, start_to_close_timeout=_T)


@workflow.defn
class Delegator:
    """Waits for ``finish``, then hands the topic to a child."""

    def __init__(self) -> None:
        self.finished = False

    @workflow.signal
    def finish(self) -> None:
        self.finished = True

    @workflow.run
    async def run(self, topic: str) -> str:
        await workflow.wait_condition(lambda: self.finished)
        return await workflow.execute_child_workflow(
            Helper.run, topic, id=f"{workflow.info().workflow_id}-helper"
        )


@workflow.defn
class Waiter:
    """A child that waits for a signal that never comes (until cancelled or terminated)."""

    def __init__(self) -> None:
        self.going = False

    @workflow.signal
    def go(self) -> None:
        self.going = True

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.going)


@workflow.defn
class Team:
    """Children in parallel, then one left running when the parent returns."""

    @workflow.run
    async def run(self, topics: list[str]) -> list[str]:
        results = await asyncio.gather(
            *(
                workflow.execute_child_workflow(
                    Helper.run, t, id=f"{workflow.info().workflow_id}-{i}"
                )
                for i, t in enumerate(topics)
            )
        )
        await workflow.start_child_workflow(Waiter.run, id=f"{workflow.info().workflow_id}-w")
        return list(results)


@workflow.defn
class Parallel:
    """Activities at once (shared leases are taken by several dispatches together)."""

    @workflow.run
    async def run(self, width: int) -> list[str]:
        return list(
            await asyncio.gather(
                *(
                    workflow.execute_activity(answer, f"q{i}", start_to_close_timeout=_T)
                    for i in range(width)
                )
            )
        )


@workflow.defn
class Cancellable:
    """A long activity; on cancellation a cleanup activity runs."""

    @workflow.run
    async def run(self, seconds: float) -> float:
        try:
            return await workflow.execute_activity(
                slow,
                seconds,
                start_to_close_timeout=_T,
                heartbeat_timeout=timedelta(seconds=5),
            )
        finally:
            if workflow.info().workflow_id:
                await workflow.execute_activity(
                    cleanup, workflow.info().workflow_id, start_to_close_timeout=_T
                )


@workflow.defn
class Overspender:
    """A slow activity and, beside it, calls until the agent's budget is spent."""

    @workflow.run
    async def run(self, calls: int) -> int:
        pending = workflow.start_activity(slow, 1.0, start_to_close_timeout=_T)
        for _ in range(calls):
            await workflow.execute_activity(answer, "x" * 40, start_to_close_timeout=_T)
        return int(await pending) + calls


@workflow.defn
class Failing:
    """An activity fails after it spent; the workflow fails with its own error."""

    @workflow.run
    async def run(self, topic: str) -> str:
        try:
            return await workflow.execute_activity(refuse, topic, start_to_close_timeout=_T)
        except Exception as error:
            raise ApplicationError(f"gave up on {topic}", type="GaveUp") from error


@workflow.defn
class Continuing:
    """One activity per run, then continue-as-new until ``left`` is 0."""

    @workflow.run
    async def run(self, left: int) -> str:
        reply = await workflow.execute_activity(answer, f"left {left}", start_to_close_timeout=_T)
        if left > 0:
            workflow.continue_as_new(left - 1)
        return reply


WORKFLOWS = [
    Conversation,
    Delegator,
    Helper,
    Waiter,
    Team,
    Parallel,
    Cancellable,
    Overspender,
    Failing,
    Continuing,
]

POLICY = """
tenants:
  default: { quotas: { max_tokens: 1000000 } }
tools:
  answer: { estimate: { tokens: 60 } }
  slow: { estimate: { tokens: 10 } }
agents:
  Overspender:
    quotas: { max_tokens_per_task: 200 }
"""
"""Shared limits (leases, ledger calls) for every run, and a small budget for one agent."""
