"""Workflows and activities of the detector, throttle, priority and degradation tests."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.exceptions import ActivityError, ApplicationError

import temporal_governor.workflow
from temporal_governor.activity import current_degradation, report_usage

_T = {"start_to_close_timeout": timedelta(seconds=20)}


@activity.defn
async def lookup(query: str) -> str:
    report_usage(output_tokens=10)
    return f"result for {query}"


@activity.defn
async def read_page(url: str) -> str:
    report_usage(output_tokens=10)
    return f"page {url}"


@activity.defn
async def pay(amount: int) -> str:
    report_usage(cost_usd=0.01)
    return f"paid {amount}"


@activity.defn
async def fragile(what: str) -> str:
    """Fails when asked to (``fail ...``), succeeds otherwise."""
    if what.startswith("fail"):
        raise ApplicationError("tool broke", type="Broken", non_retryable=True)
    return "fine"


@activity.defn
async def burn(tokens: int) -> int:
    report_usage(output_tokens=tokens)
    return tokens


@activity.defn
async def chat(request: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style call: echoes what it was asked to use and what the governor decided."""
    report_usage(output_tokens=200, model=request["model"])
    decision = current_degradation()
    return {
        "model": request["model"],
        "max_tokens": request.get("max_tokens"),
        "decision": decision.model_dump(mode="json") if decision else None,
    }


@activity.defn
async def web_search(query: str) -> str:
    return f"searched {query}"


@activity.defn
async def slow_lookup(seconds: float) -> float:
    """Takes `seconds` (heartbeating, so a cancel stops it)."""
    end = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < end:
        activity.heartbeat()
        await asyncio.sleep(0.05)
    report_usage(output_tokens=1)
    return seconds


@dataclass
class Calls:
    """A script of tool calls: (activity name, argument) pairs, run one after the other."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    catch: bool = False
    """Catch failed calls and go on (an agent that keeps retrying)."""


_TOOLS = {
    "lookup": lookup,
    "read_page": read_page,
    "pay": pay,
    "fragile": fragile,
    "burn": burn,
    "web_search": web_search,
}


@workflow.defn
class ToolAgent:
    """Runs its script of tool calls; returns how many succeeded."""

    @workflow.run
    async def run(self, script: Calls) -> int:
        done = 0
        for name, argument in script.calls:
            try:
                await workflow.execute_activity(_TOOLS[name], argument, **_T)
                done += 1
            except ActivityError:
                if not script.catch:
                    raise
        return done


@dataclass
class Recursion:
    levels: int
    query: str | None = None
    """Each level first looks this up (the same call at every level, if set)."""


@workflow.defn(name="rplanner")
class RecursivePlanner:
    """planner -> executor -> planner -> ... until `levels` runs deep."""

    @workflow.run
    async def run(self, r: Recursion) -> int:
        if r.query is not None:
            await workflow.execute_activity(lookup, r.query, **_T)
        if r.levels <= 1:
            return 1
        below: int = await workflow.execute_child_workflow(
            "rexecutor", Recursion(r.levels - 1, r.query), id=f"{workflow.info().workflow_id}.x"
        )
        return below + 1


@workflow.defn(name="rexecutor")
class RecursiveExecutor:
    @workflow.run
    async def run(self, r: Recursion) -> int:
        if r.query is not None:
            await workflow.execute_activity(lookup, r.query, **_T)
        if r.levels <= 1:
            return 1
        below: int = await workflow.execute_child_workflow(
            "rplanner", Recursion(r.levels - 1, r.query), id=f"{workflow.info().workflow_id}.p"
        )
        return below + 1


@workflow.defn
class Chatter:
    """Asks `chat` for `model` four times, then tries the optional web_search tool."""

    @workflow.run
    async def run(self, model: str) -> dict[str, Any]:
        answers = []
        for _ in range(4):
            request = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            request["max_tokens"] = 500
            answers.append(await workflow.execute_activity(chat, request, **_T))
        try:
            await workflow.execute_activity(web_search, "news", **_T)
            searched = "ran"
        except ApplicationError as error:
            searched = error.type or ""
        except ActivityError as error:
            searched = f"activity error {error.cause}"
        return {"answers": answers, "search": searched}


@workflow.defn
class Prioritised:
    """One lookup, one pay, one child ToolAgent."""

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(lookup, "q", **_T)
        await workflow.execute_activity(pay, 1, **_T)
        await workflow.execute_child_workflow(
            ToolAgent.run, Calls(calls=[("lookup", "x")]), id=f"{workflow.info().workflow_id}.c"
        )


@workflow.defn
class Burner:
    """Burns `tokens` per step for `steps` steps."""

    @workflow.run
    async def run(self, plan: list[int]) -> int:
        total = 0
        for tokens in plan:
            with temporal_governor.workflow.estimate(tokens=0):
                total += await workflow.execute_activity(burn, tokens, **_T)
        return total


@dataclass
class Chain:
    runs_left: int
    per_run: int
    done: int = 0


@workflow.defn
class Rechainer:
    """`per_run` distinct lookups, then continue as new, `runs_left` times."""

    @workflow.run
    async def run(self, chain: Chain) -> int:
        for i in range(chain.per_run):
            await workflow.execute_activity(lookup, f"q{chain.done + i}", **_T)
        if chain.runs_left <= 1:
            return chain.done + chain.per_run
        workflow.continue_as_new(
            Chain(chain.runs_left - 1, chain.per_run, chain.done + chain.per_run)
        )


@workflow.defn
class Twins:
    """Starts a child, then tries to start another with the same id (which must fail)."""

    @workflow.run
    async def run(self) -> str:
        child_id = f"{workflow.info().workflow_id}.twin"
        calls = Calls(calls=[("lookup", f"q{i}") for i in range(3)])
        first = await workflow.start_child_workflow(ToolAgent.run, calls, id=child_id)
        try:
            await workflow.start_child_workflow(ToolAgent.run, calls, id=child_id)
            second = "started"
        except Exception as error:
            second = type(error).__name__
        await first
        return second


@workflow.defn
class Hedger:
    """Asks five replicas at once, keeps the first answer and cancels the rest, `rounds` times."""

    @workflow.run
    async def run(self, rounds: int) -> int:
        kept = 0
        opts = {
            "start_to_close_timeout": timedelta(seconds=30),
            "heartbeat_timeout": timedelta(seconds=2),
        }
        for _ in range(rounds):
            handles = [
                workflow.start_activity(slow_lookup, 0.1 if i == 0 else 5.0 + i, **opts)
                for i in range(5)
            ]
            done, pending = await workflow.wait(handles, return_when=asyncio.FIRST_COMPLETED)
            for handle in pending:
                handle.cancel()
            for handle in pending:
                with contextlib.suppress(ActivityError):
                    await handle
            kept += len(done)
        return kept


DETECT_WORKFLOWS = [
    Hedger,
    Twins,
    Rechainer,
    ToolAgent,
    RecursivePlanner,
    RecursiveExecutor,
    Chatter,
    Prioritised,
    Burner,
]
DETECT_ACTIVITIES = [lookup, read_page, pay, fragile, burn, chat, web_search, slow_lookup]
