"""Workflows and activities of tests/test_usage_markers.py (importable: the sandbox re-imports them).

An activity spends on every attempt and fails the first ones (retried): the next attempt
reads the earlier attempts' usage from its heartbeat details, whatever payload converter
the worker's client has.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from temporal_governor.activity import report_usage


@activity.defn
async def flaky_spender(failures: int) -> int:
    """Reports 10 tokens, then fails while ``attempt <= failures``; returns its attempt."""
    report_usage(input_tokens=10)
    attempt = activity.info().attempt
    if attempt <= failures:
        raise ApplicationError(f"attempt {attempt} failed", type="Flaky")
    return attempt


@workflow.defn
class RetriedSpender:
    """Runs ``flaky_spender`` to its end (retried quickly)."""

    @workflow.run
    async def run(self, failures: int) -> int:
        return await workflow.execute_activity(
            flaky_spender,
            failures,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50)),
        )


WORKFLOWS = [RetriedSpender]
ACTIVITIES = [flaky_spender]

POLICY = """
agents:
  RetriedSpender: { quotas: { max_tokens_per_task: 1000 } }
tools:
  flaky_spender: { estimate: { tokens: 100 } }
"""
