"""Loop and anomaly detection, throttles, priorities, risk tiers and degradation on a real server."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle

from detect_workflows import (
    DETECT_ACTIVITIES,
    DETECT_WORKFLOWS,
    Burner,
    Calls,
    Chain,
    Chatter,
    Hedger,
    Prioritised,
    Rechainer,
    Recursion,
    ToolAgent,
    Twins,
)
from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.errors import BUDGET_EXCEEDED, RUNAWAY_LOOP, TOOL_DISABLED
from temporal_governor.workflow import BUDGET_QUERY


def agent(name: str, **entry: Any) -> dict[str, Any]:
    return {"agents": {name: entry}}


async def failure_of(handle: WorkflowHandle[Any, Any]) -> tuple[str, BreachDetails]:
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    details = BreachDetails.from_error(failure.value)
    assert details is not None, failure.value.cause
    return failure.value.cause.type, details  # type: ignore[union-attr]


async def history(handle: WorkflowHandle[Any, Any]) -> list[Any]:
    return [e async for e in handle.fetch_history_events()]


def scheduled(events: list[Any]) -> list[Any]:
    return [e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]


def gaps(events: list[Any]) -> list[float]:
    times = [e.event_time.ToDatetime() for e in scheduled(events)]
    return [(b - a).total_seconds() for a, b in itertools.pairwise(times)]


LOOPS = agent(
    "ToolAgent",
    loop_detection={
        "signature_window": 32,
        "max_repeats": 3,
        "max_cycle_repeats": 3,
        "max_consecutive_failures": 3,
        "max_iterations": 40,
    },
)


async def test_denial_of_wallet_a_repeated_tool_call_is_halted_with_evidence(governed) -> None:
    async with governed(Policy.from_dict(LOOPS), DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        handle = await g.start(ToolAgent.run, Calls(calls=[("lookup", "same question")] * 100))
        kind, details = await failure_of(handle)
        assert kind == RUNAWAY_LOOP
        assert details.limit == "loop_detection.repeated_signature"
        assert details.evidence["target"] == "lookup" and details.evidence["signature"]
        assert "lookup" in details.message()
        assert len(scheduled(await history(handle))) == 3  # halted at the 4th identical call


async def test_healthy_agents_of_similar_size_are_not_flagged(governed) -> None:
    async with governed(Policy.from_dict(LOOPS), DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        distinct = [("lookup", f"question {i}") for i in range(35)]
        assert await g.run(ToolAgent.run, Calls(calls=distinct)) == 35
        varied = [
            (tool, f"{tool} {i}")
            for i, tool in enumerate(["lookup", "read_page", "lookup", "lookup", "read_page"] * 7)
        ]
        assert await g.run(ToolAgent.run, Calls(calls=varied)) == 35
        flaky = [("fragile", f"{'fail' if i % 2 == 0 else 'ok'} {i}") for i in range(20)]
        assert await g.run(ToolAgent.run, Calls(calls=flaky, catch=True)) == 10


async def test_a_cycle_of_tool_calls_is_a_loop(governed) -> None:
    async with governed(Policy.from_dict(LOOPS), DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        calls = [(t, f"{t} {i}") for i in range(20) for t in ("lookup", "read_page")]
        kind, details = await failure_of(await g.start(ToolAgent.run, Calls(calls=calls)))
        assert kind == RUNAWAY_LOOP and details.limit == "loop_detection.tool_cycle"
        assert details.evidence["cycle"] == ["lookup", "read_page"]


async def test_failures_in_a_row_and_the_iteration_cap(governed) -> None:
    async with governed(Policy.from_dict(LOOPS), DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        failing = [("fragile", f"fail {i}") for i in range(10)]
        handle = await g.start(ToolAgent.run, Calls(calls=failing, catch=True))
        kind, details = await failure_of(handle)
        assert kind == RUNAWAY_LOOP and details.limit == "loop_detection.consecutive_failures"
        assert details.evidence["count"] == 4  # more than max_consecutive_failures: 3
        assert details.observed == 4 and details.ceiling == 3
        assert len(scheduled(await history(handle))) == 4
        many = [("lookup", f"q{i}") for i in range(60)]
        kind, details = await failure_of(await g.start(ToolAgent.run, Calls(calls=many)))
        assert details.limit == "loop_detection.iterations"


async def test_cycles_in_the_agent_call_graph(governed) -> None:
    policy = Policy.from_dict(
        {
            "agents": {
                "rplanner": {"loop_detection": {"max_agent_visits": 2}},
                "rexecutor": {"loop_detection": {"max_agent_visits": 2}},
            }
        }
    )
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        assert await g.run("rplanner", Recursion(4)) == 4  # planner, executor twice each
        handle = await g.start("rplanner", Recursion(8))
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        details = BreachDetails.from_error(failure.value)
        assert details is not None and details.limit == "loop_detection.agent_cycle"
        assert details.evidence["agent"] == "rplanner"
        assert details.evidence["cycle"] == [
            "rplanner",
            "rexecutor",
            "rplanner",
            "rexecutor",
            "rplanner",
        ]


async def test_token_bucket_spaces_dispatches_in_workflow_time(governed) -> None:
    policy = Policy.from_dict(agent("ToolAgent", throttle={"rate_per_sec": 5, "burst": 2}))
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        handle = await g.start(ToolAgent.run, Calls(calls=[("lookup", f"q{i}") for i in range(8)]))
        assert await handle.result() == 8  # throttled dispatches wait, none is dropped
        spacing = gaps(await history(handle))
        # the burst of 2 goes at once (each waits only for its predecessor to finish) ...
        assert waits_before(await history(handle))[:2] == [0, 0]
        # ... then at most rate_per_sec: 6 more dispatches take at least 6 / 5 s. (Timers
        # on the dev server fire late, never early, so waits come out longer, not shorter.)
        assert sum(spacing[1:]) >= (8 - 2) / 5 - 0.05, spacing
        events = (await handle.query(BUDGET_QUERY))["recent_events"]
        assert any(e["kind"] == "throttle" for e in events)


async def test_tool_throttle_applies_to_that_tool_only(governed) -> None:
    policy = Policy.from_dict(
        {"tools": {"read_page": {"throttle": {"rate_per_sec": 4, "burst": 1}}}}
    )
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        fast = await g.start(ToolAgent.run, Calls(calls=[("lookup", f"q{i}") for i in range(5)]))
        slow = await g.start(ToolAgent.run, Calls(calls=[("read_page", f"u{i}") for i in range(5)]))
        await fast.result()
        await slow.result()
        # the throttle waits with workflow timers: none for the other tool (a wall-clock
        # bound on its gaps failed on a loaded machine), and the throttled tool's calls are
        # spread at least as far apart as its rate says
        fast_events, slow_events = await history(fast), await history(slow)
        assert timers(fast_events) == 0 and len(scheduled(fast_events)) == 5
        assert timers(slow_events) >= 1  # (calls that found a refilled bucket need none)
        assert sum(gaps(slow_events)) >= (5 - 1) / 4 - 0.05


def timers(events: list[Any]) -> int:
    return sum(1 for e in events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED)


def waits_before(events: list[Any]) -> list[int]:
    """For each scheduled activity, the timers started since the one before it."""
    waits, started = [], 0
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            started += 1
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            waits.append(started)
            started = 0
    return waits


async def test_priority_classes_reach_the_dispatched_tasks(governed) -> None:
    policy = Policy.from_dict(
        {
            "agents": {
                "Prioritised": {"priority": {"default_class": "low"}},
            },
            "tools": {"pay": {"priority_class": "critical"}},
        }
    )
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        with attribution(tenant="acme"):
            handle = await g.start(Prioritised.run)
        await handle.result()
        events = await history(handle)
        tasks = {
            e.activity_task_scheduled_event_attributes.activity_type.name: (
                e.activity_task_scheduled_event_attributes.priority
            )
            for e in scheduled(events)
        }
        assert tasks["lookup"].priority_key == 4 and tasks["pay"].priority_key == 1
        assert tasks["lookup"].fairness_key == "acme"
        [child] = [
            e.start_child_workflow_execution_initiated_event_attributes.priority
            for e in events
            if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
        ]
        assert child.priority_key == 4 and child.fairness_key == "acme"


def ledger_policy(data: dict[str, Any]) -> Policy:
    return Policy.from_dict({**data, "shared": {"ledger_id": f"ledger-{uuid.uuid4().hex[:8]}"}})


@pytest.mark.parametrize("action", ["terminate", "alert"])
async def test_a_run_spending_ten_times_its_baseline_is_caught(governed, action: str) -> None:
    policy = ledger_policy(
        agent("Burner", anomaly={"factor": 5, "min_samples": 3, "action": action})
    )
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        for _ in range(4):  # learn: about 100 tokens a run
            assert await g.run(Burner.run, [50, 50]) == 100
        handle = await g.start(Burner.run, [100] * 10)
        if action == "terminate":
            kind, details = await failure_of(handle)
            assert kind == BUDGET_EXCEEDED and details.limit == "anomaly"
            assert details.evidence["value"] > 5 * details.evidence["mean"]
            assert len(scheduled(await history(handle))) < 10  # halted before the end
        else:
            assert await handle.result() == 1000
            events = (await handle.query(BUDGET_QUERY))["recent_events"]
            [anomaly] = [e for e in events if e["kind"] == "anomaly"]
            assert anomaly["observed"] > 5 * anomaly["ceiling"]
        # a normal run of the same agent is not flagged
        normal = await g.start(Burner.run, [60, 60])
        assert await normal.result() == 120
        events = (await normal.query(BUDGET_QUERY))["recent_events"]
        assert not [e for e in events if e["kind"] == "anomaly"]


async def test_predictive_throttle_slows_a_run_before_it_breaches(governed) -> None:
    data = agent(
        "Burner",
        quotas={"max_tokens_per_task": 1000},
        anomaly={"factor": 100, "predictive": {"expected_duration": "10s", "max_delay": "2s"}},
    )
    async with governed(ledger_policy(data), DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        handle = await g.start(Burner.run, [200, 200, 200])
        assert await handle.result() == 600  # no breach
        slowed = gaps(await history(handle))
        # 20% spent after a fraction of a second of a 10 s run: the next dispatch waits
        assert min(slowed) >= 1.0, slowed
    plain = agent("Burner", quotas={"max_tokens_per_task": 1000})
    async with governed(Policy.from_dict(plain), DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        handle = await g.start(Burner.run, [200, 200, 200])
        await handle.result()
        assert timers(await history(handle)) == 0  # no prediction, no wait


async def test_degrade_rules_change_the_model_the_activity_sees(governed) -> None:
    data = agent(
        "Chatter",
        quotas={"max_tokens_per_task": 1000},
        degrade=[
            {
                "when_remaining_below": 0.5,
                "model_map": {"big-model": "small-model"},
                "max_tokens": 64,
                "disable_tools": ["web_search"],
            }
        ],
    )
    policy = Policy.from_dict({**data, "tools": {"chat": {"estimate": {"tokens": 0}}}})
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        result = await g.run(Chatter.run, "big-model")
        first, _, third, fourth = result["answers"]
        assert first == {"model": "big-model", "max_tokens": 500, "decision": None}
        assert third["model"] == "big-model"  # 400 of 1000 spent: 60% left
        assert fourth["model"] == "small-model" and fourth["max_tokens"] == 64
        assert fourth["decision"]["model_map"] == {"big-model": "small-model"}
        assert "40% of the run's budget remains" in fourth["decision"]["reason"]
        assert result["search"] == TOOL_DISABLED


RISKY = {
    "agents": {
        "ToolAgent": {
            "loop_detection": {"signature_window": 10, "max_repeats": 2, "action": "alert"}
        }
    },
    "tools": {"pay": {"risk_tier": "payment"}, "lookup": {"risk_tier": "read"}},
    "risk_tiers": {
        "payment": {"max_calls_per_task": 3, "loop_action": "terminate"},
        "read": {},
    },
}


async def test_risk_tiers_set_stricter_limits_and_immediate_halts(governed) -> None:
    async with governed(Policy.from_dict(RISKY), DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        # a repeated read only alerts (the agent's action) ...
        assert await g.run(ToolAgent.run, Calls(calls=[("lookup", "same")] * 5)) == 5
        # ... a repeated payment halts at once (the tier's loop_action)
        kind, details = await failure_of(
            await g.start(ToolAgent.run, Calls(calls=[("pay", 5)] * 5))
        )
        assert kind == RUNAWAY_LOOP and details.evidence["target"] == "pay"
        # at most three payments a run, whatever their arguments
        kind, details = await failure_of(
            await g.start(ToolAgent.run, Calls(calls=[("pay", i) for i in range(5)]))
        )
        assert kind == BUDGET_EXCEEDED
        assert details.limit == "risk_tiers.payment.max_calls_per_task"
        assert details.ceiling == 3


async def test_continue_as_new_does_not_reset_the_loop_detector(governed) -> None:
    policy = Policy.from_dict(agent("Rechainer", loop_detection={"max_iterations": 5}))
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        assert await g.run(Rechainer.run, Chain(runs_left=1, per_run=5)) == 5
        handle = await g.start(Rechainer.run, Chain(runs_left=3, per_run=3))
        kind, details = await failure_of(handle)
        assert kind == RUNAWAY_LOOP and details.limit == "loop_detection.iterations"
        assert details.evidence["iterations"] == 6  # the third dispatch of the second run
        assert details.observed == 6 and details.ceiling == 5


async def test_a_call_repeated_down_a_chain_of_sub_agents_is_a_loop(governed) -> None:
    guards = {"loop_detection": {"signature_window": 32, "max_repeats": 3}}
    policy = Policy.from_dict({"agents": {"rplanner": guards, "rexecutor": guards}})
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        # each run makes the call once: three levels stay within max_repeats ...
        assert await g.run("rplanner", Recursion(3, query="same question")) == 3
        # ... a deeper chain repeats it a fourth time: only the tree can see that
        handle = await g.start("rplanner", Recursion(10, query="same question"))
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        details = BreachDetails.from_error(failure.value)
        assert details is not None and details.limit == "loop_detection.repeated_signature"
        assert len(details.chain) == 4  # the fourth level made the fourth identical call


async def test_a_failed_start_of_a_duplicate_child_keeps_the_running_twins_budget(
    governed,
) -> None:
    async with governed(Policy.from_dict({}), DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        handle = await g.start(Twins.run)
        assert await handle.result() != "started"
        budget = await handle.query(BUDGET_QUERY)
        assert budget["committed"]["tokens"] == 30  # the running twin's spend was committed
        assert budget["reserved"] == {}


async def test_cancelled_hedged_calls_are_not_failures(governed) -> None:
    policy = Policy.from_dict(agent("Hedger", loop_detection={"max_consecutive_failures": 3}))
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        assert await g.run(Hedger.run, 2) == 2  # 8 cancels, no failure


async def test_risk_tier_counters_survive_continue_as_new(governed) -> None:
    policy = Policy.from_dict(
        {
            "tools": {"lookup": {"risk_tier": "read"}},
            "risk_tiers": {"read": {"max_calls_per_task": 4}},
        }
    )
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        _kind, details = await failure_of(
            await g.start(Rechainer.run, Chain(runs_left=3, per_run=2))
        )
        assert details.limit == "risk_tiers.read.max_calls_per_task"
        assert details.observed == 5


async def test_a_zero_ceiling_does_not_break_the_predictive_throttle(governed) -> None:
    data = agent(
        "Burner",
        quotas={"max_cost_usd_per_task": 0},
        anomaly={"factor": 100, "predictive": {"expected_duration": "10s"}},
    )
    async with governed(ledger_policy(data), DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        handle = await g.start(Burner.run, [10, 10])
        assert await asyncio.wait_for(handle.result(), timeout=20) == 20


async def test_an_anomaly_halt_still_charges_the_tenant_for_the_dispatch_that_tripped_it(
    governed,
) -> None:
    data = {
        **agent("Burner", anomaly={"factor": 5, "min_samples": 3, "action": "terminate"}),
        "tenants": {"default": {"quotas": {"max_tokens": 1_000_000}}},
    }
    policy = ledger_policy(data)
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        for _ in range(3):
            assert await g.run(Burner.run, [100]) == 100
        await failure_of(await g.start(Burner.run, [5000, 5000]))
        ledger = g.client.get_workflow_handle(policy.shared.ledger_id)
        state = await ledger.query("state", "tenant:default")
        [tokens] = [c for c in state["counters"] if c["resource"] == "tokens"]
        assert tokens["committed"] == 300 + 5000
