"""OpenTelemetry spans, events and metrics of governance decisions, on a real dev server."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from conftest import RECORDED, Recorded
from temporal_governor import Policy, attribution
from temporal_governor.core.decisions import DecisionRecord, DecisionSink
from temporal_governor.interceptors import GovernanceInterceptor
from temporal_governor.telemetry import OpenTelemetrySink
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS, Priced, Spender, Steps

SPENDER_1000 = """
agents: { Spender: { quotas: { max_tokens_per_task: 1000 } } }
tools: { spend: { estimate: { tokens: 100 } } }
"""

# -- harness ------------------------------------------------------------------------------


@dataclass
class Telemetry:
    """A sink wired to in-memory exporters of its own providers (not the global ones)."""

    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)

    def __post_init__(self) -> None:
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.sink = OpenTelemetrySink(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def spans(self, prefix: str = "", workflow_id: str | None = None) -> list[ReadableSpan]:
        found = [
            s
            for s in self.exporter.get_finished_spans()
            if s.name.startswith(prefix)
            and (
                workflow_id is None
                or (s.attributes or {}).get("governor.workflow_id") == workflow_id
            )
        ]
        return sorted(found, key=lambda s: (s.start_time or 0, s.end_time or 0))

    def dispatches(self, workflow_id: str | None = None) -> list[ReadableSpan]:
        return self.spans("governor.dispatch ", workflow_id)

    def events(self, kind: str, workflow_id: str | None = None) -> list[ReadableSpan]:
        return self.spans(f"governance.{kind}", workflow_id)

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def sums(self, name: str, *keys: str) -> dict[tuple[Any, ...], float]:
        """Counter values by the given attributes."""
        out: dict[tuple[Any, ...], float] = {}
        for point in self.points(name):
            key = tuple(point.attributes.get(k) for k in keys)
            out[key] = out.get(key, 0.0) + point.value
        return out

    def total(self, name: str) -> float:
        return sum(point.value for point in self.points(name))


class Tally:
    """A sink that only counts what it is given, live and in replay."""

    def __init__(self) -> None:
        self.live = 0
        self.replayed = 0

    def record(self, decision: DecisionRecord, *, replaying: bool) -> None:
        if replaying:
            self.replayed += 1
        else:
            self.live += 1

    def remaining(
        self, decision: DecisionRecord, remaining: dict[str, float], *, replaying: bool
    ) -> None:
        return None


@dataclass
class Running:
    client: Client
    task_queue: str

    async def start(
        self, steps: Steps | int, workflow: Any = Spender.run
    ) -> WorkflowHandle[Any, Any]:
        return await self.client.start_workflow(
            workflow, steps, id=f"otel-{uuid.uuid4()}", task_queue=self.task_queue
        )


@asynccontextmanager
async def governed_with(
    env: WorkflowEnvironment,
    policy: Policy,
    sinks: Sequence[DecisionSink],
    *,
    interceptors: Sequence[Any] = (),
    max_cached_workflows: int | None = None,
) -> AsyncIterator[Running]:
    """A worker assembled by hand with the governor's interceptor and the given sinks."""
    client = Client(
        env.client.service_client,
        namespace=env.client.namespace,
        interceptors=[*interceptors, GovernanceInterceptor(policy, sinks=sinks)],
    )
    runner = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("temporal_governor")
    )
    task_queue = f"tq-otel-{uuid.uuid4()}"
    RECORDED.append(Recorded(task_queue, policy, ALL_WORKFLOWS))
    options: dict[str, Any] = {}
    if max_cached_workflows is not None:
        options["max_cached_workflows"] = max_cached_workflows
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=ALL_WORKFLOWS,
        activities=ALL_ACTIVITIES,
        workflow_runner=runner,
        **options,
    ):
        yield Running(client, task_queue)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def gauge(telemetry: Telemetry, workflow_id: str) -> dict[str, float]:
    return {
        p.attributes["resource"]: p.value
        for p in telemetry.points("governor.remaining")
        if p.attributes["workflow_id"] == workflow_id
    }


# -- on the dev server --------------------------------------------------------------------


async def test_every_dispatch_gets_one_span_with_attribution_and_spend(
    env: WorkflowEnvironment,
) -> None:
    otel = Telemetry()
    async with governed_with(env, Policy.from_yaml(SPENDER_1000), [otel.sink]) as w:
        with attribution(tenant="acme", owner="alice@acme"):
            handle = await w.start(Steps(tokens=[100, 200, 50]))
        assert await handle.result() == 3
    spans = otel.dispatches(handle.id)
    assert [s.name for s in spans] == ["governor.dispatch spend"] * 3
    assert [attrs(s)["governor.committed.tokens"] for s in spans] == [100, 200, 50]
    event_ids = []
    for span in spans:
        a = attrs(span)
        assert a["governor.tenant"] == "acme"
        assert a["governor.owner"] == "alice@acme"
        assert a["governor.agent"] == "Spender"
        assert a["governor.tool"] == "spend"
        assert "governor.child" not in a
        assert a["governor.decision"] == "committed"
        assert a["governor.reserved.tokens"] == 100
        assert a["governor.committed.tool_calls"] == 1
        assert a["governor.scope"] == f"run Spender/{handle.id}"
        assert a["governor.workflow_id"] == handle.id
        assert a["governor.run_id"] == handle.result_run_id
        assert a["governor.depth"] == 0
        event_ids.append(a["governor.event_id"])
        assert span.status.status_code == StatusCode.UNSET
        # timed in workflow time, from the reservation's task to the commit's task
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time < span.end_time
    assert event_ids == sorted(event_ids) and event_ids[0] > 0
    assert otel.spans("governance.") == []

    assert otel.sums("governor.tokens", "tenant", "agent", "tool", "model") == {
        ("acme", "Spender", "spend", "unknown"): 350
    }
    assert otel.sums("governor.tool_calls", "tenant", "agent", "tool") == {
        ("acme", "Spender", "spend"): 3
    }
    assert otel.points("governor.cost_usd") == []
    (duration,) = otel.points("governor.dispatch.duration")
    assert duration.count == 3 and duration.attributes["decision"] == "committed"
    assert gauge(otel, handle.id) == {"tokens": 650}


async def test_tokens_and_cost_are_counted_per_model(env: WorkflowEnvironment) -> None:
    policy = Policy.from_yaml(
        """
models: { m1: { input_per_1k: 0.01, output_per_1k: 0.03 } }
agents: { Priced: { quotas: { max_cost_usd_per_task: 1.0 } } }
"""
    )
    otel = Telemetry()
    async with governed_with(env, policy, [otel.sink]) as w:
        handle = await w.start(2, Priced.run)
        assert await handle.result() == 2
    assert otel.sums("governor.tokens", "tenant", "tool", "model") == {
        ("default", "spend", "m1"): 4000
    }
    assert otel.sums("governor.cost_usd", "model") == {("m1",): pytest.approx(0.08)}
    assert otel.sums("governor.tool_calls", "model") == {("m1",): 2}
    assert gauge(otel, handle.id) == {"cost_usd": pytest.approx(0.92)}


async def test_refused_dispatch_gets_a_span_and_the_breach_an_event(
    env: WorkflowEnvironment,
) -> None:
    otel = Telemetry()
    async with governed_with(env, Policy.from_yaml(SPENDER_1000), [otel.sink]) as w:
        with attribution(tenant="globex"):
            handle = await w.start(Steps(tokens=[100] * 20))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    spans = otel.dispatches(handle.id)
    decisions = [attrs(s)["governor.decision"] for s in spans]
    assert decisions == ["committed"] * 10 + ["refused"]
    refused = spans[-1]
    a = attrs(refused)
    assert refused.start_time == refused.end_time
    assert refused.status.status_code == StatusCode.ERROR
    assert a["governor.limit_name"] == "max_tokens_per_task"
    assert a["governor.requested.tokens"] == 100
    assert (a["governor.observed"], a["governor.ceiling"]) == (1100, 1000)
    assert not any(k.startswith("governor.committed.") for k in a)

    (breach,) = otel.events("breach")
    assert breach.name == "governance.breach"
    (event,) = breach.events
    assert event.name == "governance.breach"
    assert dict(event.attributes or {}) == {
        "limit_name": "max_tokens_per_task",
        "observed": 1100,
        "ceiling": 1000,
        "scope": f"run Spender/{handle.id}",
        "tenant": "globex",
        "agent": "Spender",
        "workflow_id": handle.id,
        "run_id": handle.result_run_id,
    }
    # the event sits under the dispatch span it refused
    assert breach.parent is not None
    assert breach.parent.span_id == refused.context.span_id
    assert otel.total("governor.tokens") == 1000
    assert gauge(otel, handle.id) == {"tokens": 0}


async def test_overage_is_an_event_under_the_commit_that_caused_it(
    env: WorkflowEnvironment,
) -> None:
    otel = Telemetry()
    async with governed_with(env, Policy.from_yaml(SPENDER_1000), [otel.sink]) as w:
        handle = await w.start(Steps(tokens=[100, 100, 900, 10]))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    spans = otel.dispatches(handle.id)
    assert [attrs(s)["governor.decision"] for s in spans] == ["committed"] * 3 + ["refused"]
    (overage,) = otel.events("overage")
    (event,) = overage.events
    assert event.name == "governance.overage"
    assert (event.attributes or {})["observed"] == 1100
    assert (event.attributes or {})["ceiling"] == 1000
    assert (event.attributes or {})["limit_name"] == "max_tokens_per_task"
    assert overage.parent is not None and overage.parent.span_id == spans[2].context.span_id
    assert len(otel.events("breach")) == 1
    assert otel.total("governor.tokens") == 1100


async def test_warn_and_alert_are_events(env: WorkflowEnvironment) -> None:
    policy = Policy.from_yaml(
        """
agents:
  Spender:
    quotas:
      max_tokens_per_task: { limit: 1000, on_breach: alert, warn_at: 0.5 }
"""
    )
    otel = Telemetry()
    async with governed_with(env, policy, [otel.sink]) as w:
        handle = await w.start(Steps(tokens=[400] * 4))
        assert await handle.result() == 4
    (warn,) = otel.events("warn")
    (warn_event,) = warn.events
    assert warn_event.name == "governance.warn"
    assert (warn_event.attributes or {})["observed"] == 800
    assert (warn_event.attributes or {})["ceiling"] == 1000
    (alert,) = otel.events("alert")
    (alert_event,) = alert.events
    assert (alert_event.attributes or {})["limit_name"] == "max_tokens_per_task"
    assert (alert_event.attributes or {})["observed"] > 1000
    assert [attrs(s)["governor.decision"] for s in otel.dispatches(handle.id)] == ["committed"] * 4
    assert otel.total("governor.tokens") == 1600


async def test_nothing_is_emitted_twice_when_every_task_replays(
    env: WorkflowEnvironment,
) -> None:
    otel = Telemetry()
    tally = Tally()
    policy = Policy.from_yaml(SPENDER_1000)
    # with no workflow cache every workflow task replays the run's history from the start
    async with governed_with(env, policy, [otel.sink, tally], max_cached_workflows=0) as w:
        ok = await w.start(Steps(tokens=[100] * 5))
        halted = await w.start(Steps(tokens=[100] * 12))
        assert await ok.result() == 5
        with pytest.raises(WorkflowFailureError):
            await halted.result()
    assert tally.replayed > tally.live > 0, "the runs were not replayed"

    assert [attrs(s)["governor.decision"] for s in otel.dispatches(ok.id)] == ["committed"] * 5
    assert [attrs(s)["governor.decision"] for s in otel.dispatches(halted.id)] == [
        "committed"
    ] * 10 + ["refused"]
    assert len(otel.dispatches()) == 16
    assert len(otel.events("breach")) == 1
    assert otel.spans("governance.") == otel.events("breach")
    for span in otel.dispatches():
        if attrs(span)["governor.decision"] == "committed":
            assert span.start_time is not None and span.end_time is not None
            assert span.start_time < span.end_time
    assert otel.total("governor.tokens") == 1500
    assert otel.total("governor.tool_calls") == 15
    (duration,) = otel.points("governor.dispatch.duration")
    assert duration.count == 15
    assert gauge(otel, ok.id) == {"tokens": 500}
    assert gauge(otel, halted.id) == {"tokens": 0}


async def test_works_alongside_the_sdk_tracing_interceptor(env: WorkflowEnvironment) -> None:
    otel = Telemetry()
    tracing = TracingInterceptor(otel.tracer_provider.get_tracer("temporalio"))
    async with governed_with(
        env, Policy.from_yaml(SPENDER_1000), [otel.sink], interceptors=[tracing]
    ) as w:
        handle = await w.start(Steps(tokens=[100, 100]))
        assert await handle.result() == 2
    spans = {s.name: s for s in otel.exporter.get_finished_spans()}
    names = [s.name for s in otel.exporter.get_finished_spans()]
    assert names.count("RunActivity:spend") == 2
    dispatches = otel.dispatches(handle.id)
    assert len(dispatches) == 2
    assert {attrs(s)["governor.decision"] for s in dispatches} == {"committed"}
    # the governor's spans join the workflow's trace, beside the SDK's RunWorkflow span
    run = spans["RunWorkflow:Spender"]
    assert run.parent is not None
    assert {s.context.trace_id for s in dispatches} == {
        spans["StartWorkflow:Spender"].context.trace_id
    }
    assert {s.parent.span_id for s in dispatches if s.parent} == {run.parent.span_id}
    assert otel.total("governor.tokens") == 200


# -- the sink on its own ------------------------------------------------------------------

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def record(
    kind: str, seq: int, *, at: float = 0.0, key: str = "activity:1:call_llm", **kw: Any
) -> DecisionRecord:
    fields: dict[str, Any] = {
        "seq": seq,
        "kind": kind,
        "event_id": seq * 3,
        "time": T0 + timedelta(seconds=at),
        "workflow_id": "wf-1",
        "run_id": "run-1",
        "agent": "planner",
        "depth": 1,
        "tenant": "acme",
        "dispatch": "activity",
        "target": "call_llm",
        "key": key,
    }
    fields.update(kw)
    return DecisionRecord(**fields)


def ns(at: float) -> int:
    return round((T0.timestamp() + at) * 1e6) * 1000


def test_replaying_records_emit_nothing() -> None:
    otel = Telemetry()
    sink = otel.sink
    reserve = record("reserve", 1, amounts={"tokens": 100})
    commit = record("commit", 2, at=1, amounts={"tokens": 80}, models={"m": 80})
    breach = record("breach", 3, at=1, limit="max", scope="run x", observed=2, ceiling=1)
    for r in (reserve, commit, breach):
        sink.record(r, replaying=True)
    sink.remaining(commit, {"tokens": 20}, replaying=True)
    assert otel.exporter.get_finished_spans() == ()
    assert otel.points("governor.tokens") == []
    assert otel.points("governor.remaining") == []
    # the same records live: everything appears once
    for r in (reserve, commit, breach):
        sink.record(r, replaying=False)
    sink.remaining(commit, {"tokens": 20}, replaying=False)
    assert len(otel.dispatches()) == 1 and len(otel.events("breach")) == 1
    assert otel.sums("governor.tokens", "model") == {("m",): 80}
    assert gauge(otel, "wf-1") == {"tokens": 20}


def test_span_starts_at_a_reservation_learned_in_replay() -> None:
    otel = Telemetry()
    otel.sink.record(record("reserve", 1, at=0, amounts={"tokens": 100}), replaying=True)
    otel.sink.record(record("commit", 2, at=2.5, amounts={"tokens": 40}), replaying=False)
    (span,) = otel.dispatches()
    assert (span.start_time, span.end_time) == (ns(0), ns(2.5))
    assert attrs(span)["governor.reserved.tokens"] == 100
    # the sink never saw the reservation live: it cannot know the wall-clock duration
    assert otel.points("governor.dispatch.duration") == []


def test_eviction_between_tasks_keeps_the_live_reservation() -> None:
    # what a worker without a cache does: the reservation is made live; evicting the run
    # tears its dispatch down (a settle flagged as replaying); the next task replays the
    # reservation and then commits live
    otel = Telemetry()
    sink = otel.sink
    sink.record(record("reserve", 1, at=0, amounts={"tokens": 100}), replaying=False)
    sink.record(record("commit", 2, at=0, amounts={"tool_calls": 1}), replaying=True)
    sink.record(record("reserve", 1, at=0, amounts={"tokens": 100}), replaying=True)
    sink.record(record("commit", 2, at=1, amounts={"tokens": 40}), replaying=False)
    (span,) = otel.dispatches()
    assert (span.start_time, span.end_time) == (ns(0), ns(1))
    (duration,) = otel.points("governor.dispatch.duration")
    assert duration.count == 1


def test_release_means_released_only_when_nothing_was_committed() -> None:
    otel = Telemetry()
    sink = otel.sink
    sink.record(record("reserve", 1, key="a", amounts={"tokens": 100}), replaying=False)
    sink.record(record("commit", 2, at=1, key="a", amounts={"tokens": 30}), replaying=False)
    sink.record(record("release", 3, at=1, key="a", amounts={"tokens": 70}), replaying=False)
    sink.record(record("reserve", 4, at=2, key="b", amounts={"tokens": 100}), replaying=False)
    sink.record(record("release", 5, at=3, key="b", amounts={"tokens": 100}), replaying=False)
    spans = otel.dispatches()
    assert [(attrs(s)["governor.key"], attrs(s)["governor.decision"]) for s in spans] == [
        ("a", "committed"),
        ("b", "released"),
    ]
    assert attrs(spans[1])["governor.reserved.tokens"] == 100
    assert (spans[1].start_time, spans[1].end_time) == (ns(2), ns(3))
    assert otel.total("governor.tokens") == 30


def test_tokens_are_split_by_model_and_child_commits_are_not_counted() -> None:
    otel = Telemetry()
    sink = otel.sink
    sink.record(
        record("commit", 1, amounts={"tokens": 100, "cost_usd": 0.5}, models={"a": 30, "b": 50}),
        replaying=False,
    )
    sink.record(
        record(
            "commit",
            2,
            key="child:2:researcher",
            dispatch="child",
            target="researcher",
            amounts={"tokens": 1000, "cost_usd": 5.0},
        ),
        replaying=False,
    )
    assert otel.sums("governor.tokens", "model") == {("a",): 30, ("b",): 50, ("unknown",): 20}
    assert otel.sums("governor.cost_usd", "model") == {("",): 0.5}
    child = [s for s in otel.dispatches() if s.name == "governor.dispatch researcher"]
    assert len(child) == 1
    assert attrs(child[0])["governor.child"] == "researcher"
    assert "governor.tool" not in attrs(child[0])


def test_a_breach_without_a_refuse_record_still_gets_a_refused_span() -> None:
    otel = Telemetry()
    otel.sink.record(
        record(
            "breach",
            1,
            key="child:1:Node",
            dispatch="child",
            target="Node",
            limit="loop_detection.max_depth",
            scope="run Node/wf-1",
            observed=6,
            ceiling=5,
        ),
        replaying=False,
    )
    (span,) = otel.dispatches()
    assert attrs(span)["governor.decision"] == "refused"
    assert attrs(span)["governor.limit_name"] == "loop_detection.max_depth"
    (breach,) = otel.events("breach")
    assert breach.parent is not None and breach.parent.span_id == span.context.span_id


def test_kinds_added_later_become_events() -> None:
    otel = Telemetry()
    anomaly = record("warn", 1, limit="spend_rate", scope="tenant acme", observed=9, ceiling=3)
    otel.sink.record(anomaly.model_copy(update={"kind": "anomaly"}), replaying=False)
    (span,) = otel.spans("governance.")
    assert span.name == "governance.anomaly"
    assert span.events[0].name == "governance.anomaly"
    assert otel.dispatches() == []


def test_memory_is_bounded() -> None:
    otel = Telemetry()
    sink = otel.sink
    sink.max_pending = 2
    sink.max_gauges = 2
    for i in range(3):
        sink.record(record("reserve", i, at=i, key=f"k{i}", amounts={"tokens": 1}), replaying=False)
    # the oldest reservation was forgotten: its span can only start at its commit
    sink.record(record("commit", 9, at=5, key="k0", amounts={"tokens": 1}), replaying=False)
    sink.record(record("commit", 10, at=5, key="k2", amounts={"tokens": 1}), replaying=False)
    k0, k2 = sorted(otel.dispatches(), key=lambda s: attrs(s)["governor.key"])
    assert k0.start_time == ns(5) and k2.start_time == ns(2)
    for i in range(3):
        sink.remaining(
            record("commit", 20 + i, workflow_id=f"wf-{i}"), {"tokens": i}, replaying=False
        )
    assert {p.attributes["workflow_id"] for p in otel.points("governor.remaining")} == {
        "wf-1",
        "wf-2",
    }


def test_telemetry_errors_never_reach_workflow_code(caplog: pytest.LogCaptureFixture) -> None:
    otel = Telemetry()

    class Broken:
        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter on fire")

    otel.sink._tracer = Broken()  # type: ignore[assignment]
    with caplog.at_level(logging.DEBUG, logger="temporal_governor.telemetry"):
        otel.sink.record(record("reserve", 1, amounts={"tokens": 1}), replaying=False)
        otel.sink.record(record("commit", 2, amounts={"tokens": 1}), replaying=False)
        otel.sink.record(record("release", 3, amounts={"tokens": 1}), replaying=False)
    failures = [r for r in caplog.records if r.name == "temporal_governor.telemetry"]
    # the dispatch was settled before the failure: its remainder is not taken for a release
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "exporter on fire" in str(failures[0].exc_info[1])
    # spans failed; metrics did not
    assert otel.total("governor.tokens") == 1
    (duration,) = otel.points("governor.dispatch.duration")
    assert duration.count == 1


GLOBAL_PROVIDERS = """
import json, logging, sys
from datetime import UTC, datetime

import opentelemetry.metrics, opentelemetry.trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from temporal_governor.core.decisions import DecisionRecord
from temporal_governor.telemetry import OpenTelemetrySink

failures = []  # what the sink caught and logged (it never raises)

class Failures(logging.Handler):
    def emit(self, entry):
        failures.append(repr(entry.exc_info[1]) if entry.exc_info else entry.getMessage())

logging.getLogger("temporal_governor.telemetry").addHandler(Failures())
logging.getLogger("temporal_governor.telemetry").setLevel(logging.DEBUG)

def record(kind, seq, **fields):
    return DecisionRecord(
        seq=seq, kind=kind, event_id=3 * seq, time=datetime(2025, 1, 1, tzinfo=UTC),
        workflow_id="wf-global", run_id="run-1", agent="planner", depth=0, tenant="acme",
        dispatch="activity", target="call_llm", key="activity:1:call_llm", **fields,
    )

# "before": the sink exists before the application installs its SDK (a plugin built at
# import time); "after": the application installed it first
if sys.argv[1] == "before":
    sink = OpenTelemetrySink()
exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
opentelemetry.trace.set_tracer_provider(tracer_provider)
opentelemetry.metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
if sys.argv[1] == "after":
    sink = OpenTelemetrySink()

sink.record(record("reserve", 1, amounts={"tokens": 10}), replaying=False)
sink.record(record("commit", 2, amounts={"tokens": 7, "tool_calls": 1}), replaying=False)
sink.record(
    record("breach", 3, limit="max", scope="run x", observed=2, ceiling=1), replaying=False
)
sink.remaining(record("commit", 2), {"tokens": 3}, replaying=False)
metrics = {}
data = reader.get_metrics_data()  # None when nothing was recorded
for resource in data.resource_metrics if data is not None else []:
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            for point in metric.data.data_points:
                # a counter's or gauge's value, a histogram's count
                metrics[metric.name] = point.value if hasattr(point, "value") else point.count
print(json.dumps({
    "spans": sorted(span.name for span in exporter.get_finished_spans()),
    "metrics": metrics,
    "failures": failures,
}))
"""


@pytest.mark.parametrize("installed", ["before", "after"])
def test_global_providers_by_default(installed: str) -> None:
    # the global providers can be set once per process: a fresh one sets them, as an
    # application does, before or after the sink is made, and says what reached them
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDERS, installed],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    assert seen["failures"] == []  # the sink swallows errors: none happened
    assert seen["spans"] == ["governance.breach", "governor.dispatch call_llm"]
    assert seen["metrics"] == {
        "governor.tokens": 7,
        "governor.tool_calls": 1,
        "governor.dispatch.duration": 1,
        "governor.remaining": 3,
    }


async def test_a_rejected_control_message_emits_a_telemetry_event(env: WorkflowEnvironment) -> None:
    telemetry = Telemetry()
    policy = Policy.from_yaml(SPENDER_1000)
    workflow_id = f"otel-{uuid.uuid4()}"
    unsigned = {
        "issuer": "mallory",
        "workflow_id": workflow_id,
        "issued_at_ms": int(datetime.now(UTC).timestamp() * 1000),
        "nonce": uuid.uuid4().hex,
    }
    async with governed_with(env, policy, [telemetry.sink]) as running:
        handle = await running.client.start_workflow(
            Spender.run,
            Steps(tokens=[10, 10]),
            id=workflow_id,
            task_queue=running.task_queue,
            start_signal="governor.resume",
            start_signal_args=[unsigned],
        )
        assert await handle.result() == 2  # the run went on
    [span] = telemetry.events("control_rejected", handle.id)
    [event] = span.events
    assert event.name == "governance.control_rejected"
    details = dict(event.attributes or {})
    assert details["limit_name"] == "mallory"  # the issuer
    assert str(details["scope"]).startswith("unsigned resume")  # why it was rejected
    assert dict(span.attributes or {})["governor.key"] == "governor.resume"


def test_two_sinks_on_one_meter_provider_both_show_in_the_remaining_gauge() -> None:
    """OpenTelemetry keeps one gauge per name on a meter: both sinks' runs must reach it."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first = OpenTelemetrySink(meter_provider=provider)
    second = OpenTelemetrySink(meter_provider=provider)
    first.remaining(record("commit", 1, workflow_id="wf-a"), {"tokens": 10.0}, replaying=False)
    second.remaining(record("commit", 2, workflow_id="wf-b"), {"tokens": 20.0}, replaying=False)
    data = reader.get_metrics_data()
    seen = {
        point.attributes["workflow_id"]: point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "governor.remaining"
        for point in metric.data.data_points
    }
    assert seen == {"wf-a": 10.0, "wf-b": 20.0}
