"""The agent frameworks that run on Temporal: the OpenAI Agents SDK and pydantic-ai.

Both are governed with no change to agent code: their model calls are activities, whose
results carry token usage, whose inputs name the model (priced from the policy's
``models`` table) and whose arguments the governor's degradation rewrites (see
:func:`temporal_governor.core.degradation.rewrite_arguments`). This module names the activity
types to put in a policy, and holds :class:`GovernedUsage`, the one piece that needs a line
of agent code: a pydantic-ai agent run *inside* an activity (a delegate run by a tool that
runs as an activity) calls its model in-process, where no activity of its own carries the
usage. See docs/integrations.md.

Importing this module never needs the frameworks; :class:`GovernedUsage` exists only where
``pydantic-ai`` is installed (``pip install 'temporal-governor[agents]'``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .usage import report_usage

OPENAI_AGENTS_MODEL_ACTIVITIES = ("invoke_model_activity", "invoke_model_activity_streaming")
"""The OpenAI Agents SDK's model-call activities (``temporalio.openai_agents``). Every agent
of a workflow, handoffs and agents-as-tools included, calls its model through them."""


def pydantic_ai_model_activities(agent: str) -> list[str]:
    """The model-call activity types of a pydantic-ai agent under ``TemporalDurability``.

    Args:
        agent: The agent's ``name`` (pydantic-ai requires one under Temporal).

    Returns:
        ``agent__<agent>__model_request`` and its streaming twin
        ``agent__<agent>__model_request_stream``.

    """
    return [f"agent__{agent}__model_request", f"agent__{agent}__model_request_stream"]


def pydantic_ai_tool_activities(agent: str, toolsets: Iterable[str]) -> list[str]:
    """The tool-call activity types of a pydantic-ai agent's toolsets.

    Args:
        agent: The agent's ``name``.
        toolsets: Toolset ids (the tools given to the agent itself make the toolset
            ``<agent>``'s own function toolset, whose id pydantic-ai sets; read the
            activity types off a run's history when in doubt).

    Returns:
        ``agent__<agent>__toolset__<id>__call_tool`` for each toolset.

    """
    return [f"agent__{agent}__toolset__{toolset}__call_tool" for toolset in toolsets]


def _report(response: Any) -> None:
    """Report a pydantic-ai ``ModelResponse``'s usage to the governed activity, if any."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return
    model = getattr(response, "model_name", None)
    report_usage(
        input_tokens=getattr(usage, "input_tokens", 0) or 0,
        output_tokens=getattr(usage, "output_tokens", 0) or 0,
        model=model if isinstance(model, str) and model else None,
    )


if TYPE_CHECKING:
    _HAS_PYDANTIC_AI = True
else:
    try:
        import pydantic_ai.capabilities  # noqa: F401
    except ImportError:  # the `agents` extra is not installed
        _HAS_PYDANTIC_AI = False
    else:
        _HAS_PYDANTIC_AI = True

if _HAS_PYDANTIC_AI:
    from dataclasses import dataclass

    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.messages import ModelResponse
    from pydantic_ai.models import ModelRequestContext
    from pydantic_ai.tools import RunContext

    @dataclass
    class GovernedUsage(AbstractCapability[Any]):
        """Count a pydantic-ai agent's model calls made inside a governed activity.

        Add it to an agent that runs inside an activity, typically a delegate run by a tool
        whose calls are activities (pydantic-ai's default under ``TemporalDurability``)::

            fact_checker = Agent(model, name="fact_checker", capabilities=[GovernedUsage()])

        Each model response's tokens are then reported (:func:`report_usage`, priced by
        the response's model name) to the tool activity that ran the agent, and count in
        the workflow's budget like any activity's usage. Elsewhere it does nothing: in a
        workflow the agent's model requests are activities of their own (counted without
        it), and outside a governed activity there is nothing to report to.
        """

        async def after_model_request(
            self,
            ctx: RunContext[Any],
            *,
            request_context: ModelRequestContext,
            response: ModelResponse,
        ) -> ModelResponse:
            """Report the response's usage to the governed activity (if any); keep it."""
            _report(response)
            return response

    __all__ = [
        "OPENAI_AGENTS_MODEL_ACTIVITIES",
        "GovernedUsage",
        "pydantic_ai_model_activities",
        "pydantic_ai_tool_activities",
    ]
else:  # pragma: no cover - without the extra
    __all__ = [
        "OPENAI_AGENTS_MODEL_ACTIVITIES",
        "pydantic_ai_model_activities",
        "pydantic_ai_tool_activities",
    ]
