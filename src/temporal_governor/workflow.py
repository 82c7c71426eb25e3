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
- :func:`current_context`: the run's own governor context (:class:`BudgetContext`): who
  pays (its ``attribution``), the chain of runs above it, its carved allowance and
  deadline.
- :func:`current_backpressure`: the backpressure holding on the run
  (:class:`ActiveBackpressure`), e.g. to make batches smaller.

And what every governed run answers to a client, from outside workflow code:
:data:`BUDGET_QUERY` returns a :class:`BudgetSnapshot`, and the control query
(:data:`temporal_governor.control.CONTROL_QUERY`) a :class:`ControlStatus`::

    snapshot = await handle.query(BUDGET_QUERY, result_type=BudgetSnapshot)

``current_attribution`` is the old name of :func:`current_context` (issue #12: it always
returned the whole context, not an :class:`~temporal_governor.Attribution`); it still
imports from here for one release, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings as _warnings
from typing import Any as _Any

from .activity import current_context
from .context import BudgetContext, estimate
from .interceptors import ActiveBackpressure, BudgetSnapshot, ControlStatus, current_backpressure
from .names import BUDGET_QUERY

__all__ = [
    "BUDGET_QUERY",
    "ActiveBackpressure",
    "BudgetContext",
    "BudgetSnapshot",
    "ControlStatus",
    "current_backpressure",
    "current_context",
    "estimate",
]


def __getattr__(name: str) -> _Any:
    """Resolve ``current_attribution``, the old name of :func:`current_context`, with a warning."""
    if name != "current_attribution":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _warnings.warn(
        f"{__name__}.current_attribution is deprecated and stops working in the next "
        f"release: use `from {__name__} import current_context`",
        DeprecationWarning,
        stacklevel=2,
    )
    return current_context
