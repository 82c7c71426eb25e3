"""The governor's error hierarchy and the failure types that cross the wire.

Failures that reach Temporal are ``ApplicationError`` subclasses whose ``type`` is one of
the constants below, so that code on the other side of the wire (a client, a parent
workflow, another SDK) can recognise them by string. Their details are a single
JSON object described by :class:`BreachDetails`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.exceptions import ApplicationError

from .core.problems import GovernorError, PolicyError, PolicyIssue, validation_problems

BUDGET_EXCEEDED = "BudgetExceeded"
"""``ApplicationError.type`` of a run halted because a budget limit was breached."""

RUNAWAY_LOOP = "RunawayLoop"
"""``ApplicationError.type`` of a run halted by a loop guard (for example ``max_depth``)."""

GOVERNANCE_KILLED = "GovernanceKilled"
"""``ApplicationError.type`` of a run stopped by an operator's kill signal."""

TOOL_DISABLED = "ToolDisabled"
"""``ApplicationError.type`` of a dispatch refused by a degradation rule (``disable_tools``):
not a halt; agent code may catch it and go on without the tool."""

INVALID_USAGE = "InvalidUsage"
"""``ApplicationError.type`` of an activity that reported usage the governor refuses (NaN,
an infinity, a negative or an absurdly large amount): non-retryable."""

KILL_LIMIT = "kill"
"""``BreachDetails.limit`` of a run stopped by a kill (terminate, or a pause that timed out)."""


class ChainLink(BaseModel):
    """One workflow run in an attribution chain, root first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    run_id: str
    agent: str
    """The workflow type name of the run."""


class BreachDetails(BaseModel):
    """What a halted run's failure carries: which limit, which scope, observed vs ceiling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: str
    """Name of the limit that fired, e.g. ``max_tokens_per_task``."""
    resource: str
    """The resource it limits: ``tokens``, ``cost_usd``, ``tool_calls``, ``subtasks``,
    ``child_workflows``, ``wall_time_s`` or ``depth``."""
    scope: str
    """Whose budget it was, e.g. ``run planner/run-1`` or ``allowance from planner/run-1``."""
    observed: float
    """What the spend would have been (committed + reserved + this dispatch's estimate)."""
    ceiling: float
    """The limit's ceiling."""
    committed: float = 0.0
    """What the scope had actually spent when the run halted."""
    overage: float = 0.0
    """How far committed spend already exceeded the ceiling (an actual above its estimate)."""
    dispatch: str = ""
    """The refused dispatch, e.g. ``activity call_llm`` or ``child executor``."""
    chain: list[ChainLink] = Field(default_factory=list)
    """The attribution chain of the halted run, root first, the halted run last."""
    tenant: str = "default"
    """The tenant the run was attributed to."""
    spent: dict[str, float] = Field(default_factory=dict)
    """Total committed spend of the halted run (its whole subtree), per resource."""
    killed_by: str = ""
    """For a kill (``limit == "kill"``): the issuer of the kill signal."""
    kill_reason: str = ""
    """For a kill: the reason the issuer gave."""
    evidence: dict[str, Any] = Field(default_factory=dict)
    """For a detector's halt (``RunawayLoop``, anomaly): what it saw (the repeated call
    signature, the cycle, the counts and numbers) and its ``message``."""

    def message(self) -> str:
        """A one-line human statement of the breach."""
        if self.evidence.get("message"):
            text = f"{self.limit} in {self.scope}: {self.evidence['message']}"
            if self.dispatch:
                text += f"; refused {self.dispatch}"
            return text
        if self.limit == KILL_LIMIT:
            text = f"{self.scope} killed by {self.killed_by or 'an operator'}"
            if self.kill_reason:
                text += f": {self.kill_reason}"
            return text
        text = (
            f"{self.limit} ({self.resource}) of {self.scope} exceeded: "
            f"observed {_fmt(self.observed)} {'>' if self.observed > self.ceiling else '>='} "
            f"ceiling {_fmt(self.ceiling)}"
        )
        if self.dispatch:
            text += f"; refused {self.dispatch}"
        if self.overage > 0:
            text += f"; overage {_fmt(self.overage)}"
        return text

    @classmethod
    def from_error(cls, error: BaseException) -> BreachDetails | None:
        """Find breach details in an error or its causes (client or parent side).

        Args:
            error: A ``WorkflowFailureError``, ``ChildWorkflowError``, ``ApplicationError``
                or any exception whose cause chain may hold a governor failure.

        Returns:
            The details, or ``None`` when no governor breach is in the chain.

        """
        current: BaseException | None = error
        while current is not None:
            if isinstance(current, ApplicationError) and current.type in (
                BUDGET_EXCEEDED,
                RUNAWAY_LOOP,
                GOVERNANCE_KILLED,
            ):
                for detail in current.details:
                    if isinstance(detail, BreachDetails):
                        return detail
                    if isinstance(detail, dict) and "limit" in detail:
                        try:
                            found = cls.model_validate(detail)
                        except ValidationError:
                            continue  # not the governor's: whatever raised it, never ours
                        if _believable_spend(found.spent):
                            return found
            current = current.__cause__ or getattr(current, "cause", None)
        return None


_RESOURCES = ("tokens", "cost_usd", "tool_calls", "subtasks", "child_workflows")


def _believable_spend(spent: dict[str, float]) -> bool:
    """Whether breach details' spend could be a governor's (known resources, amounts >= 0).

    Details arrive over the wire and may be forged, e.g. by a child's own code.
    """
    return all(
        name in _RESOURCES and math.isfinite(value) and value >= 0 for name, value in spent.items()
    )


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4f}"


class BudgetExceeded(ApplicationError, GovernorError):
    """A run exceeded a budget limit: terminal and non-retryable.

    Raised inside workflow code when a dispatch is refused. It fails the run (the
    governor re-raises it even if agent code catches it) and reaches clients and parent
    workflows as an ``ApplicationError`` with ``type == "BudgetExceeded"``; use
    :meth:`BreachDetails.from_error` there to read the details.

    Args:
        details: What was breached.
        error_type: The wire type, :data:`BUDGET_EXCEEDED` or :data:`RUNAWAY_LOOP`.

    """

    def __init__(self, details: BreachDetails, error_type: str = BUDGET_EXCEEDED) -> None:
        super().__init__(
            details.message(),
            details.model_dump(mode="json"),
            type=error_type,
            non_retryable=True,
        )
        self.breach = details


class RunawayLoop(BudgetExceeded):
    """A loop guard fired (for example the tree grew deeper than ``max_depth``).

    Args:
        details: What was breached.

    """

    def __init__(self, details: BreachDetails) -> None:
        super().__init__(details, RUNAWAY_LOOP)


class InvalidUsage(ApplicationError, GovernorError, ValueError):
    """Usage an activity reported was refused: NaN, an infinity, negative or absurdly large.

    :func:`~temporal_governor.activity.report_usage` raises it inside the activity, so the activity
    fails non-retryably (its ``type`` is :data:`INVALID_USAGE`) unless the activity catches
    it. Either way the refused amount is never counted as negative spend: the attempt is
    charged at least the policy's estimate for the activity (the governor never assumes
    money was not spent).

    Args:
        message: What was refused and from which activity.

    """

    def __init__(self, message: str) -> None:
        super().__init__(message, type=INVALID_USAGE, non_retryable=True)


class GovernanceKilled(BudgetExceeded):
    """A run stopped by an operator's kill (``terminate``, or a pause never resumed).

    Terminal and non-retryable like a breach; its details have ``limit == "kill"``, the
    issuer in ``killed_by`` and the reason in ``kill_reason``.

    Args:
        details: Who killed the run and why.

    """

    def __init__(self, details: BreachDetails) -> None:
        super().__init__(details, GOVERNANCE_KILLED)


__all__ = [
    "BUDGET_EXCEEDED",
    "GOVERNANCE_KILLED",
    "INVALID_USAGE",
    "KILL_LIMIT",
    "RUNAWAY_LOOP",
    "TOOL_DISABLED",
    "BreachDetails",
    "BudgetExceeded",
    "ChainLink",
    "GovernanceKilled",
    "GovernorError",
    "InvalidUsage",
    "PolicyError",
    "PolicyIssue",
    "RunawayLoop",
    "validation_problems",
]
