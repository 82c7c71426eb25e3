"""What workflow code uses: estimates, the run's governor context, and what a run shows.

Import it in workflow code like ``temporalio.workflow`` (the plugin lets the workflow
sandbox share this module with the interceptors, so it needs no
``imports_passed_through()`` block)::

    from temporal_governor.workflow import current_backpressure, estimate

    @workflow.defn
    class Planner:
        @workflow.run
        async def run(self, goal: str) -> str:
            with estimate(tokens=8_000, cost_usd=0.05):
                plan = await workflow.execute_activity(call_llm, goal, ...)
            pressure = current_backpressure()
            ...

- :func:`estimate`: override the policy's estimate for the dispatches started inside the
  block.
- :func:`current_attribution`: the run's own governor context (:class:`BudgetContext`): who
  pays, the chain of runs above it, its carved allowance and deadline.
- :func:`current_backpressure`: the backpressure holding on the run
  (:class:`ActiveBackpressure`), e.g. to make batches smaller.

And what every governed run answers to a client, from outside workflow code:
:data:`BUDGET_QUERY` returns a :class:`BudgetSnapshot`, and the control query
(:data:`temporal_governor.control.CONTROL_QUERY`) a :class:`ControlStatus`::

    snapshot = await handle.query(BUDGET_QUERY, result_type=BudgetSnapshot)
"""

from __future__ import annotations

from .context import BudgetContext, current_attribution, estimate
from .interceptors import ActiveBackpressure, BudgetSnapshot, ControlStatus, current_backpressure
from .names import BUDGET_QUERY

__all__ = [
    "BUDGET_QUERY",
    "ActiveBackpressure",
    "BudgetContext",
    "BudgetSnapshot",
    "ControlStatus",
    "current_attribution",
    "current_backpressure",
    "estimate",
]
