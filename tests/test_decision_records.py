"""Decision records: typed payloads over an unchanged wire form, and a cheap record path.

Budget, control and detector decisions share one flat record (its JSON is what reports
and evidence bundles hold); ``record.payload`` names each one's fields. The record path
reads the clock once per activation, builds no span when telemetry goes nowhere, and
computes the remaining budget only for sinks that take it.
"""

from __future__ import annotations

import typing
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from conftest import RECORDED, Recorded
from temporal_governor import Policy
from temporal_governor.core.accounting import EventKind
from temporal_governor.core.decisions import (
    CATEGORY_OF_KIND,
    BudgetPayload,
    ControlPayload,
    DecisionRecord,
    DetectorPayload,
    RemainingMode,
    takes_remaining,
)
from temporal_governor.interceptors import GovernanceInterceptor
from temporal_governor.telemetry import OpenTelemetrySink
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS, Spender, Steps

T0 = datetime(2025, 1, 1, tzinfo=UTC)

WIRE_FIELDS = [
    "seq",
    "kind",
    "event_id",
    "time",
    "workflow_id",
    "run_id",
    "agent",
    "depth",
    "tenant",
    "owner",
    "dispatch",
    "target",
    "key",
    "amounts",
    "models",
    "limit",
    "scope",
    "observed",
    "ceiling",
]
"""The record's JSON fields, version 1: what reports and evidence bundles hold."""


def record(kind: str, seq: int = 1, **fields: Any) -> DecisionRecord:
    base: dict[str, Any] = {
        "seq": seq,
        "kind": kind,
        "event_id": 3 * seq,
        "time": T0 + timedelta(seconds=seq),
        "workflow_id": "wf-1",
        "run_id": "run-1",
        "agent": "planner",
        "depth": 0,
        "tenant": "acme",
    }
    return DecisionRecord(**{**base, **fields})


# -- the typed view ---------------------------------------------------------------------------


def test_every_kind_has_a_category() -> None:
    assert set(CATEGORY_OF_KIND) == set(typing.get_args(EventKind))


def test_a_control_record_names_its_signal_issuer_and_outcome() -> None:
    rejected = record(
        "control_rejected", key="governor.resume", limit="mallory", scope="unsigned resume"
    )
    assert rejected.category == "control"
    assert rejected.payload == ControlPayload(
        signal="governor.resume", accepted=False, issuer="mallory", outcome="unsigned resume"
    )
    accepted = record("control", key="governor.kill", limit="ops", scope="paused")
    assert isinstance(accepted.payload, ControlPayload) and accepted.payload.accepted


def test_a_detector_record_names_its_detector_message_and_threshold() -> None:
    loop = record(
        "loop",
        key="activity:4:lookup",
        limit="repeated_signature",
        scope="lookup called 3 times with the same arguments",
        observed=3,
        ceiling=2,
    )
    assert loop.category == "detector"
    assert loop.payload == DetectorPayload(
        detector="repeated_signature",
        message="lookup called 3 times with the same arguments",
        observed=3.0,
        threshold=2.0,
    )


def test_a_budget_record_keeps_its_own_names() -> None:
    refused = record(
        "refuse",
        amounts={"tokens": 100.0},
        limit="max_tokens_per_task",
        scope="run planner/wf-1",
        observed=1100,
        ceiling=1000,
    )
    assert refused.category == "budget"
    assert refused.payload == BudgetPayload(
        amounts={"tokens": 100.0},
        limit="max_tokens_per_task",
        scope="run planner/wf-1",
        observed=1100.0,
        ceiling=1000.0,
    )


def test_the_wire_form_is_unchanged_and_old_records_read_back_the_same() -> None:
    old = {
        "seq": 7,
        "kind": "control_rejected",
        "event_id": 12,
        "time": "2025-01-01T00:00:07Z",
        "workflow_id": "wf-1",
        "run_id": "run-1",
        "agent": "planner",
        "depth": 0,
        "tenant": "acme",
        "owner": None,
        "dispatch": "",
        "target": "",
        "key": "governor.resume",
        "amounts": {},
        "models": {},
        "limit": "mallory",
        "scope": "unsigned resume",
        "observed": 0.0,
        "ceiling": 0.0,
    }
    parsed = DecisionRecord.model_validate(old)
    dumped = parsed.model_dump(mode="json")
    assert list(dumped) == WIRE_FIELDS  # no payload or category on the wire
    assert dumped == old
    assert isinstance(parsed.payload, ControlPayload) and parsed.payload.issuer == "mallory"


@pytest.mark.parametrize(
    ("attribute", "mode"),
    [(None, "always"), ("always", "always"), ("live", "live"), ("never", "never"), (3, "always")],
)
def test_a_sink_says_when_it_takes_the_remaining_budget(
    attribute: object, mode: RemainingMode
) -> None:
    sink = Sink("x")
    if attribute is not None:
        sink.takes_remaining = attribute  # type: ignore[assignment]
    else:
        del sink.takes_remaining
    assert takes_remaining(sink) == mode


# -- telemetry that goes nowhere --------------------------------------------------------------


def _refuse_to_build(sink: OpenTelemetrySink, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    built: list[str] = []
    for name in ("_dispatch_span", "_event_span", "_count"):
        monkeypatch.setattr(sink, name, lambda *a, _name=name: built.append(_name))
    return built


def test_the_sink_builds_nothing_when_its_providers_are_no_ops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = OpenTelemetrySink(NoOpTracerProvider(), NoOpMeterProvider())
    built = _refuse_to_build(sink, monkeypatch)
    for r in (
        record("reserve", 1, key="activity:1:x", dispatch="activity", target="x"),
        record("commit", 2, key="activity:1:x", dispatch="activity", amounts={"tokens": 5.0}),
        record("breach", 3, key="activity:2:x", limit="max", scope="run x"),
    ):
        sink.record(r, replaying=False)
    sink.remaining(record("commit", 2), {"tokens": 1.0}, replaying=False)
    assert built == []
    assert not sink._pending and not sink._settled and not sink._remaining


def test_spans_are_built_when_only_the_meter_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = OpenTelemetrySink(tracer_provider, NoOpMeterProvider())
    counted: list[DecisionRecord] = []
    monkeypatch.setattr(sink, "_count", counted.append)
    key = "activity:1:call_llm"
    sink.record(
        record("reserve", 1, key=key, dispatch="activity", target="call_llm"), replaying=False
    )
    commit = record("commit", 2, key=key, dispatch="activity", target="call_llm")
    sink.record(commit, replaying=False)
    rejected = record("control_rejected", 3, key="governor.resume", limit="mallory", scope="no")
    sink.record(rejected, replaying=False)
    names = sorted(span.name for span in exporter.get_finished_spans())
    assert names == ["governance.control_rejected", "governor.dispatch call_llm"]
    assert counted == []  # metrics go nowhere: nothing counted
    [event_span] = [s for s in exporter.get_finished_spans() if s.name.startswith("governance")]
    details = dict(event_span.events[0].attributes or {})
    # the named attributes, and the old ones still there for existing dashboards
    assert details["category"] == "control"
    assert (details["issuer"], details["outcome"], details["accepted"]) == ("mallory", "no", False)
    assert (details["limit_name"], details["scope"]) == ("mallory", "no")


# -- the record path in a run -------------------------------------------------------------------


class Sink:
    """Keeps what it is given; says when it takes the remaining budget."""

    def __init__(self, mode: str) -> None:
        self.takes_remaining = mode
        self.records: list[tuple[DecisionRecord, bool]] = []
        self.remainders: list[tuple[str, dict[str, float], bool]] = []

    def record(self, decision: DecisionRecord, *, replaying: bool) -> None:
        self.records.append((decision, replaying))

    def remaining(
        self, decision: DecisionRecord, remaining: dict[str, float], *, replaying: bool
    ) -> None:
        self.remainders.append((decision.kind, remaining, replaying))


POLICY = """
agents: { Spender: { quotas: { max_tokens_per_task: 1000, max_cost_usd_per_task: 5 } } }
tools: { spend: { estimate: { tokens: 100 } } }
"""


async def test_records_are_the_same_live_and_in_replay_and_remaining_goes_where_taken(
    env: WorkflowEnvironment,
) -> None:
    policy = Policy.from_yaml(POLICY)
    always, live, never = Sink("always"), Sink("live"), Sink("never")
    client = Client(
        env.client.service_client,
        namespace=env.client.namespace,
        interceptors=[GovernanceInterceptor(policy, sinks=[always, live, never])],
    )
    task_queue = f"tq-records-{uuid.uuid4()}"
    RECORDED.append(Recorded(task_queue, policy, ALL_WORKFLOWS))
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("temporal_governor")
    )
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=ALL_WORKFLOWS,
        activities=ALL_ACTIVITIES,
        workflow_runner=runner,
    ):
        handle = await client.start_workflow(
            Spender.run,
            Steps(tokens=[40, 60, 80]),
            id=f"records-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        assert await handle.result() == 3
    live_records = [r for r, replaying in always.records if not replaying]
    assert [r.kind for r in live_records].count("commit") == 3
    # one remaining per commit, to the sinks that take it live, resources with a limit only
    commits = [(kind, left) for kind, left, replaying in always.remainders if not replaying]
    assert [kind for kind, _ in commits] == ["commit"] * 3
    assert commits[-1][1] == {"tokens": 1000.0 - 180.0, "cost_usd": 5.0}
    assert [(k, left) for k, left, _ in live.remainders] == commits
    assert never.remainders == []
    assert [r for r, _ in never.records] == [r for r, _ in always.records]

    # replayed: the same records (time and event id read once per activation); only the
    # sink that takes the remaining budget in replay gets it
    replayed_always, replayed_live = Sink("always"), Sink("live")
    replayer = Replayer(
        workflows=ALL_WORKFLOWS,
        interceptors=[GovernanceInterceptor(policy, sinks=[replayed_always, replayed_live])],
        workflow_runner=runner,
    )
    await replayer.replay_workflow(await handle.fetch_history())
    replayed = [r for r, replaying in replayed_always.records]
    assert [r.model_dump() for r in replayed] == [r.model_dump() for r in live_records]
    assert len({(r.event_id, r.time) for r in replayed}) > 1  # stamped per activation
    assert [kind for kind, _, replaying in replayed_always.remainders if replaying] == [
        "commit"
    ] * 3
    assert replayed_live.remainders == []
