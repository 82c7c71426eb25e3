"""Incident review reads what failed attempts spent, as the live run did.

Usage of a failed activity travels in a marker only the governed failure converter reads;
a review that replays without it would charge the failed dispatch its estimate only, and
show agent code details the live run never saw.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from temporal_governor import GovernorPlugin, Policy
from temporal_governor.activity import report_usage
from temporal_governor.review import review

POLICY = Policy.from_dict(
    {"agents": {"FailsAfterSpending": {"quotas": {"max_tokens_per_task": 100_000}}}}
)


@activity.defn
async def spends_then_fails(tokens: int) -> str:
    """Reports what it used, then fails for good."""
    report_usage(input_tokens=tokens)
    raise ApplicationError("model refused", {"why": "broken"}, type="Broken", non_retryable=True)


@workflow.defn(sandboxed=False)
class FailsAfterSpending:
    """Catches the failure and returns what agent code saw in its details."""

    @workflow.run
    async def run(self, tokens: int) -> list[Any]:
        try:
            await workflow.execute_activity(
                spends_then_fails, tokens, start_to_close_timeout=timedelta(seconds=20)
            )
        except ActivityError as error:
            assert isinstance(error.cause, ApplicationError)
            return list(error.cause.details)
        return []


class _Sink:
    def __init__(self) -> None:
        self.commits: list[tuple[str, float]] = []

    def record(self, decision: Any, *, replaying: bool) -> None:
        if decision.kind == "commit" and not replaying:
            self.commits.append((decision.key, decision.amounts.get("tokens", 0.0)))

    def remaining(self, decision: Any, remaining: Any, *, replaying: bool) -> None:
        return None


async def test_review_charges_a_failed_activity_what_it_reported(env: WorkflowEnvironment) -> None:
    sink = _Sink()
    client = Client(
        env.client.service_client,
        namespace=env.client.namespace,
        plugins=[GovernorPlugin(POLICY, telemetry=False, sinks=[sink])],
    )
    queue = f"review-failures-{uuid.uuid4().hex[:8]}"
    workflow_id = f"fails-after-spending-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[FailsAfterSpending], activities=[spends_then_fails]
    ):
        seen = await client.execute_workflow(
            FailsAfterSpending.run, 777, id=workflow_id, task_queue=queue
        )
    assert seen == [{"why": "broken"}], "agent code must see the details as raised"
    assert [tokens for _, tokens in sink.commits] == [777.0]

    history = await client.get_workflow_handle(workflow_id).fetch_history()
    report = await review(
        workflow_id, policy=POLICY, workflows=[FailsAfterSpending], histories=[history]
    )
    assert report.nondeterminism == []
    reviewed = [
        (d.key, d.amounts.get("tokens", 0.0)) for d in report.decisions if d.kind == "commit"
    ]
    assert reviewed == sink.commits
