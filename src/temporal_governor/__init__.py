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

from .context import (
    Attribution,
    BudgetContext,
    attribution,
    current_attribution,
    current_decision,
    estimate,
)
from .control._messages import (
    BACKPRESSURE_SIGNAL,
    CONTROL_QUERY,
    KILL_SIGNAL,
    OVERRIDE_SIGNAL,
    RESUME_SIGNAL,
    BackpressureMessage,
    Keyring,
    KeyringError,
    KillMessage,
    OverrideMessage,
    ResumeMessage,
)
from .core.accounting import Amounts, GovernanceEvent, LimitState
from .core.decisions import DecisionRecord, DecisionSink
from .core.degradation import Decision
from .errors import (
    BUDGET_EXCEEDED,
    GOVERNANCE_KILLED,
    INVALID_USAGE,
    RUNAWAY_LOOP,
    TOOL_DISABLED,
    BreachDetails,
    BudgetExceeded,
    ChainLink,
    GovernanceKilled,
    GovernorError,
    InvalidUsage,
    PolicyError,
    PolicyIssue,
    RunawayLoop,
)
from .interceptors import (
    BUDGET_QUERY,
    PRIORITY_KEYS,
    ActiveBackpressure,
    BudgetSnapshot,
    ControlStatus,
    GovernanceInterceptor,
    current_backpressure,
)
from .plugin import GovernorPlugin, register_search_attributes
from .policy import Policy
from .review._report import IncidentReport
from .telemetry import OpenTelemetrySink
from .usage import Usage, emit_backpressure, report_usage

__all__ = [
    "BACKPRESSURE_SIGNAL",
    "BUDGET_EXCEEDED",
    "BUDGET_QUERY",
    "CONTROL_QUERY",
    "GOVERNANCE_KILLED",
    "INVALID_USAGE",
    "KILL_SIGNAL",
    "OVERRIDE_SIGNAL",
    "PRIORITY_KEYS",
    "RESUME_SIGNAL",
    "RUNAWAY_LOOP",
    "TOOL_DISABLED",
    "ActiveBackpressure",
    "Amounts",
    "Attribution",
    "BackpressureMessage",
    "BreachDetails",
    "BudgetContext",
    "BudgetExceeded",
    "BudgetSnapshot",
    "ChainLink",
    "ControlStatus",
    "Decision",
    "DecisionRecord",
    "DecisionSink",
    "GovernanceEvent",
    "GovernanceInterceptor",
    "GovernanceKilled",
    "GovernorError",
    "GovernorPlugin",
    "IncidentReport",
    "InvalidUsage",
    "Keyring",
    "KeyringError",
    "KillMessage",
    "LimitState",
    "OpenTelemetrySink",
    "OverrideMessage",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "ResumeMessage",
    "RunawayLoop",
    "Usage",
    "attribution",
    "current_attribution",
    "current_backpressure",
    "current_decision",
    "emit_backpressure",
    "estimate",
    "register_search_attributes",
    "report_usage",
]
