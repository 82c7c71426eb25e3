"""A planner agent that spawns executor sub-agents, with a deterministic fake LLM.

Nothing here knows about the governor: these are ordinary Temporal workflows and
activities, governed only because the worker's client has ``GovernorPlugin``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

MODEL = "fake-gpt"


@dataclass
class LlmUsage:
    input_tokens: int
    output_tokens: int


@dataclass
class LlmRequest:
    prompt: str
    max_tokens: int = 1500


@dataclass
class LlmResponse:
    """Shaped like an OpenAI Agents / pydantic-ai model response: the governor reads usage."""

    text: str
    model: str
    usage: LlmUsage


@activity.defn
async def call_llm(request: LlmRequest) -> LlmResponse:
    """A fake LLM: token counts come from a generator seeded by the prompt (no network)."""
    seed = int.from_bytes(hashlib.sha256(request.prompt.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    input_tokens = min(1000, 50 + len(request.prompt) // 4 + rng.randint(0, 400))
    output_tokens = rng.randint(max(1, request.max_tokens // 4), request.max_tokens)
    return LlmResponse(
        text=f"answer-{seed % 10_000}",
        model=MODEL,
        usage=LlmUsage(input_tokens=input_tokens, output_tokens=output_tokens),
    )


@activity.defn(name="vector-search")
async def vector_search(query: str) -> list[str]:
    """A fake vector search: three deterministic document ids."""
    digest = hashlib.sha256(query.encode()).hexdigest()
    return [f"doc-{digest[i : i + 6]}" for i in range(0, 18, 6)]


_LLM = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_attempts=3),
}


@dataclass
class Subtask:
    goal: str
    step: int


@workflow.defn(name="executor")
class Executor:
    """Carries out one subtask: think, search, answer."""

    @workflow.run
    async def run(self, task: Subtask) -> str:
        thought = await workflow.execute_activity(
            call_llm, LlmRequest(f"think about {task.goal} step {task.step}"), **_LLM
        )
        docs = await workflow.execute_activity(
            vector_search, thought.text, start_to_close_timeout=timedelta(seconds=10)
        )
        answer = await workflow.execute_activity(
            call_llm, LlmRequest(f"answer {task.goal} step {task.step} using {docs}"), **_LLM
        )
        return answer.text


@dataclass
class PlanRequest:
    goal: str
    subtasks: int = 2
    runaway: bool = False
    """A runaway planner is never satisfied and keeps re-planning."""
    max_rounds: int = 1_000


@dataclass
class PlanResult:
    rounds: int
    answers: list[str] = field(default_factory=list)


@workflow.defn(name="planner")
class Planner:
    """Plans, fans out to executor sub-agents, evaluates; re-plans until satisfied."""

    @workflow.run
    async def run(self, request: PlanRequest) -> PlanResult:
        result = PlanResult(rounds=0)
        while result.rounds < request.max_rounds:
            result.rounds += 1
            plan = await workflow.execute_activity(
                call_llm, LlmRequest(f"plan {request.goal} round {result.rounds}"), **_LLM
            )
            for step in range(request.subtasks):
                answer = await workflow.execute_child_workflow(
                    Executor.run,
                    Subtask(goal=f"{request.goal}/{plan.text}", step=step),
                    id=f"{workflow.info().workflow_id}/r{result.rounds}-s{step}",
                )
                result.answers.append(answer)
            verdict = await workflow.execute_activity(
                call_llm,
                LlmRequest(f"evaluate {result.answers[-request.subtasks :]}", max_tokens=300),
                **_LLM,
            )
            if not request.runaway and verdict.text:
                break
        return result
