"""Agent code of the framework tests: plain OpenAI Agents SDK agents (pydantic-ai's are in
tests/integration_pydantic_workflows.py: each framework's workflows load in its own sandbox).

Nothing here knows of the governor: the agents, the workflows and the fake models are
written as each framework's own documentation says. The fake models are deterministic
and offline, and record what they were asked for (model, ``max_tokens``) in ``SEEN``, so
the tests can tell what reached the model inside the activity.

Every fake model call uses ``IN_TOKENS`` input and ``OUT_TOKENS`` output tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    from agents import (
        Agent,
        AgentOutputSchemaBase,
        Handoff,
        Model,
        ModelProvider,
        ModelResponse,
        ModelSettings,
        ModelTracing,
        Runner,
        Tool,
        TResponseInputItem,
        Usage,
    )

IN_TOKENS = 100
OUT_TOKENS = 50


@dataclass(frozen=True)
class Seen:
    """One call that reached a fake model inside its activity."""

    framework: str
    agent: str
    """The agent's instructions (OpenAI) or the fake model's function (pydantic-ai)."""
    model: str | None
    max_tokens: int | None
    marker: str
    """The run's prompt, so that each test finds its own calls."""


SEEN: list[Seen] = []


def seen_for(marker: str) -> list[Seen]:
    return [call for call in SEEN if call.marker == marker]


# -- the OpenAI Agents SDK ------------------------------------------------------------------


def _text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        content = item.get("content")
        if isinstance(content, str):
            return content
        output = item.get("output")
        if isinstance(output, str):
            return output
    return ""


def _first_user_text(input: str | list[TResponseInputItem]) -> str:
    if isinstance(input, str):
        return input
    for item in input:
        if isinstance(item, dict) and item.get("role") == "user":
            return _text(item)
    return ""


def _answered(input: str | list[TResponseInputItem]) -> bool:
    """Whether the conversation already holds a tool's (or a handoff's) output."""
    return not isinstance(input, str) and any(
        isinstance(item, dict) and item.get("type") == "function_call_output" for item in input
    )


def _message(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id="msg",
        content=[ResponseOutputText(text=text, annotations=[], type="output_text")],
        role="assistant",
        status="completed",
        type="message",
    )


class ScriptedModel(Model):
    """A fake model: hands off if it can, else calls its first tool once, else answers.

    Its responses carry usage and, as the SDK's own ``ModelResponse`` does, no model name.
    """

    def __init__(self, name: str | None) -> None:
        self.name = name

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        **kwargs: Any,
    ) -> ModelResponse:
        agent = system_instructions or ""
        marker = _first_user_text(input)
        SEEN.append(Seen("openai", agent, self.name, model_settings.max_tokens, marker))
        usage = Usage(
            requests=1,
            input_tokens=IN_TOKENS,
            output_tokens=OUT_TOKENS,
            total_tokens=IN_TOKENS + OUT_TOKENS,
        )
        output: Any
        if handoffs and not _answered(input):
            output = ResponseFunctionToolCall(
                arguments="{}",
                call_id="handoff-1",
                name=handoffs[0].tool_name,
                type="function_call",
                id="fc-1",
                status="completed",
            )
        elif tools and not _answered(input):
            output = ResponseFunctionToolCall(
                arguments=f'{{"input": "{marker}"}}',
                call_id="tool-1",
                name=tools[0].name,
                type="function_call",
                id="fc-2",
                status="completed",
            )
        else:
            output = _message(f"{agent}: done")
        return ModelResponse(output=[output], usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class ScriptedProvider(ModelProvider):
    """Gives each requested model name a :class:`ScriptedModel` that knows its name."""

    def get_model(self, model_name: str | None) -> Model:
        return ScriptedModel(model_name)


BIG_MODEL = "gpt-4o"
SMALL_MODEL = "gpt-4o-mini"

specialist = Agent(name="Specialist", instructions="specialist", model=BIG_MODEL)
triage = Agent(
    name="Triage",
    instructions="triage",
    model=BIG_MODEL,
    model_settings=ModelSettings(max_tokens=1000),
    handoffs=[specialist],
)
researcher = Agent(name="Researcher", instructions="researcher", model=BIG_MODEL)
orchestrator = Agent(
    name="Orchestrator",
    instructions="orchestrator",
    model=BIG_MODEL,
    tools=[researcher.as_tool(tool_name="research", tool_description="Research a question.")],
)


@workflow.defn
class OpenAITriage:
    """A triage agent that hands off to a specialist (two model calls)."""

    @workflow.run
    async def run(self, prompt: str) -> str:
        result = await Runner.run(triage, prompt)
        return str(result.final_output)


@workflow.defn
class OpenAIOrchestrator:
    """An agent that calls another agent as a tool (three model calls, one of them nested)."""

    @workflow.run
    async def run(self, prompt: str) -> str:
        result = await Runner.run(orchestrator, prompt)
        return str(result.final_output)


OPENAI_WORKFLOWS: list[type] = [OpenAITriage, OpenAIOrchestrator]
