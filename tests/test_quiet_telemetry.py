"""An OpenTelemetry sink with nowhere to send anything costs a fan-out almost nothing.

It judges its providers at most once per workflow task of a run and then passes over the
task's further decisions, and the governor builds no record for it (issue #12, item 7),
while every other sink, an OpenTelemetry sink that reaches something included, still gets
every decision. Workflows here are unsandboxed so they can live in this file.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from temporal_governor import Policy
from temporal_governor.activity import report_usage
from temporal_governor.interceptors import GovernanceInterceptor
from temporal_governor.telemetry import DISPATCH_SPAN_PREFIX, DecisionRecord, OpenTelemetrySink


def _record(kind: str, seq: int, event_id: int, run_id: str = "run-1") -> DecisionRecord:
    return DecisionRecord(
        seq=seq,
        kind=kind,  # type: ignore[arg-type]
        event_id=event_id,
        time=datetime(2025, 1, 1, tzinfo=UTC),
        workflow_id="wf",
        run_id=run_id,
        agent="A",
        depth=0,
        tenant="acme",
        dispatch="activity",
        target="t",
        key=f"activity:{seq}:t",
        amounts={"tokens": 1.0},
    )


def test_a_sink_that_reaches_nothing_passes_over_the_rest_of_the_task_only() -> None:
    quiet = OpenTelemetrySink(NoOpTracerProvider(), NoOpMeterProvider())
    assert not quiet.passes_over("run-1", 3, datetime(2025, 1, 1, tzinfo=UTC)), "nothing judged yet"
    quiet.record(_record("reserve", 1, event_id=3), replaying=False)
    assert quiet.passes_over("run-1", 3, datetime(2025, 1, 1, tzinfo=UTC))
    assert not quiet.passes_over("run-1", 6, datetime(2025, 1, 1, tzinfo=UTC)), (
        "the run's next task is judged again"
    )
    assert not quiet.passes_over("run-2", 3, datetime(2025, 1, 1, tzinfo=UTC)), (
        "another run's task too"
    )
    quiet.record(_record("commit", 2, event_id=6), replaying=False)
    assert quiet.passes_over(
        "run-1", 6, datetime(2025, 1, 1, tzinfo=UTC)
    ) and not quiet.passes_over("run-1", 3, datetime(2025, 1, 1, tzinfo=UTC))
    # local activities resolve in later activations of one workflow task (the same
    # event id): each activation's workflow time is judged again
    later = datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert not quiet.passes_over("run-1", 6, later)


def test_a_sink_that_reaches_something_never_passes_over() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = OpenTelemetrySink(tracer_provider, NoOpMeterProvider())
    sink.record(_record("reserve", 1, event_id=3), replaying=False)
    sink.record(_record("commit", 1, event_id=3), replaying=False)
    assert not sink.passes_over("run-1", 3, datetime(2025, 1, 1, tzinfo=UTC))
    assert [span.name for span in exporter.get_finished_spans()] == [f"{DISPATCH_SPAN_PREFIX} t"]


class Collector:
    """A sink that keeps every record it is given."""

    def __init__(self) -> None:
        self.records: list[DecisionRecord] = []

    def record(self, decision: DecisionRecord, *, replaying: bool) -> None:
        if not replaying:
            self.records.append(decision)

    def remaining(
        self, decision: DecisionRecord, remaining: dict[str, float], *, replaying: bool
    ) -> None:
        pass


@activity.defn
async def fanned(i: int) -> int:
    report_usage(input_tokens=1 + i, model="m")
    return i


@workflow.defn(sandboxed=False)
class FansOut:
    @workflow.run
    async def run(self, width: int) -> int:
        done = await asyncio.gather(
            *(
                workflow.execute_activity(fanned, i, start_to_close_timeout=timedelta(seconds=30))
                for i in range(width)
            )
        )
        return len(done)


async def test_other_sinks_get_every_decision_of_a_task_a_quiet_sink_passes_over(
    env: WorkflowEnvironment,
) -> None:
    policy = Policy.from_yaml(
        "agents: { FansOut: { quotas: { max_tokens_per_task: 100000 } } }\n"
        f"shared: {{ ledger_id: ledger-{uuid.uuid4().hex[:8]} }}\n"
    )
    quiet = OpenTelemetrySink(NoOpTracerProvider(), NoOpMeterProvider())
    collector = Collector()
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    heard = OpenTelemetrySink(tracer_provider, MeterProvider(metric_readers=[reader]))
    client = Client(
        env.client.service_client,
        namespace=env.client.namespace,
        interceptors=[GovernanceInterceptor(policy, sinks=[quiet, collector, heard])],
    )
    task_queue = f"tq-quiet-{uuid.uuid4()}"
    async with Worker(client, task_queue=task_queue, workflows=[FansOut], activities=[fanned]):
        handle = await client.start_workflow(
            FansOut.run, WIDTH, id=f"quiet-{uuid.uuid4()}", task_queue=task_queue
        )
        assert await handle.result() == WIDTH
    reserves = [r for r in collector.records if r.kind == "reserve"]
    assert len(reserves) == WIDTH
    assert len({(r.run_id, r.event_id) for r in reserves}) == 1, "one workflow task"
    last = collector.records[-1]
    assert quiet.passes_over(last.run_id, last.event_id, last.time), (
        "it found nothing reached, in the last task"
    )
    assert [r.kind for r in collector.records].count("commit") == WIDTH
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith(DISPATCH_SPAN_PREFIX)]
    assert len(spans) == WIDTH, "the sink that reaches something got every dispatch"
    committed = {
        dict(span.attributes or {})["governor.key"]: dict(span.attributes or {}) for span in spans
    }
    keys = {r.key for r in reserves}
    assert set(committed) == keys
    assert all(attrs["governor.decision"] == "committed" for attrs in committed.values())


WIDTH = 6


class AuditingOtelSink(OpenTelemetrySink):
    """OTel plus an audit log of every decision (e.g. to a SIEM), by overriding record()."""

    def __init__(self) -> None:
        super().__init__(NoOpTracerProvider(), NoOpMeterProvider())
        self.audited: list[DecisionRecord] = []

    def record(self, decision: DecisionRecord, *, replaying: bool) -> None:
        if not replaying:
            self.audited.append(decision)
        super().record(decision, replaying=replaying)


async def test_a_subclass_of_the_otel_sink_gets_every_decision(env: WorkflowEnvironment) -> None:
    policy = Policy.from_yaml(
        "agents: { FansOut: { quotas: { max_tokens_per_task: 100000 } } }\n"
        f"shared: {{ ledger_id: ledger-{uuid.uuid4().hex[:8]} }}\n"
    )
    auditing, collector = AuditingOtelSink(), Collector()
    client = Client(
        env.client.service_client,
        namespace=env.client.namespace,
        interceptors=[GovernanceInterceptor(policy, sinks=[auditing, collector])],
    )
    task_queue = f"tq-sub-{uuid.uuid4()}"
    async with Worker(client, task_queue=task_queue, workflows=[FansOut], activities=[fanned]):
        handle = await client.start_workflow(
            FansOut.run, WIDTH, id=f"sub-{uuid.uuid4()}", task_queue=task_queue
        )
        assert await handle.result() == WIDTH
    assert [r.kind for r in collector.records].count("reserve") == WIDTH
    assert [r.seq for r in auditing.audited] == [r.seq for r in collector.records]
