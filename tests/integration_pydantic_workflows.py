"""Agent code of the framework tests: plain pydantic-ai agents, delegation included.

Nothing here knows of the governor, except ``counted_checker``: a delegate that runs inside
a tool's activity carries ``GovernedUsage``. The fake models record what reached them in
``integration_workflows.SEEN``.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic_ai import Agent, RunContext
    from pydantic_ai.durable_exec.temporal import PydanticAIWorkflow, TemporalDurability
    from pydantic_ai.messages import (
        ModelMessage,
        ModelRequest,
        ModelResponse,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
    )
    from pydantic_ai.models.function import AgentInfo, FunctionModel
    from pydantic_ai.usage import RequestUsage

    from integration_workflows import BIG_MODEL, IN_TOKENS, OUT_TOKENS, SEEN, SMALL_MODEL, Seen
    from temporal_governor.integrations import GovernedUsage


def _prompt(messages: list[ModelMessage]) -> str:
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                content = getattr(part, "content", None)
                if part.part_kind == "user-prompt" and isinstance(content, str):
                    return content
    return ""


def _returned(messages: list[ModelMessage]) -> bool:
    return any(
        isinstance(part, ToolReturnPart)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
    )


def fake_llm(name: str) -> FunctionModel:
    """A fake pydantic-ai model called ``name``: calls its first tool once, then answers."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        settings = info.model_settings or {}
        marker = _prompt(messages)
        SEEN.append(Seen("pydantic-ai", "fake", name, settings.get("max_tokens"), marker))
        usage = RequestUsage(input_tokens=IN_TOKENS, output_tokens=OUT_TOKENS)
        if info.function_tools and not _returned(messages):
            tool = info.function_tools[0].name
            call = ToolCallPart(tool_name=tool, args={"question": marker}, tool_call_id="t1")
            return ModelResponse(parts=[call], usage=usage)
        return ModelResponse(parts=[TextPart(f"{name}: done")], usage=usage)

    return FunctionModel(respond, model_name=name)


writer = Agent(
    fake_llm(BIG_MODEL),
    name="writer",
    capabilities=[TemporalDurability(models={SMALL_MODEL: fake_llm(SMALL_MODEL)})],
)


@workflow.defn
class PydanticWriter(PydanticAIWorkflow):
    """One pydantic-ai agent, one model call per run."""

    __pydantic_ai_agents__ = [writer]

    @workflow.run
    async def run(self, prompt: str) -> str:
        result = await writer.run(prompt)
        return result.output


fact_checker = Agent(
    fake_llm(BIG_MODEL),
    name="fact_checker",
    capabilities=[TemporalDurability(models={SMALL_MODEL: fake_llm(SMALL_MODEL)})],
)
editor = Agent(
    fake_llm(BIG_MODEL),
    name="editor",
    capabilities=[TemporalDurability(models={SMALL_MODEL: fake_llm(SMALL_MODEL)})],
)


# Agent delegation as pydantic-ai documents it: a tool of the editor runs the fact checker.
# The tool runs in the workflow (``metadata={'temporal': False}``), so the delegate's model
# requests are its own ``agent__fact_checker__model_request`` activities of the same run.
@editor.tool(metadata={"temporal": False})
async def check_facts(ctx: RunContext[None], question: str) -> str:
    """Have the fact checker look at the question."""
    result = await fact_checker.run(question, usage=ctx.usage)
    return result.output


@workflow.defn
class PydanticEditor(PydanticAIWorkflow):
    """An agent that delegates to another agent (three model calls, one of the delegate)."""

    __pydantic_ai_agents__ = [editor, fact_checker]

    @workflow.run
    async def run(self, prompt: str) -> str:
        result = await editor.run(prompt)
        return result.output


# Agent delegation from a tool that runs as an activity (pydantic-ai's default for tools):
# the delegate runs inside that activity and calls its model in-process. pydantic-ai drops
# such a delegate's usage from the parent run; the governor counts it where the delegate
# carries GovernedUsage (its one line of governor code), and cannot see it where not.
counted_checker = Agent(fake_llm(BIG_MODEL), name="counted_checker", capabilities=[GovernedUsage()])
uncounted_checker = Agent(fake_llm(BIG_MODEL), name="uncounted_checker")

reviewer = Agent(fake_llm(BIG_MODEL), name="reviewer", capabilities=[TemporalDurability()])


@reviewer.tool
async def review_facts(ctx: RunContext[None], question: str) -> str:
    """Have a fact checker look at the question (in this tool's activity)."""
    checker = counted_checker if question.startswith("counted") else uncounted_checker
    result = await checker.run(question, usage=ctx.usage)
    return result.output


@workflow.defn
class PydanticReviewer(PydanticAIWorkflow):
    """An agent whose tool (an activity) runs another agent (three model calls)."""

    __pydantic_ai_agents__ = [reviewer]

    @workflow.run
    async def run(self, prompt: str) -> str:
        result = await reviewer.run(prompt)
        return result.output


PYDANTIC_WORKFLOWS: list[type] = [PydanticWriter, PydanticEditor, PydanticReviewer]
