"""What activity code uses: report usage, ask for backpressure, read the decision in force.

Call these from inside an activity that a governed workflow dispatched. Outside a governed
activity they do nothing (or return ``None``), so activities stay usable without the
governor::

    from temporal_governor.activity import current_decision, report_usage

    @activity.defn
    async def call_llm(request: LlmRequest) -> str:
        decision = current_decision()
        model = decision.model_for(request.model) if decision else request.model
        response = await llm.complete(model=model, prompt=request.prompt)
        report_usage(input_tokens=response.input_tokens, output_tokens=response.output_tokens,
                     model=model)
        return response.text

- :func:`report_usage`: add tokens, dollars and tool calls to the attempt's usage (an
  activity whose result is shaped like a model response needs no call at all).
- :func:`emit_backpressure`: ask the dispatching run (and its parents) to slow down, e.g.
  when a provider answers 429.
- :func:`current_decision`: the degradation (:class:`Decision`) in force when the activity
  was dispatched, to pick a cheaper model or fewer tokens.
- :func:`current_attribution`: the governor's context (:class:`BudgetContext`) of the run
  that dispatched the activity: who pays, and the chain of runs above it.
- :class:`Usage`: the usage of one dispatch, as the workflow sees it.
"""

from __future__ import annotations

from .context import BudgetContext, current_attribution, current_decision
from .core.degradation import Decision
from .usage import Usage, emit_backpressure, report_usage

__all__ = [
    "BudgetContext",
    "Decision",
    "Usage",
    "current_attribution",
    "current_decision",
    "emit_backpressure",
    "report_usage",
]
