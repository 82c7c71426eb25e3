"""The OpenAI Agents SDK and pydantic-ai on Temporal, governed with no change to agent code.

Each test runs a framework's own plugin beside ``GovernorPlugin`` on the same client and
worker of the dev server, with deterministic fake models (tests/integration_workflows.py):
tokens are counted, cost is priced, a breach halts the run, degradation reaches the fake
model inside the activity, and sub-agents (OpenAI handoffs and agents-as-tools, pydantic-ai
agent delegation) count in the run's budget and are halted by it. The last test replays
every history these tests produced, with both plugins installed.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")  # no trace export (offline)
pytest.importorskip("temporalio.openai_agents", reason="the `agents` extra is not installed")
pytest.importorskip(
    "pydantic_ai.durable_exec.temporal", reason="the `agents` extra is not installed"
)

from pydantic_ai.durable_exec.temporal import PydanticAIPlugin
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
from temporalio.plugin import SimplePlugin
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

import integration_pydantic_workflows
import integration_workflows
from integration_pydantic_workflows import (
    PYDANTIC_WORKFLOWS,
    PydanticEditor,
    PydanticReviewer,
    PydanticWriter,
)
from integration_workflows import (
    BIG_MODEL,
    IN_TOKENS,
    OPENAI_WORKFLOWS,
    OUT_TOKENS,
    SMALL_MODEL,
    OpenAIOrchestrator,
    OpenAITriage,
    ScriptedProvider,
    seen_for,
)
from temporal_governor import BreachDetails, GovernorPlugin, Policy
from temporal_governor.activity import Degradation
from temporal_governor.core.degradation import rewrite_arguments
from temporal_governor.integrations import (
    OPENAI_AGENTS_MODEL_ACTIVITIES,
    pydantic_ai_model_activities,
    pydantic_ai_tool_activities,
)
from temporal_governor.usage import usage_in_result
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot

ROOT = Path(__file__).resolve().parents[1]
CALL = IN_TOKENS + OUT_TOKENS
PRICES = f"""
models:
  {BIG_MODEL}: {{ input_per_1k: 2.5, output_per_1k: 10.0 }}
  {SMALL_MODEL}: {{ input_per_1k: 0.15, output_per_1k: 0.6 }}
"""
BIG_CALL_USD = IN_TOKENS / 1000 * 2.5 + OUT_TOKENS / 1000 * 10.0
SMALL_CALL_USD = IN_TOKENS / 1000 * 0.15 + OUT_TOKENS / 1000 * 0.6

# The model activities are model calls, not tool calls; each is expected to use one call's
# tokens and dollars at most (the estimate the governor reserves before dispatching it).
MODEL_TOOLS = f"""
tools:
  openai-model:
    activity_types: [invoke_model_activity, invoke_model_activity_streaming]
    counts_as_tool_call: false
    estimate: {{ tokens: {CALL}, cost_usd: {BIG_CALL_USD} }}
  pydantic-model:
    activity_types:
      - agent__writer__model_request
      - agent__editor__model_request
      - agent__fact_checker__model_request
      - agent__reviewer__model_request
    counts_as_tool_call: false
    estimate: {{ tokens: {CALL}, cost_usd: {BIG_CALL_USD} }}
"""

HISTORIES: list[tuple[str, Policy, Sequence[type], Callable[[], list[SimplePlugin]]]] = []


def openai_plugins() -> list[SimplePlugin]:
    parameters = ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30))
    return [OpenAIAgentsPlugin(model_params=parameters, model_provider=ScriptedProvider())]


def pydantic_plugins() -> list[SimplePlugin]:
    return [PydanticAIPlugin()]


@dataclass
class Framework:
    client: Client
    task_queue: str

    async def start(self, workflow: Any, prompt: str) -> Any:
        return await self.client.start_workflow(
            workflow, prompt, id=f"wf-{uuid.uuid4()}", task_queue=self.task_queue
        )


@asynccontextmanager
async def framework(
    env: WorkflowEnvironment,
    policy: Policy,
    workflows: Sequence[type],
    plugins: Callable[[], list[SimplePlugin]],
) -> AsyncIterator[Framework]:
    """A client and worker with the framework's plugin(s) and GovernorPlugin together."""
    client = Client(
        env.client.service_client,
        namespace=env.client.namespace,
        plugins=[GovernorPlugin(policy), *plugins()],
    )
    task_queue = f"tq-{uuid.uuid4()}"
    HISTORIES.append((task_queue, policy, workflows, plugins))
    async with Worker(client, task_queue=task_queue, workflows=workflows):
        yield Framework(client, task_queue)


async def budget(handle: Any) -> BudgetSnapshot:
    return BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))


def breach_of(error: BaseException) -> BreachDetails:
    details = BreachDetails.from_error(error)
    assert details is not None, f"no breach details in {error!r}"
    return details


def marker() -> str:
    return f"question {uuid.uuid4().hex[:8]}"


# -- OpenAI Agents SDK -----------------------------------------------------------------------


async def test_openai_handoff_is_counted_and_priced(env: WorkflowEnvironment) -> None:
    policy = Policy.from_yaml(
        PRICES + MODEL_TOOLS + "defaults: { quotas: { max_tokens_per_task: 10_000 } }"
    )
    prompt = marker()
    async with framework(env, policy, OPENAI_WORKFLOWS, openai_plugins) as f:
        handle = await f.start(OpenAITriage.run, prompt)
        assert await handle.result() == "specialist: done"
        snap = await budget(handle)
    calls = seen_for(prompt)
    assert [(c.agent, c.model) for c in calls] == [("triage", BIG_MODEL), ("specialist", BIG_MODEL)]
    # both agents' calls count: the triage agent's and the specialist it handed off to
    assert snap.committed["tokens"] == 2 * CALL
    # the SDK's ModelResponse names no model: the price comes from the activity's input
    assert snap.committed["cost_usd"] == pytest.approx(2 * BIG_CALL_USD)
    assert snap.committed.get("tool_calls", 0) == 0


async def test_openai_agent_as_tool_is_counted(env: WorkflowEnvironment) -> None:
    policy = Policy.from_yaml(
        PRICES + MODEL_TOOLS + "defaults: { quotas: { max_tokens_per_task: 10_000 } }"
    )
    prompt = marker()
    async with framework(env, policy, OPENAI_WORKFLOWS, openai_plugins) as f:
        handle = await f.start(OpenAIOrchestrator.run, prompt)
        assert await handle.result() == "orchestrator: done"
        snap = await budget(handle)
    assert [c.agent for c in seen_for(prompt)] == ["orchestrator", "researcher", "orchestrator"]
    assert snap.committed["tokens"] == 3 * CALL
    assert snap.committed["cost_usd"] == pytest.approx(3 * BIG_CALL_USD)


async def test_openai_cost_ceiling_halts_the_run(env: WorkflowEnvironment) -> None:
    # one call costs BIG_CALL_USD (0.75 $): the second would make 1.5 $ > 1.0 $
    policy = Policy.from_yaml(
        PRICES
        + MODEL_TOOLS
        + """
agents:
  OpenAITriage:
    quotas: { max_cost_usd_per_task: 1.0 }
"""
    )
    prompt = marker()
    async with framework(env, policy, OPENAI_WORKFLOWS, openai_plugins) as f:
        handle = await f.start(OpenAITriage.run, prompt)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "BudgetExceeded"
    details = breach_of(failure.value)
    assert details.limit == "max_cost_usd_per_task"
    assert details.committed == pytest.approx(BIG_CALL_USD)
    assert details.dispatch == "activity invoke_model_activity"
    # the specialist's call was refused before it reached the model
    assert [c.agent for c in seen_for(prompt)] == ["triage"]


async def test_openai_sub_agent_is_halted_by_the_run_budget(env: WorkflowEnvironment) -> None:
    # room for the orchestrator's first call only: the researcher (agent-as-tool) is refused
    policy = Policy.from_yaml(
        PRICES
        + MODEL_TOOLS
        + f"agents: {{ OpenAIOrchestrator: {{ quotas: {{ max_tokens_per_task: {CALL + CALL // 2} }} }} }}"
    )
    prompt = marker()
    async with framework(env, policy, OPENAI_WORKFLOWS, openai_plugins) as f:
        handle = await f.start(OpenAIOrchestrator.run, prompt)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    details = breach_of(failure.value)
    assert details.limit == "max_tokens_per_task"
    assert details.committed == CALL
    assert details.dispatch == "activity invoke_model_activity"
    assert [c.agent for c in seen_for(prompt)] == ["orchestrator"]


async def test_openai_degradation_reaches_the_model(env: WorkflowEnvironment) -> None:
    # after the first call 70% of the budget remains: the rule (below 80%) applies
    policy = Policy.from_yaml(
        PRICES
        + MODEL_TOOLS
        + f"""
agents:
  OpenAITriage:
    quotas: {{ max_tokens_per_task: {CALL * 10 // 3} }}
    degrade:
      - when_remaining_below: 0.8
        model_map: {{ {BIG_MODEL}: {SMALL_MODEL} }}
        max_tokens: 64
"""
    )
    prompt = marker()
    async with framework(env, policy, OPENAI_WORKFLOWS, openai_plugins) as f:
        handle = await f.start(OpenAITriage.run, prompt)
        assert await handle.result() == "specialist: done"
        snap = await budget(handle)
    calls = seen_for(prompt)
    assert [(c.agent, c.model, c.max_tokens) for c in calls] == [
        ("triage", BIG_MODEL, 1000),
        ("specialist", SMALL_MODEL, 64),  # swapped and capped (the specialist set no cap)
    ]
    # each call priced at the model that served it
    assert snap.committed["cost_usd"] == pytest.approx(BIG_CALL_USD + SMALL_CALL_USD)


# -- pydantic-ai -----------------------------------------------------------------------------


async def test_pydantic_ai_call_is_counted_and_priced(env: WorkflowEnvironment) -> None:
    policy = Policy.from_yaml(
        PRICES + MODEL_TOOLS + "defaults: { quotas: { max_tokens_per_task: 10_000 } }"
    )
    prompt = marker()
    async with framework(env, policy, PYDANTIC_WORKFLOWS, pydantic_plugins) as f:
        handle = await f.start(PydanticWriter.run, prompt)
        assert await handle.result() == f"{BIG_MODEL}: done"
        snap = await budget(handle)
    assert [c.model for c in seen_for(prompt)] == [BIG_MODEL]
    assert snap.committed["tokens"] == CALL
    assert snap.committed["cost_usd"] == pytest.approx(BIG_CALL_USD)
    assert snap.committed.get("tool_calls", 0) == 0


async def test_pydantic_ai_delegation_is_counted(env: WorkflowEnvironment) -> None:
    policy = Policy.from_yaml(
        PRICES + MODEL_TOOLS + "defaults: { quotas: { max_tokens_per_task: 10_000 } }"
    )
    prompt = marker()
    async with framework(env, policy, PYDANTIC_WORKFLOWS, pydantic_plugins) as f:
        handle = await f.start(PydanticEditor.run, prompt)
        assert await handle.result() == f"{BIG_MODEL}: done"
        snap = await budget(handle)
    # editor -> fact checker (delegate) -> editor
    assert len(seen_for(prompt)) == 3
    assert snap.committed["tokens"] == 3 * CALL
    assert snap.committed["cost_usd"] == pytest.approx(3 * BIG_CALL_USD)


async def test_pydantic_ai_delegate_is_halted_by_the_run_budget(env: WorkflowEnvironment) -> None:
    policy = Policy.from_yaml(
        PRICES
        + MODEL_TOOLS
        + f"agents: {{ PydanticEditor: {{ quotas: {{ max_tokens_per_task: {CALL + CALL // 2} }} }} }}"
    )
    prompt = marker()
    async with framework(env, policy, PYDANTIC_WORKFLOWS, pydantic_plugins) as f:
        handle = await f.start(PydanticEditor.run, prompt)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    details = breach_of(failure.value)
    assert details.limit == "max_tokens_per_task"
    assert details.committed == CALL
    assert details.dispatch == "activity agent__fact_checker__model_request"
    assert len(seen_for(prompt)) == 1


async def test_pydantic_ai_cost_ceiling_halts_the_run(env: WorkflowEnvironment) -> None:
    policy = Policy.from_yaml(
        PRICES
        + MODEL_TOOLS
        + """
agents:
  PydanticEditor:
    quotas: { max_cost_usd_per_task: 1.0 }
"""
    )
    prompt = marker()
    async with framework(env, policy, PYDANTIC_WORKFLOWS, pydantic_plugins) as f:
        handle = await f.start(PydanticEditor.run, prompt)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    details = breach_of(failure.value)
    assert details.limit == "max_cost_usd_per_task"
    assert details.committed == pytest.approx(BIG_CALL_USD)
    assert len(seen_for(prompt)) == 1


async def test_pydantic_ai_degradation_reaches_the_model(env: WorkflowEnvironment) -> None:
    # the agents' own model is pydantic-ai's `default`; the small model is registered with
    # TemporalDurability(models=...) on both agents of the run, so the policy may switch to it
    policy = Policy.from_yaml(
        PRICES
        + MODEL_TOOLS
        + f"""
agents:
  PydanticEditor:
    quotas: {{ max_tokens_per_task: {CALL * 10 // 3} }}
    degrade:
      - when_remaining_below: 0.8
        model_map: {{ default: {SMALL_MODEL} }}
        max_tokens: 64
"""
    )
    prompt = marker()
    async with framework(env, policy, PYDANTIC_WORKFLOWS, pydantic_plugins) as f:
        handle = await f.start(PydanticEditor.run, prompt)
        await handle.result()
        snap = await budget(handle)
    calls = seen_for(prompt)
    assert [(c.model, c.max_tokens) for c in calls] == [
        (BIG_MODEL, None),
        (SMALL_MODEL, 64),  # the delegate's call: swapped, and capped (no settings at all)
        (SMALL_MODEL, 64),
    ]
    assert snap.committed["cost_usd"] == pytest.approx(BIG_CALL_USD + 2 * SMALL_CALL_USD)


async def test_pydantic_ai_delegate_inside_a_tool_activity(env: WorkflowEnvironment) -> None:
    """A delegate run by a tool activity: counted with GovernedUsage, invisible without."""
    policy = Policy.from_yaml(
        PRICES + MODEL_TOOLS + "defaults: { quotas: { max_tokens_per_task: 10_000 } }"
    )
    counted, uncounted = f"counted {marker()}", f"uncounted {marker()}"
    async with framework(env, policy, PYDANTIC_WORKFLOWS, pydantic_plugins) as f:
        handles = [await f.start(PydanticReviewer.run, prompt) for prompt in (counted, uncounted)]
        for handle in handles:
            assert await handle.result() == f"{BIG_MODEL}: done"
        with_capability, without = [await budget(handle) for handle in handles]
    # reviewer -> (tool activity: fact checker) -> reviewer: three calls reach a model each time
    assert len(seen_for(counted)) == 3 and len(seen_for(uncounted)) == 3
    assert with_capability.committed["tokens"] == 3 * CALL
    assert with_capability.committed["cost_usd"] == pytest.approx(3 * BIG_CALL_USD)
    assert with_capability.committed["tool_calls"] == 1  # the tool activity
    # without GovernedUsage the delegate's call inside the tool activity is not seen
    assert without.committed["tokens"] == 2 * CALL


async def test_pydantic_ai_delegate_inside_a_tool_activity_is_halted(
    env: WorkflowEnvironment,
) -> None:
    # the tool activity's reported usage overdraws the run: the next model call is refused
    policy = Policy.from_yaml(
        PRICES
        + MODEL_TOOLS
        + f"agents: {{ PydanticReviewer: {{ quotas: {{ max_tokens_per_task: {CALL * 5 // 2} }} }} }}"
    )
    prompt = f"counted {marker()}"
    async with framework(env, policy, PYDANTIC_WORKFLOWS, pydantic_plugins) as f:
        handle = await f.start(PydanticReviewer.run, prompt)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    details = breach_of(failure.value)
    assert details.limit == "max_tokens_per_task"
    assert details.committed == 2 * CALL  # the reviewer's call and the delegate's
    assert details.dispatch == "activity agent__reviewer__model_request"
    assert len(seen_for(prompt)) == 2


async def test_the_activity_types_docs_name(env: WorkflowEnvironment) -> None:
    """docs/integrations.md names these activity types: they are the ones that run."""
    policy = Policy.from_yaml(PRICES + MODEL_TOOLS)
    types: set[str] = set()
    for workflows, plugins, runs in (
        (OPENAI_WORKFLOWS, openai_plugins, [OpenAITriage.run, OpenAIOrchestrator.run]),
        (PYDANTIC_WORKFLOWS, pydantic_plugins, [PydanticEditor.run, PydanticReviewer.run]),
    ):
        async with framework(env, policy, workflows, plugins) as f:
            for run in runs:
                handle = await f.start(run, f"counted {marker()}")
                await handle.result()
                async for event in handle.fetch_history_events():
                    if event.HasField("activity_task_scheduled_event_attributes"):
                        types.add(event.activity_task_scheduled_event_attributes.activity_type.name)
    # the agent's own tools are pydantic-ai's toolset `<agent>`; the editor's delegating tool
    # runs in the workflow (metadata={"temporal": False}): no activity of its own
    assert types == {
        "invoke_model_activity",
        "agent__editor__model_request",
        "agent__fact_checker__model_request",
        "agent__reviewer__model_request",
        "agent__reviewer__toolset__<agent>__call_tool",
    }
    assert set(OPENAI_AGENTS_MODEL_ACTIVITIES) & types == {"invoke_model_activity"}
    assert pydantic_ai_model_activities("editor")[0] in types
    assert pydantic_ai_tool_activities("reviewer", ["<agent>"]) == [
        "agent__reviewer__toolset__<agent>__call_tool"
    ]


def test_openai_model_response_names_no_model_the_input_does() -> None:
    from agents import ModelResponse, ModelSettings, Usage

    response = ModelResponse(
        output=[], usage=Usage(input_tokens=7, output_tokens=3), response_id=None
    )
    assert not hasattr(response, "model") and not hasattr(response, "model_name")
    activity_input = {"model_name": BIG_MODEL, "model_settings": ModelSettings(), "input": "hi"}
    assert usage_in_result(response) == (7, 3, None)
    assert usage_in_result(response, [activity_input]) == (7, 3, BIG_MODEL)


def test_pydantic_ai_model_name_from_the_result_then_the_model_id() -> None:
    from pydantic_ai.messages import ModelResponse, TextPart
    from pydantic_ai.usage import RequestUsage

    response = ModelResponse(
        parts=[TextPart("x")], usage=RequestUsage(input_tokens=5, output_tokens=2)
    )
    params = SimpleNamespace(model_id="openai:gpt-4o-mini", model_settings=None)
    assert usage_in_result(response, [params, None]) == (5, 2, SMALL_MODEL)
    response.model_name = BIG_MODEL
    assert usage_in_result(response, [params, None]) == (5, 2, BIG_MODEL)  # who answered wins


def test_openai_streaming_events_usage_and_model() -> None:
    """invoke_model_activity_streaming returns the stream's events: the last one tells."""
    events = [
        {"type": "response.created", "response": {"model": BIG_MODEL, "usage": None}},
        {"type": "response.output_text.delta", "delta": "hi"},
        {
            "type": "response.completed",
            "response": {"model": BIG_MODEL, "usage": {"input_tokens": 30, "output_tokens": 9}},
        },
    ]
    assert usage_in_result(events, [{"model_name": SMALL_MODEL}]) == (30, 9, BIG_MODEL)
    assert usage_in_result(events[:2]) is None
    assert usage_in_result(["text", 3]) is None


def test_degradation_of_framework_inputs_without_a_server() -> None:
    from agents import ModelSettings

    decision = Degradation(rule=0, reason="low", model_map={BIG_MODEL: SMALL_MODEL}, max_tokens=64)
    [openai] = rewrite_arguments(
        [
            {
                "model_name": BIG_MODEL,
                "model_settings": ModelSettings(max_tokens=9000),
                "input": "hi",
            }
        ],
        decision,
    )
    assert openai["model_name"] == SMALL_MODEL and openai["model_settings"].max_tokens == 64
    # already under the cap: left alone; no model named: `default` is the key
    [low] = rewrite_arguments(
        [{"model_name": None, "model_settings": ModelSettings(max_tokens=10)}], decision
    )
    assert low == {"model_name": None, "model_settings": ModelSettings(max_tokens=10)}
    by_default = Degradation(rule=0, reason="low", model_map={"default": SMALL_MODEL})
    [swapped] = rewrite_arguments(
        [{"model_name": None, "model_settings": ModelSettings()}], by_default
    )
    assert swapped["model_name"] == SMALL_MODEL and swapped["model_settings"].max_tokens is None


# -- the examples ----------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["openai_agents_support_desk", "pydantic_ai_newsroom"])
async def test_example_runs_offline(env: WorkflowEnvironment, example: str) -> None:
    address = env.client.service_client.config.target_host
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, f"examples/{example}.py"],
        cwd=ROOT,
        env={**os.environ, "TEMPORAL_ADDRESS": address, "OPENAI_API_KEY": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert done.stdout.splitlines()[-1] == "example OK"
    assert any("HALTED: max_cost_usd_per_task" in line for line in output.splitlines())
    assert not re.search(r"Traceback|WARN|ERROR|Fatal", output), output[-3000:]


# -- replay ----------------------------------------------------------------------------------


async def test_zz_framework_histories_replay_with_the_governor(env: WorkflowEnvironment) -> None:
    assert HISTORIES, "no framework test ran"
    failures: list[str] = []
    replayed = 0
    for task_queue, policy, workflows, plugins in HISTORIES:
        client = Client(env.client.service_client, namespace=env.client.namespace)
        histories = [
            await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
            async for wf in client.list_workflows(f'TaskQueue="{task_queue}"')
        ]
        replayer = Replayer(workflows=workflows, plugins=[GovernorPlugin(policy), *plugins()])
        results = await replayer.replay_workflows(_each(histories), raise_on_replay_failure=False)
        failures += [
            f"{task_queue} {run}: {error!r}" for run, error in results.replay_failures.items()
        ]
        replayed += len(histories)
    assert not failures, "\n".join(failures)
    assert replayed >= len(HISTORIES)


async def _each(histories: list[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history


def test_agents_code_knows_nothing_of_the_governor() -> None:
    """The agent code imports nothing of the governor, but GovernedUsage for one delegate."""

    def governor_names(module: Any) -> list[str]:
        with open(module.__file__) as source:
            tree = ast.parse(source.read())
        imported = [
            f"{node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("temporal_gov")
            for alias in node.names
        ]
        imported += [
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if alias.name.startswith("temporal_gov")
        ]
        return imported

    assert governor_names(integration_workflows) == []
    assert governor_names(integration_pydantic_workflows) == [
        "temporal_governor.integrations.GovernedUsage"
    ]
    with open(integration_pydantic_workflows.__file__) as source:
        used = [line for line in source if "GovernedUsage()" in line]
    assert len(used) == 1 and "counted_checker" in used[0]
