"""Workflows and activities used by the tests (importable: the sandbox re-imports them)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

import temporal_governor.workflow
from temporal_governor.activity import current_context, report_usage

_T = {"start_to_close_timeout": timedelta(seconds=20)}


@dataclass
class Spend:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    model: str | None = None


@activity.defn
async def spend(s: Spend) -> str:
    """Reports exactly what it is told to."""
    report_usage(
        input_tokens=s.input_tokens,
        output_tokens=s.output_tokens,
        cost_usd=s.cost_usd,
        model=s.model,
    )
    return "spent"


@activity.defn
async def noop() -> None:
    return None


@activity.defn
async def usage_shaped(tokens: int) -> dict[str, Any]:
    """Returns a model-response-shaped dict; usage is read automatically."""
    return {"text": "hi", "model": "m1", "usage": {"input_tokens": tokens, "output_tokens": tokens}}


FLAKY_ATTEMPTS: dict[str, int] = {}


@activity.defn
async def flaky(tokens: int) -> str:
    """Reports tokens on every attempt; fails the first two attempts."""
    info = activity.info()
    FLAKY_ATTEMPTS[info.workflow_id or ""] = info.attempt
    report_usage(input_tokens=tokens)
    if info.attempt < 3:
        raise RuntimeError(f"transient failure on attempt {info.attempt}")
    return f"ok after {info.attempt}"


@activity.defn
async def always_fails(tokens: int) -> str:
    report_usage(input_tokens=tokens)
    raise ApplicationError("nope", {"why": "broken"}, type="Broken", non_retryable=True)


@activity.defn
async def whoami() -> dict[str, Any]:
    context = current_context()
    assert context is not None
    return {
        "tenant": context.attribution.tenant,
        "owner": context.attribution.owner,
        "chain": [link.agent for link in context.chain],
    }


@dataclass
class Steps:
    tokens: list[int] = field(default_factory=list)
    """Tokens each successive `spend` activity reports."""
    estimate: int | None = None
    """Explicit per-call estimate (tokens)."""
    catch: bool = False
    """Catch every error and carry on (agent code trying to bypass the governor)."""


@workflow.defn
class Spender:
    @workflow.run
    async def run(self, steps: Steps) -> int:
        done = 0
        for tokens in steps.tokens:
            try:
                if steps.estimate is not None:
                    with temporal_governor.workflow.estimate(tokens=steps.estimate):
                        await workflow.execute_activity(spend, Spend(output_tokens=tokens), **_T)
                else:
                    await workflow.execute_activity(spend, Spend(output_tokens=tokens), **_T)
                done += 1
            except Exception:
                if not steps.catch:
                    raise
        return done


@workflow.defn
class RetryingAgent:
    @workflow.run
    async def run(self, tokens: int) -> str:
        return await workflow.execute_activity(
            flaky,
            tokens,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=50), maximum_attempts=5
            ),
        )


@workflow.defn
class FailingAgent:
    @workflow.run
    async def run(self, tokens: int) -> str:
        try:
            return await workflow.execute_activity(always_fails, tokens, **_T)
        except Exception as error:
            cause = error.__cause__
            assert isinstance(cause, ApplicationError)
            return f"{cause.type}:{list(cause.details)}"


@workflow.defn
class LocalSpender:
    @workflow.run
    async def run(self, tokens: int) -> str:
        return await workflow.execute_local_activity(spend, Spend(output_tokens=tokens), **_T)


@workflow.defn
class ShapedAgent:
    @workflow.run
    async def run(self, tokens: int) -> dict[str, Any]:
        return await workflow.execute_activity(usage_shaped, tokens, **_T)


@dataclass
class Tree:
    """A sub-agent tree: each node spends, then starts `children` nodes one level down."""

    spend: int = 0
    children: int = 0
    levels: int = 1
    parallel: bool = False


@workflow.defn
class Node:
    @workflow.run
    async def run(self, tree: Tree) -> dict[str, Any]:
        if tree.spend:
            await workflow.execute_activity(spend, Spend(output_tokens=tree.spend), **_T)
        who = await workflow.execute_activity(whoami, **_T)
        below: list[Any] = []
        if tree.levels > 1:
            child = Tree(spend=tree.spend, children=tree.children, levels=tree.levels - 1)
            if tree.parallel:
                handles = [
                    await workflow.start_child_workflow(
                        Node.run, child, id=f"{workflow.info().workflow_id}.{i}"
                    )
                    for i in range(tree.children)
                ]
                below = list(await asyncio.gather(*handles))
            else:
                for i in range(tree.children):
                    below.append(
                        await workflow.execute_child_workflow(
                            Node.run, child, id=f"{workflow.info().workflow_id}.{i}"
                        )
                    )
        return {"who": who, "below": below}


@workflow.defn
class Sleeper:
    """Starts a child that waits forever, then spends until halted."""

    @workflow.run
    async def run(self, tokens: int) -> None:
        await workflow.start_child_workflow(Waiter.run, id=f"{workflow.info().workflow_id}.waiter")
        while True:
            await workflow.execute_activity(spend, Spend(output_tokens=tokens), **_T)


@workflow.defn
class Waiter:
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


@workflow.defn
class Trivial:
    @workflow.run
    async def run(self, n: int) -> int:
        for _ in range(n):
            await workflow.execute_activity(noop, **_T)
        return n


ALL_WORKFLOWS = [
    Spender,
    RetryingAgent,
    FailingAgent,
    LocalSpender,
    ShapedAgent,
    Node,
    Sleeper,
    Waiter,
    Trivial,
]
ALL_ACTIVITIES = [spend, noop, usage_shaped, flaky, always_fails, whoami]


@dataclass
class Nap:
    seconds: float
    tokens: int = 10


@workflow.defn
class Napper:
    """Spends, sleeps (workflow time), spends again."""

    @workflow.run
    async def run(self, nap: Nap) -> str:
        await workflow.execute_activity(spend, Spend(output_tokens=nap.tokens), **_T)
        await workflow.sleep(nap.seconds)
        await workflow.execute_activity(spend, Spend(output_tokens=nap.tokens), **_T)
        return "awake"


@dataclass
class Chain:
    tokens: int
    runs_left: int


@workflow.defn
class Continuer:
    """Spends then continues as new, `runs_left` times."""

    @workflow.run
    async def run(self, chain: Chain) -> str:
        await workflow.execute_activity(spend, Spend(output_tokens=chain.tokens), **_T)
        if chain.runs_left > 0:
            workflow.continue_as_new(Chain(chain.tokens, chain.runs_left - 1))
        return "done"


@workflow.defn
class Priced:
    @workflow.run
    async def run(self, calls: int) -> int:
        for _ in range(calls):
            await workflow.execute_activity(
                spend, Spend(input_tokens=1000, output_tokens=1000, model="m1"), **_T
            )
        return calls


ALL_WORKFLOWS += [Napper, Continuer, Priced]


@workflow.defn(name="planner")
class ChangedPlanner:
    """The demo's planner after a code change: it searches before planning."""

    @workflow.run
    async def run(self, request: Any) -> Any:
        await workflow.execute_activity("vector-search", "first", **_T)
        return None


# --- added for test_shared_processes ---

SLOW_SPEND_SECONDS = 0.0
"""How long `slow_spend` sleeps after reporting (tests/worker_process.py sets it)."""


@activity.defn(name="slow_spend")
async def slow_spend(tokens: int) -> int:
    """Reports `tokens`, then heartbeats while it sleeps; returns the attempt number."""
    report_usage(output_tokens=tokens)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SLOW_SPEND_SECONDS
    while True:
        activity.heartbeat()
        left = deadline - loop.time()
        if left <= 0:
            return activity.info().attempt
        await asyncio.sleep(min(0.2, left))


@workflow.defn
class SlowSpender:
    """Calls `slow_spend` by name; a dead worker's attempt is retried after 2 s of silence."""

    @workflow.run
    async def run(self, tokens: int) -> int:
        return await workflow.execute_activity(
            "slow_spend",
            tokens,
            result_type=int,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=2),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=100), maximum_attempts=5
            ),
        )
