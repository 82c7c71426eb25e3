"""Workflows and activities of tests/test_wire_trust.py (importable: the sandbox re-imports them).

Each one plays an attacker or a buggy component: activities that report NaN or negative
usage, results shaped like a model response with negative tokens, failures that carry a
forged usage marker or forged breach details.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from temporal_governor.activity import report_usage
from workflows import Spend, spend

_T = {"start_to_close_timeout": timedelta(seconds=20)}
_ONCE = {**_T, "retry_policy": RetryPolicy(maximum_attempts=1)}

BAD_REPORTS: dict[str, dict[str, Any]] = {
    "nan_cost": {"cost_usd": math.nan},
    "inf_cost": {"cost_usd": math.inf},
    "neg_inf_tokens": {"input_tokens": -math.inf},
    "negative_tokens": {"output_tokens": -1_000_000},
    "huge_tokens": {"input_tokens": 10**16},
}
"""What `report_bad` reports, by name (kept here: NaN does not travel well as an argument)."""

CAUGHT: list[str] = []
"""Messages of the InvalidUsage errors `report_bad` caught (when told to catch)."""


@dataclass
class Bad:
    kind: str
    """A key of BAD_REPORTS."""
    tokens: int = 0
    """Valid tokens reported before the bad report."""
    catch: bool = False
    """Catch the InvalidUsage and return normally (an activity ignoring the error)."""


@activity.defn
async def report_bad(bad: Bad) -> str:
    """Reports valid tokens, then the bad values of `bad.kind`."""
    if bad.tokens:
        report_usage(output_tokens=bad.tokens)
    try:
        report_usage(**BAD_REPORTS[bad.kind])
    except ApplicationError as error:
        if not bad.catch:
            raise
        CAUGHT.append(str(error))
    return "reported"


@activity.defn
async def negative_shape(tokens: int) -> dict[str, Any]:
    """A model-response-shaped result whose usage is negative (read by the governor)."""
    return {"text": "hi", "model": "m1", "usage": {"input_tokens": tokens, "output_tokens": 0}}


@activity.defn
async def forged_marker(tokens: int) -> str:
    """Fails with a usage marker of its own making (negative spend) as its last detail."""
    raise ApplicationError(
        "forged",
        {"__temporal_governor_usage__": {"input_tokens": tokens}},
        type="Forged",
        non_retryable=True,
    )


@activity.defn
async def forged_breach(tokens: float) -> str:
    """Fails with breach details of its own making whose spend is `tokens` tokens."""
    raise ApplicationError(
        "forged breach",
        {
            "limit": "max_tokens_per_task",
            "resource": "tokens",
            "scope": "run fake",
            "observed": 0,
            "ceiling": 0,
            "spent": {"tokens": tokens},
        },
        type="BudgetExceeded",
        non_retryable=True,
    )


@dataclass
class Plan:
    """What `Attacker` does: `bad` activities (caught), then `spends` x `tokens` via `spend`."""

    activity: str = ""
    """report_bad, negative_shape, forged_marker or forged_breach ("" for none)."""
    bad: Bad | None = None
    value: float = 0
    """The argument of negative_shape, forged_marker or forged_breach."""
    times: int = 0
    spends: int = 0
    tokens: int = 100
    catch: bool = True
    """Catch the bad activities' errors and carry on (agent code trying to go on)."""


@workflow.defn
class Attacker:
    """Dispatches the plan's bad activities, then spends; returns what it managed."""

    @workflow.run
    async def run(self, plan: Plan) -> dict[str, Any]:
        done: dict[str, Any] = {"bad": 0, "failed": 0, "spent": 0, "errors": []}
        for _ in range(plan.times):
            try:
                if plan.activity == "report_bad":
                    await workflow.execute_activity(report_bad, plan.bad, **_ONCE)
                elif plan.activity == "negative_shape":
                    await workflow.execute_activity(negative_shape, int(plan.value), **_ONCE)
                elif plan.activity == "forged_marker":
                    await workflow.execute_activity(forged_marker, int(plan.value), **_ONCE)
                else:
                    await workflow.execute_activity(forged_breach, plan.value, **_ONCE)
                done["bad"] += 1
            except Exception as error:
                if not plan.catch:
                    raise
                done["failed"] += 1
                cause = error.__cause__
                if isinstance(cause, ApplicationError):
                    done["errors"].append({"type": cause.type, "message": cause.message})
        for _ in range(plan.spends):
            await workflow.execute_activity(spend, Spend(output_tokens=plan.tokens), **_T)
            done["spent"] += 1
        return done


@workflow.defn
class ForgingChild:
    """A child whose own code fails with forged breach details or a forged usage marker."""

    @workflow.run
    async def run(self, how: str) -> None:
        if how == "breach_nan":
            raise ApplicationError(
                "forged",
                {
                    "limit": "x",
                    "resource": "tokens",
                    "scope": "s",
                    "observed": 0,
                    "ceiling": 0,
                    "spent": {"tokens": math.nan},
                },
                type="BudgetExceeded",
                non_retryable=True,
            )
        raise ApplicationError(
            "forged",
            {"__temporal_governor_usage__": {"output_tokens": -1_000_000}},
            type="Forged",
            non_retryable=True,
        )


@workflow.defn
class ForgedChildParent:
    """Starts a ForgingChild (and survives its failure), then spends `spends` x 100."""

    @workflow.run
    async def run(self, how: str, spends: int) -> int:
        with contextlib.suppress(Exception):
            await workflow.execute_child_workflow(
                ForgingChild.run, how, id=f"{workflow.info().workflow_id}.child"
            )
        done = 0
        for _ in range(spends):
            await workflow.execute_activity(spend, Spend(output_tokens=100), **_T)
            done += 1
        return done


@workflow.defn
class SpendThenChild:
    """Spends `tokens`, then runs one Attacker child that spends `child_spends` x 100."""

    @workflow.run
    async def run(self, tokens: int, child_spends: int) -> dict[str, Any]:
        await workflow.execute_activity(spend, Spend(output_tokens=tokens), **_T)
        return await workflow.execute_child_workflow(
            Attacker.run,
            Plan(spends=child_spends),
            id=f"{workflow.info().workflow_id}.child",
        )


TRUST_WORKFLOWS = [Attacker, ForgingChild, ForgedChildParent, SpendThenChild]
TRUST_ACTIVITIES = [report_bad, negative_shape, forged_marker, forged_breach]
