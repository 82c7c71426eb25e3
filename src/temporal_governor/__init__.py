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

The root holds what an application registers and catches: the plugin, the policy, the
attribution of runs and the errors. The rest is grouped by job, in submodules:

- :mod:`temporal_governor.activity`: what activity code calls (``report_usage``,
  ``emit_backpressure``, ``current_degradation``).
- :mod:`temporal_governor.workflow`: what workflow code calls (``estimate``,
  ``current_context``, ``current_backpressure``) and what a governed run answers to
  its budget query.
- :mod:`temporal_governor.control`: the control client and its signed messages.
- :mod:`temporal_governor.review`: incident review, its renderers and evidence bundles.
- :mod:`temporal_governor.ledger`: the shared ledger's workflow and activity.
- :mod:`temporal_governor.telemetry`: the OpenTelemetry sink and the decision records every
  sink receives.
- :mod:`temporal_governor.errors`: the failure type names (``BUDGET_EXCEEDED`` ...) and
  the error details.

The other names the root used to export still import from here for one more release,
with a ``DeprecationWarning`` that names their new home (and their new name, for the few
renamed: ``Decision`` is ``Degradation``, ``current_decision`` is ``current_degradation``,
``current_attribution`` is ``current_context``, ``GovernanceEvent`` is ``BudgetEvent``).
"""

import importlib as _importlib
import typing as _typing
import warnings as _warnings

from .context import Attribution, attribution
from .errors import (
    BreachDetails,
    BudgetExceeded,
    GovernanceKilled,
    GovernorError,
    InvalidUsage,
    PolicyError,
    RunawayLoop,
)
from .plugin import GovernorPlugin, register_search_attributes
from .policy import Policy

__all__ = [
    "Attribution",
    "BreachDetails",
    "BudgetExceeded",
    "GovernanceKilled",
    "GovernorError",
    "GovernorPlugin",
    "InvalidUsage",
    "Policy",
    "PolicyError",
    "RunawayLoop",
    "attribution",
    "register_search_attributes",
]

_MOVED: dict[str, str] = {
    # what workflow code uses, and what a governed run answers to a client
    "BUDGET_QUERY": "temporal_governor.workflow",
    "ActiveBackpressure": "temporal_governor.workflow",
    "BudgetContext": "temporal_governor.workflow",
    "BudgetSnapshot": "temporal_governor.workflow",
    "ControlStatus": "temporal_governor.workflow",
    "current_backpressure": "temporal_governor.workflow",
    "estimate": "temporal_governor.workflow",
    # what activity code uses
    "Usage": "temporal_governor.activity",
    "emit_backpressure": "temporal_governor.activity",
    "report_usage": "temporal_governor.activity",
    # the control plane
    "BACKPRESSURE_SIGNAL": "temporal_governor.control",
    "CONTROL_QUERY": "temporal_governor.control",
    "KILL_SIGNAL": "temporal_governor.control",
    "OVERRIDE_SIGNAL": "temporal_governor.control",
    "RESUME_SIGNAL": "temporal_governor.control",
    "BackpressureMessage": "temporal_governor.control",
    "Keyring": "temporal_governor.control",
    "KeyringError": "temporal_governor.control",
    "KillMessage": "temporal_governor.control",
    "OverrideMessage": "temporal_governor.control",
    "ResumeMessage": "temporal_governor.control",
    # failure type names and error details
    "BUDGET_EXCEEDED": "temporal_governor.errors",
    "GOVERNANCE_KILLED": "temporal_governor.errors",
    "INVALID_USAGE": "temporal_governor.errors",
    "RUNAWAY_LOOP": "temporal_governor.errors",
    "TOOL_DISABLED": "temporal_governor.errors",
    "ChainLink": "temporal_governor.errors",
    "PolicyIssue": "temporal_governor.errors",
    # decision records and their sinks
    "DecisionRecord": "temporal_governor.telemetry",
    "DecisionSink": "temporal_governor.telemetry",
    "OpenTelemetrySink": "temporal_governor.telemetry",
    # the rest
    "IncidentReport": "temporal_governor.review",
    "GovernanceInterceptor": "temporal_governor.interceptors",
    "PRIORITY_KEYS": "temporal_governor.interceptors",
    "Amounts": "temporal_governor.core.accounting",
    "LimitState": "temporal_governor.core.accounting",
}
"""Names the root used to export -> the module that exports them now, under the same name."""

_RENAMED: dict[str, tuple[str, str]] = {
    "Decision": ("temporal_governor.activity", "Degradation"),
    "current_decision": ("temporal_governor.activity", "current_degradation"),
    "current_attribution": ("temporal_governor.workflow", "current_context"),
    "GovernanceEvent": ("temporal_governor.core.accounting", "BudgetEvent"),
}
"""Names the root used to export that were also renamed (issue #12) -> home, new name."""


def __getattr__(name: str) -> _typing.Any:
    """Resolve a name the root no longer exports from its new home, with a warning."""
    home, new = _RENAMED.get(name) or (_MOVED.get(name), name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    renamed = f" (renamed {new})" if new != name else ""
    _warnings.warn(
        f"importing {name} from temporal_governor is deprecated and stops working in the "
        f"next release: use `from {home} import {new}`{renamed}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(_importlib.import_module(home), new)
