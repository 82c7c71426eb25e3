"""What governed dispatch no longer pays for (issue #12, item 7), and what it still keeps.

- A reported usage is heartbeated once the attempt goes on after the report (the next
  turn of the event loop), or with the agent's own next heartbeat; an attempt that ends
  in the same step as its report sends no heartbeat (its result or failure carries the
  usage), so the success path of a fan-out costs no extra server round trip.
- A retry still finds the usage of an attempt that reported and then hung until it timed
  out.
- The activity side checks each distinct header once (kept by its bytes).

Workflows here are unsandboxed so they can live in this file.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import yaml
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RetryPolicy

from temporal_governor import Policy
from temporal_governor.activity import current_context, report_usage
from temporal_governor.context import (
    HEADER,
    AllowanceEntry,
    Attribution,
    BudgetContext,
    encode_context,
    read_context,
)
from temporal_governor.errors import ChainLink
from temporal_governor.interceptors._activity import GovernedActivityOutbound, _context_of
from temporal_governor.interceptors._failures import carried_in_payload
from temporal_governor.usage import Usage
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot


class _Recorder:
    """Stands for the SDK's activity outbound: records the heartbeats sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def heartbeat(self, *details: Any) -> None:
        self.sent.append(details)


def _outbound() -> tuple[GovernedActivityOutbound, _Recorder]:
    recorder = _Recorder()
    outbound = GovernedActivityOutbound(recorder)  # type: ignore[arg-type]
    outbound.adopt((), None)
    return outbound, recorder


def _marked_tokens(details: tuple[Any, ...]) -> int:
    """The tokens of the usage marker that ends a heartbeat's details."""
    carried = carried_in_payload(details[-1].payload)
    assert carried is not None and isinstance(carried.data, bytes)
    return Usage.model_validate_json(carried.data).tokens


async def test_a_report_in_the_step_the_attempt_ends_sends_no_heartbeat() -> None:
    outbound, recorder = _outbound()
    outbound.usage_reported(lambda: Usage(output_tokens=5))
    outbound.finished()  # the result carries the usage
    await asyncio.sleep(0.01)
    assert recorder.sent == []


async def test_a_report_the_attempt_goes_on_after_is_heartbeated_once_with_the_latest_sum() -> None:
    outbound, recorder = _outbound()
    spent = [0]

    def so_far() -> Usage:
        return Usage(output_tokens=spent[0])

    for tokens in (3, 4):  # two reports in one step: one heartbeat, of both
        spent[0] += tokens
        outbound.usage_reported(so_far)
    assert recorder.sent == []  # not before the attempt goes on
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(recorder.sent) == 1 and _marked_tokens(recorder.sent[0]) == 7
    outbound.finished()
    await asyncio.sleep(0.01)
    assert len(recorder.sent) == 1


async def test_the_agents_own_heartbeat_carries_a_pending_report() -> None:
    outbound, recorder = _outbound()
    outbound.usage_reported(lambda: Usage(input_tokens=9))
    outbound.heartbeat("page 7")
    await asyncio.sleep(0.01)
    assert len(recorder.sent) == 1, "the agent's heartbeat carried it: no second one"
    assert recorder.sent[0][0] == "page 7" and _marked_tokens(recorder.sent[0]) == 9
    outbound.heartbeat("page 8")  # later heartbeats keep the usage so far
    assert _marked_tokens(recorder.sent[1]) == 9


async def test_an_attempt_that_ends_without_its_outcome_carrying_usage_sends_the_report() -> None:
    outbound, recorder = _outbound()
    outbound.usage_reported(lambda: Usage(output_tokens=11))
    outbound.finished(send_pending=True)  # e.g. cancelled: its cancellation carries none
    assert len(recorder.sent) == 1 and _marked_tokens(recorder.sent[0]) == 11
    await asyncio.sleep(0.01)
    assert len(recorder.sent) == 1


def test_activity_headers_are_checked_once_per_distinct_header(monkeypatch: Any) -> None:
    import temporal_governor.interceptors._activity as activity_side

    parsed: list[bytes] = []
    real = activity_side.read_context

    def counting(data: bytes) -> Any:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(activity_side, "read_context", counting)
    context = BudgetContext(
        attribution=Attribution(tenant=f"t-{uuid.uuid4().hex[:6]}"),
        chain=[ChainLink(workflow_id="w", run_id="r", agent="A")],
    )
    header = encode_context(context)
    first = _context_of({HEADER: header})
    again = _context_of({HEADER: Payload(metadata=header.metadata, data=header.data)})
    assert first == again and parsed == [header.data], "the same bytes: checked once"
    assert first == read_context(header.data)[0] == context
    assert _context_of({}) is None
    bad = Payload(metadata=header.metadata, data=b'{"chain": 5, "attribution": {"tenant": "x"}}')
    assert _context_of({HEADER: bad}) == read_context(bad.data)[0]
    assert _context_of({HEADER: bad}).attribution.tenant == "x"  # type: ignore[union-attr]


# -- a report, then a hang until the attempt times out -------------------------------------


@activity.defn
async def reports_then_hangs(tokens: int) -> int:
    """Attempt 1 reports, then hangs past its timeout (no heartbeat of its own); attempt 2
    reports 2 and returns."""
    if activity.info().attempt == 1:
        report_usage(output_tokens=tokens)
        await asyncio.sleep(30)
    report_usage(output_tokens=2)
    return activity.info().attempt


@workflow.defn(sandboxed=False)
class HangsOnce:
    @workflow.run
    async def run(self, tokens: int) -> int:
        return await workflow.execute_activity(
            reports_then_hangs,
            tokens,
            start_to_close_timeout=timedelta(seconds=2),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )


async def test_a_retry_counts_what_a_timed_out_attempt_reported(governed: Any) -> None:
    data = yaml.safe_load("agents: { HangsOnce: { quotas: { max_tokens_per_task: 100000 } } }")
    data.setdefault("shared", {})["ledger_id"] = f"ledger-{uuid.uuid4().hex[:8]}"
    async with governed(Policy.from_dict(data), [HangsOnce], [reports_then_hangs]) as g:
        handle = await g.start(HangsOnce.run, 40)
        assert await asyncio.wait_for(handle.result(), 60) == 2
        snap = BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))
    assert snap.committed.get("tokens") == 42.0, "attempt 1 reported 40 and was lost"


class NotConvertible:
    """A result no payload converter can encode."""


@activity.defn
async def reports_then_returns_what_cannot_convert(tokens: int) -> Any:
    if activity.info().attempt == 1:
        report_usage(output_tokens=tokens)  # the model call was paid for...
        return NotConvertible()  # ...but the result fails to convert: the attempt fails
    report_usage(output_tokens=2)
    return activity.info().attempt


@workflow.defn(sandboxed=False)
class ResultFailsToConvertOnce:
    @workflow.run
    async def run(self, tokens: int) -> int:
        return await workflow.execute_activity(
            reports_then_returns_what_cannot_convert,
            tokens,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )


async def test_a_result_that_fails_to_convert_keeps_its_attempts_usage(governed: Any) -> None:
    """The usage was to travel with the result; when the result cannot, the failure does."""
    data = yaml.safe_load(
        "agents: { ResultFailsToConvertOnce: { quotas: { max_tokens_per_task: 100000 } } }"
    )
    data.setdefault("shared", {})["ledger_id"] = f"ledger-{uuid.uuid4().hex[:8]}"
    async with governed(
        Policy.from_dict(data),
        [ResultFailsToConvertOnce],
        [reports_then_returns_what_cannot_convert],
    ) as g:
        handle = await g.start(ResultFailsToConvertOnce.run, 40)
        assert await asyncio.wait_for(handle.result(), 60) == 2
        snapshot = BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))
    assert snapshot.committed.get("tokens") == 42.0, snapshot.committed


# -- the checked context is shared by a run's activities; agent code gets its own copy ------


@activity.defn
async def changes_its_context(tag: str) -> dict[str, Any]:
    """Reads the context, changes its lists and dicts, and says what it saw before."""
    context = current_context()
    assert context is not None
    seen = {
        "chain": [link.workflow_id for link in context.chain],
        "allowance": sorted(context.allowance),
        "same_object": current_context() is context,
    }
    context.chain.append(context.chain[-1].model_copy(update={"workflow_id": tag}))
    context.allowance["tokens"] = AllowanceEntry(amount=1.0, limit=tag, scope=tag)
    changed = current_context()
    assert changed is not None
    seen["kept_own_change"] = [link.workflow_id for link in changed.chain][-1] == tag
    return seen


@workflow.defn(sandboxed=False)
class ChangesContexts:
    @workflow.run
    async def run(self, rounds: int) -> list[dict[str, Any]]:
        seen = []
        for n in range(rounds):  # one after another: each sees what the one before left
            seen.append(
                await workflow.execute_activity(
                    changes_its_context,
                    f"changed-{n}",
                    start_to_close_timeout=timedelta(seconds=10),
                )
            )
        return seen


async def test_agent_code_changing_its_context_does_not_change_another_activitys(
    governed: Any,
) -> None:
    """Every activity of a run gets the same checked context from the header cache; the one
    agent code reads is its own copy, which it may change and keeps changed."""
    data = yaml.safe_load("agents: { ChangesContexts: { quotas: { max_tokens_per_task: 1000 } } }")
    data.setdefault("shared", {})["ledger_id"] = f"ledger-{uuid.uuid4().hex[:8]}"
    async with governed(Policy.from_dict(data), [ChangesContexts], [changes_its_context]) as g:
        handle = await g.start(ChangesContexts.run, 3)
        seen = await asyncio.wait_for(handle.result(), 60)
    assert len(seen) == 3
    for each in seen:
        assert each["chain"] == [handle.id], "no earlier activity's change shows"
        assert each["allowance"] == []
        assert each["same_object"] and each["kept_own_change"]
