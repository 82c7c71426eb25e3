"""What activity code uses: report usage, ask for backpressure, read the degradation in force.

Call these from inside an activity that a governed workflow dispatched. Outside a governed
activity they do nothing (or return ``None``), so activities stay usable without the
governor::

    from temporal_governor.activity import current_degradation, report_usage

    @activity.defn
    async def call_llm(request: LlmRequest) -> str:
        degradation = current_degradation()
        model = degradation.model_for(request.model) if degradation else request.model
        response = await llm.complete(model=model, prompt=request.prompt)
        report_usage(input_tokens=response.input_tokens, output_tokens=response.output_tokens,
                     model=model)
        return response.text

- :func:`report_usage`: add tokens, dollars and tool calls to the attempt's usage (an
  activity whose result is shaped like a model response needs no call at all).
- :func:`emit_backpressure`: ask the dispatching run (and its parents) to slow down, e.g.
  when a provider answers 429.
- :func:`current_degradation`: the :class:`Degradation` in force when the activity was
  dispatched, to pick a cheaper model or fewer tokens.
- :func:`current_context`: the governor's context (:class:`BudgetContext`) of the run
  that dispatched the activity: who pays (its ``attribution``), and the chain of runs
  above it.
- :class:`Usage`: the usage of one dispatch, as the workflow sees it.

Renamed in issue #12, the old names still import from here for one release with a
``DeprecationWarning``: ``Decision`` (now :class:`Degradation`), ``current_decision``
(now :func:`current_degradation`) and ``current_attribution`` (now :func:`current_context`:
it always returned the whole context, not an :class:`~temporal_governor.Attribution`).
"""

from __future__ import annotations

import warnings as _warnings
from typing import Any as _Any

from . import context as _context
from .context import BudgetContext
from .core.degradation import Degradation
from .usage import Usage, emit_backpressure, report_usage


def current_degradation() -> Degradation | None:
    """Inside a governed activity: the degradation in force when it was dispatched.

    ``None`` when no ``degrade`` rule applied (or outside a governed activity). Use it to
    pick a cheaper model or a smaller ``max_tokens`` where the governor cannot rewrite
    the arguments itself::

        degradation = current_degradation()
        model = degradation.model_for(request.model) if degradation else request.model

    Returns:
        The degradation, or ``None``.

    """
    return _context.current_decision()


def current_context() -> BudgetContext | None:
    """The governor's context of the current activity or workflow run.

    Inside an activity it is the context of the run that dispatched it (its ``chain`` ends
    with that run); inside workflow code it is the run's own context. Outside both, or for
    ungoverned runs, it is ``None``. Who pays is its ``attribution``.

    Returns:
        The attribution, chain, depth, carved allowance and deadline, or ``None``.

    """
    return _context.current_attribution()


_RENAMED: dict[str, str] = {
    "Decision": "Degradation",
    "current_decision": "current_degradation",
    "current_attribution": "current_context",
}
"""Old names of this module (issue #12) -> their new names here."""


def __getattr__(name: str) -> _Any:
    """Resolve a renamed name under its old one, with a warning."""
    new = _RENAMED.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _warnings.warn(
        f"{__name__}.{name} is deprecated and stops working in the next release: use "
        f"`from {__name__} import {new}`",
        DeprecationWarning,
        stacklevel=2,
    )
    return globals()[new]


__all__ = [
    "BudgetContext",
    "Degradation",
    "Usage",
    "current_context",
    "current_degradation",
    "emit_backpressure",
    "report_usage",
]
