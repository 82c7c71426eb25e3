"""temporal-governor: budgets, breach halts and attribution for AI-agent workflows on Temporal.

Register :class:`GovernorPlugin` on a client (workers built from it inherit it) and every
activity, local activity and child workflow those workers dispatch is governed: its
estimate is reserved before dispatch against every limit that applies in the workflow
tree, its actual usage is committed when it returns, and the rest is released. A breach
fails the run with a non-retryable ``BudgetExceeded``.

Example::

    policy = Policy.from_yaml("governance.yaml")
    client = await Client.connect("localhost:7233", plugins=[GovernorPlugin(policy)])
    with attribution(tenant="acme", owner="alice@acme"):
        await client.execute_workflow(Planner.run, goal, id="run-1", task_queue="agents")
"""

from .accounting import Amounts, GovernanceEvent, LimitState
from .context import Attribution, BudgetContext, attribution, current_attribution, estimate
from .decisions import DecisionRecord, DecisionSink
from .errors import (
    BUDGET_EXCEEDED,
    GOVERNANCE_KILLED,
    RUNAWAY_LOOP,
    BreachDetails,
    BudgetExceeded,
    ChainLink,
    GovernorError,
    PolicyError,
    PolicyIssue,
    RunawayLoop,
)
from .interceptors import BUDGET_QUERY, BudgetSnapshot, GovernanceInterceptor
from .plugin import GovernorPlugin, register_search_attributes
from .policy import Policy
from .report import IncidentReport
from .telemetry import OpenTelemetrySink
from .usage import Usage, report_usage

__all__ = [
    "BUDGET_EXCEEDED",
    "BUDGET_QUERY",
    "GOVERNANCE_KILLED",
    "RUNAWAY_LOOP",
    "Amounts",
    "Attribution",
    "BreachDetails",
    "BudgetContext",
    "BudgetExceeded",
    "BudgetSnapshot",
    "ChainLink",
    "DecisionRecord",
    "DecisionSink",
    "GovernanceEvent",
    "GovernanceInterceptor",
    "GovernorError",
    "GovernorPlugin",
    "IncidentReport",
    "LimitState",
    "OpenTelemetrySink",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "RunawayLoop",
    "Usage",
    "attribution",
    "current_attribution",
    "estimate",
    "register_search_attributes",
    "report_usage",
]
