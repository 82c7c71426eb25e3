"""Decision records name the dispatch they concern: kind, target and the dispatch's key.

Loop, throttle and risk-tier decisions are made before a dispatch is reserved; they used
to carry the dispatch's label (``activity lookup``) as their key and no kind or target,
so a report could not tell which dispatch they were about.
"""

from __future__ import annotations

import re
from typing import Any

from temporalio.client import WorkflowFailureError

from detect_workflows import DETECT_ACTIVITIES, DETECT_WORKFLOWS, Calls, Recursion, ToolAgent
from temporal_governor import Policy
from temporal_governor.core.decisions import DecisionRecord
from temporal_governor.review import review

ACTIVITY_KEY = re.compile(r"activity:(\d+):(\w+)")


async def decisions_of(g: Any, policy: Policy, workflow_id: str) -> list[DecisionRecord]:
    report = await review(workflow_id, policy=policy, workflows=DETECT_WORKFLOWS, client=g.client)
    assert report.nondeterminism == []
    return list(report.decisions)


def assert_names_its_activity(record: DecisionRecord, reserved: dict[str, str]) -> None:
    """The record names an activity dispatch by kind, target and the key it reserved with."""
    match = ACTIVITY_KEY.fullmatch(record.key)
    assert match is not None, record
    assert (record.dispatch, record.target) == ("activity", match.group(2)), record
    if record.key in reserved:  # a dispatch that went on: its reservation has the same key
        assert reserved[record.key] == record.target


def reservations(records: list[DecisionRecord]) -> dict[str, str]:
    return {r.key: r.target for r in records if r.kind == "reserve"}


async def test_loop_and_throttle_records_name_their_dispatch(governed) -> None:
    policy = Policy.from_dict(
        {
            "agents": {
                "ToolAgent": {
                    "loop_detection": {"signature_window": 10, "max_repeats": 2, "action": "alert"},
                    "throttle": {"rate_per_sec": 4, "burst": 1},
                }
            }
        }
    )
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        handle = await g.start(ToolAgent.run, Calls(calls=[("lookup", "same")] * 4))
        assert await handle.result() == 4
        records = await decisions_of(g, policy, handle.id)
    reserved = reservations(records)
    loops = [r for r in records if r.kind == "loop"]
    throttles = [r for r in records if r.kind == "throttle"]
    assert loops and throttles
    for record in loops + throttles:
        assert_names_its_activity(record, reserved)
        assert record.key in reserved  # these dispatches were not refused: they went on
    # the loop alert is about the third identical call (max_repeats: 2), not any other
    assert [int(ACTIVITY_KEY.fullmatch(r.key).group(1)) for r in loops] == [3]  # type: ignore[union-attr]


async def test_a_risk_tier_refusal_is_recorded_against_the_refused_dispatch(governed) -> None:
    policy = Policy.from_dict(
        {
            "tools": {"pay": {"risk_tier": "payment"}},
            "risk_tiers": {"payment": {"max_calls_per_task": 2}},
        }
    )
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        handle = await g.start(ToolAgent.run, Calls(calls=[("lookup", "q"), *[("pay", 1)] * 3]))
        try:
            await handle.result()
            raise AssertionError("the third payment should have halted the run")
        except WorkflowFailureError:
            pass
        records = await decisions_of(g, policy, handle.id)
    [breach] = [r for r in records if r.kind == "breach"]
    assert breach.limit == "risk_tiers.payment.max_calls_per_task"
    assert_names_its_activity(breach, reservations(records))
    assert breach.key == "activity:4:pay"  # the fourth dispatch of the run, never reserved
    assert breach.key not in reservations(records)


async def test_a_child_loop_record_names_the_child_dispatch(governed) -> None:
    policy = Policy.from_dict(
        {
            "agents": {
                name: {"loop_detection": {"max_agent_visits": 2, "action": "alert"}}
                for name in ("rplanner", "rexecutor")
            }
        }
    )
    async with governed(policy, DETECT_WORKFLOWS, DETECT_ACTIVITIES) as g:
        handle = await g.start("rplanner", Recursion(6))
        assert await handle.result() == 6
        records = await decisions_of(g, policy, handle.id)
    loops = [r for r in records if r.kind == "loop"]
    assert loops
    for record in loops:
        assert record.dispatch == "child", record
        assert record.target in ("rplanner", "rexecutor"), record
        assert record.key.startswith("child:"), record
        # the key is the child's reservation key: its carve is recorded under it
        assert any(
            r.kind == "reserve" and r.key == record.key and r.run_id == record.run_id
            for r in records
        ), record
