"""OpenTelemetry spans, events and metrics of every governance decision.

:class:`OpenTelemetrySink` is a :class:`DecisionSink` (a receiver of every governance
decision, as a :class:`DecisionRecord`; both are exported here for custom sinks, with the
typed views of a record's ``payload``: :class:`BudgetPayload`, :class:`ControlPayload`,
:class:`DetectorPayload`): install
it with ``GovernorPlugin(policy, tracer_provider=..., meter_provider=...)`` or
``GovernanceInterceptor(policy, sinks=[OpenTelemetrySink(...)])``. It emits

- one span per governed dispatch, ``governor.dispatch {target}``, when the dispatch is
  settled (committed, refused, or released without having started), timed in workflow
  time from its reservation to its settlement;
- one short span ``governance.{kind}`` carrying an event of the same name for every
  breach, alert, warning and overage (and any later non-dispatch kind);
- counters of committed tokens, cost and tool calls per tenant, agent, tool and model, a
  histogram of dispatch durations and an observable gauge of each run's remaining budget.

The sink is called from inside workflow code. It emits nothing for records of a replaying
workflow task (so nothing is emitted twice), runs its OpenTelemetry calls outside the
workflow sandbox's restrictions, and never raises into workflow code. It builds no span
while its tracer provider is a no-op one (the global default until an application installs
an OpenTelemetry SDK), and records no metric while its meter provider is; a global
provider installed later is found from the next workflow task on. See
``docs/telemetry.md`` for every name and attribute.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import opentelemetry.metrics
import opentelemetry.trace
import temporalio.workflow
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from .core.decisions import (
    BudgetPayload,
    ControlPayload,
    DecisionRecord,
    DecisionSink,
    DetectorPayload,
    RemainingMode,
)

INSTRUMENTATION_NAME = "temporal_governor"
"""Name of the tracer and the meter the sink uses."""

DISPATCH_SPAN_PREFIX = "governor.dispatch"
"""Dispatch spans are named ``governor.dispatch {target}``."""

EVENT_PREFIX = "governance."
"""Event spans and their events are named ``governance.{kind}``."""

_UNKNOWN_MODEL = "unknown"
_SETTLING = {"commit": "committed", "refuse": "refused", "release": "released"}
"""Decisions that settle a dispatch, and the outcome each gives its span."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

logger = logging.getLogger(__name__)

Attributes = dict[str, AttributeValue]


@dataclass(frozen=True)
class _Reserved:
    """What the sink remembers of a reservation until its dispatch is settled."""

    time: datetime
    amounts: dict[str, float]
    monotonic: float | None
    """When the sink saw the reservation live; ``None`` when it was learned in replay."""


def _ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, exact to the microsecond (a float would round)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _tracer_goes_somewhere(provider: TracerProvider | None) -> bool:
    """Whether spans started from ``provider`` (``None``: the global one) reach anything."""
    if provider is None:
        provider = opentelemetry.trace.get_tracer_provider()
    return not isinstance(
        provider, opentelemetry.trace.NoOpTracerProvider | opentelemetry.trace.ProxyTracerProvider
    )


def _meter_goes_somewhere(provider: MeterProvider | None) -> bool:
    """Whether metrics of ``provider`` (``None``: the global one) reach anything."""
    if provider is None:
        provider = opentelemetry.metrics.get_meter_provider()
    # the global default is a proxy that stays a no-op until a provider is installed
    return not isinstance(provider, opentelemetry.metrics.NoOpMeterProvider) and (
        type(provider).__name__ != "_ProxyMeterProvider"
    )


def _bounded_put(table: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)


class OpenTelemetrySink:
    """Emits OpenTelemetry spans, events and metrics for every governance decision.

    Spans and metrics go to the given providers, or to the global ones (which are no-ops
    unless the application configured an OpenTelemetry SDK). Nothing is emitted for a
    record whose ``replaying`` flag is set.

    Args:
        tracer_provider: Where spans go; ``None`` for the global tracer provider.
        meter_provider: Where metrics go; ``None`` for the global meter provider.

    """

    max_pending = 100_000
    """Most reservations remembered until their dispatch settles; the oldest go first."""
    max_settled = 10_000
    """Most settled dispatches remembered (to parent later events under their span)."""
    max_gauges = 10_000
    """Most ``governor.remaining`` series reported; the least recently updated go first."""
    takes_remaining: RemainingMode = "live"
    """The sink takes the remaining budget of live workflow tasks only (see
    :class:`~temporal_governor.core.decisions.DecisionSink`)."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._tracing = _tracer_goes_somewhere(tracer_provider)
        """Whether spans reach anything (rechecked while the global provider is a no-op)."""
        self._metering = _meter_goes_somewhere(meter_provider)
        """Whether metrics reach anything (rechecked likewise)."""
        self._idle_tracers: TracerProvider | None = None
        """The global tracer provider last found to reach nothing."""
        self._idle_meters: MeterProvider | None = None
        """The global meter provider last found to reach nothing."""
        self._quiet_at: tuple[str, int, datetime] | None = None
        """The run id and ``event_id`` of the workflow task in which neither spans nor
        metrics were last found to reach anything (see :meth:`_outlets`)."""
        self._tracer = opentelemetry.trace.get_tracer(
            INSTRUMENTATION_NAME, tracer_provider=tracer_provider
        )
        meter = opentelemetry.metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=meter_provider)
        self._tokens = meter.create_counter(
            "governor.tokens", unit="{token}", description="Tokens committed by activities."
        )
        self._cost = meter.create_counter(
            "governor.cost_usd", unit="USD", description="Cost committed by activities."
        )
        self._tool_calls = meter.create_counter(
            "governor.tool_calls",
            unit="{call}",
            description="Tool calls committed by activities.",
        )
        self._duration = meter.create_histogram(
            "governor.dispatch.duration",
            unit="s",
            description="Wall-clock time from a dispatch's reservation to its settlement.",
        )
        _observe_with(meter, meter_provider, self)
        self._lock = threading.Lock()
        self._pending: OrderedDict[tuple[str, str], _Reserved] = OrderedDict()
        self._settled: OrderedDict[tuple[str, str], SpanContext | None] = OrderedDict()
        self._remaining: OrderedDict[tuple[str, str, str, str], float] = OrderedDict()

    # -- the DecisionSink protocol -------------------------------------------------------

    def record(self, decision: DecisionRecord, *, replaying: bool) -> None:
        """Emit the spans, events and metrics of one decision.

        While replaying, nothing is emitted; the sink only relearns the workflow time of
        reservations whose dispatch is still in flight (so that their span starts at the
        right time even when the workflow was evicted from the worker's cache).

        Args:
            decision: The decision.
            replaying: True while the workflow task replays history.

        """
        if self.passes_over(decision.run_id, decision.event_id, decision.time):
            return  # nothing reaches anything, as judged in this workflow task
        if replaying:
            self._guarded(self._relearn, decision)
        else:
            self._guarded(self._handle, decision)

    def remaining(
        self, decision: DecisionRecord, remaining: dict[str, float], *, replaying: bool
    ) -> None:
        """Remember a run's remaining budget for the ``governor.remaining`` gauge.

        Args:
            decision: The decision after which the budget was measured.
            remaining: Headroom per resource under the tightest terminate limit.
            replaying: True while the workflow task replays history (then nothing is
                remembered).

        """
        if not replaying and not self.passes_over(
            decision.run_id, decision.event_id, decision.time
        ):
            self._guarded(self._set_remaining, decision, remaining)

    def passes_over(self, run_id: str, event_id: int, time: datetime) -> bool:
        """Whether the sink does nothing with the decisions of this workflow task.

        True once the sink has found, in the task (a run id and the ``event_id`` of its
        decisions), that neither spans nor metrics reach anything (see :meth:`_outlets`):
        it then drops the task's further decisions unread, and the governor spares
        building them for it.
        """
        return self._quiet_at == (run_id, event_id, time)

    # -- safety --------------------------------------------------------------------------

    def _guarded(self, handler: Callable[..., None], *args: Any) -> None:
        """Run a handler outside the sandbox's restrictions; log and swallow any error."""
        try:
            if temporalio.workflow.in_workflow():
                with temporalio.workflow.unsafe.sandbox_unrestricted():
                    handler(*args)
            else:
                handler(*args)
        except Exception:
            logger.debug("telemetry of a governance decision failed", exc_info=True)

    @staticmethod
    def _safely(emit: Callable[..., None], *args: Any) -> None:
        """Emit one signal; a failure is logged and does not stop the others."""
        try:
            emit(*args)
        except Exception:
            logger.debug("telemetry of a governance decision failed", exc_info=True)

    def _outlets(self, decision: DecisionRecord) -> tuple[bool, bool]:
        """Whether spans and metrics reach anything now.

        A given provider does or does not for good; the global one starts as a no-op and
        may be replaced once, by the application, at any time: until then it is asked
        again, but at most once per workflow task of a run. When neither reaches
        anything, the sink remembers the task (the decision's run id and ``event_id``) and
        passes over the rest of its decisions without asking: a fan-out of a hundred
        activities makes hundreds of decisions in one workflow task, and asking the
        global providers costs more than the rest of a quiet sink's work (each looks up
        an environment variable, through the workflow sandbox's checks). A provider
        installed meanwhile is found at the run's next workflow task, or at the next
        decision of any other task.
        """
        if not self._tracing and self._tracer_provider is None:
            tracers = opentelemetry.trace.get_tracer_provider()
            if tracers is not self._idle_tracers:  # judged once per global provider
                self._tracing = _tracer_goes_somewhere(tracers)
                self._idle_tracers = tracers
        if not self._metering and self._meter_provider is None:
            meters = opentelemetry.metrics.get_meter_provider()
            if meters is not self._idle_meters:
                self._metering = _meter_goes_somewhere(meters)
                self._idle_meters = meters
        quiet = not (self._tracing or self._metering)
        self._quiet_at = (decision.run_id, decision.event_id, decision.time) if quiet else None
        return self._tracing, self._metering

    # -- bookkeeping ---------------------------------------------------------------------

    def _relearn(self, decision: DecisionRecord) -> None:
        if decision.kind not in _SETTLING and decision.kind != "reserve":
            return
        if not any(self._outlets(decision)):
            return
        where = (decision.run_id, decision.key)
        with self._lock:
            if decision.kind == "reserve":
                if where not in self._pending:
                    reserved = _Reserved(decision.time, dict(decision.amounts), None)
                    _bounded_put(self._pending, where, reserved, self.max_pending)
            elif decision.kind in ("commit", "release", "refuse"):
                # Only forget what replay taught: a reservation seen live is settled live.
                # (Evicting a run from the cache tears down its in-flight dispatches,
                # which can produce settle records flagged as replaying.)
                learned = self._pending.get(where)
                if learned is not None and learned.monotonic is None:
                    del self._pending[where]

    def _set_remaining(self, decision: DecisionRecord, remaining: dict[str, float]) -> None:
        if not self._outlets(decision)[1]:
            return
        with self._lock:
            for resource, value in remaining.items():
                key = (decision.tenant, decision.agent, decision.workflow_id, resource)
                _bounded_put(self._remaining, key, float(value), self.max_gauges)

    def _observe_remaining(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            values = list(self._remaining.items())
        return [
            Observation(
                value,
                {"tenant": tenant, "agent": agent, "workflow_id": workflow_id, "resource": r},
            )
            for (tenant, agent, workflow_id, r), value in values
        ]

    # -- live decisions ------------------------------------------------------------------

    def _handle(self, decision: DecisionRecord) -> None:
        tracing, metering = self._outlets(decision)
        if not (tracing or metering):
            return  # nothing would reach anything: build nothing
        kind = decision.kind
        where = (decision.run_id, decision.key)
        if kind == "reserve":
            reserved = _Reserved(decision.time, dict(decision.amounts), time.monotonic())
            with self._lock:
                _bounded_put(self._pending, where, reserved, self.max_pending)
            return
        with self._lock:
            pending = self._pending.pop(where, None) if kind in _SETTLING else None
            settled = where in self._settled
            if kind == "release" and settled:
                return  # the remainder of a commit, not a dispatch that never started
            outcome = _SETTLING.get(kind)
            if outcome is None and kind == "breach" and decision.key and not settled:
                # refused before reserving (deadline, depth, carve): no refuse record came
                outcome = "refused"
            if outcome is not None:
                # settled before anything can fail: never a second span for this dispatch
                _bounded_put(self._settled, where, None, self.max_settled)
        if outcome is not None:
            if tracing:
                self._safely(self._dispatch_span, decision, outcome, pending)
            if metering and pending is not None and pending.monotonic is not None:
                elapsed = max(0.0, time.monotonic() - pending.monotonic)
                attributes = self._metric_attributes(decision, decision=outcome)
                self._safely(self._duration.record, elapsed, attributes)
        if metering and kind == "commit" and decision.dispatch == "activity":
            self._safely(self._count, decision)
        if tracing and kind not in _SETTLING:
            self._safely(self._event_span, decision)

    def _dispatch_span(
        self, decision: DecisionRecord, outcome: str, pending: _Reserved | None
    ) -> None:
        end = _ns(decision.time)
        start = min(_ns(pending.time), end) if pending is not None else end
        attributes = self._common(decision)
        attributes["governor.decision"] = outcome
        attributes["governor.scope"] = decision.scope or _run_scope(decision)
        attributes["governor.depth"] = decision.depth
        attributes["governor.event_id"] = decision.event_id
        attributes["governor.key"] = decision.key
        if decision.dispatch == "child":
            attributes["governor.child"] = decision.target
        elif decision.target:
            attributes["governor.tool"] = decision.target
        reserved = pending.amounts if pending is not None else {}
        if outcome == "released" and not reserved:
            reserved = decision.amounts
        for resource, amount in reserved.items():
            attributes[f"governor.reserved.{resource}"] = amount
        if outcome == "committed":
            for resource, amount in decision.amounts.items():
                attributes[f"governor.committed.{resource}"] = amount
        elif outcome == "refused":
            for resource, amount in decision.amounts.items():
                attributes[f"governor.requested.{resource}"] = amount
            attributes["governor.limit_name"] = decision.limit
            attributes["governor.observed"] = decision.observed
            attributes["governor.ceiling"] = decision.ceiling
        where = (decision.run_id, decision.key)
        name = f"{DISPATCH_SPAN_PREFIX} {decision.target or decision.key or 'unknown'}"
        span = self._tracer.start_span(
            name, kind=SpanKind.INTERNAL, attributes=attributes, start_time=start
        )
        if outcome == "refused":
            span.set_status(Status(StatusCode.ERROR, f"refused by {decision.limit}"))
        span.end(end_time=end)
        with self._lock:
            if where in self._settled:
                self._settled[where] = span.get_span_context()

    def _event_span(self, decision: DecisionRecord) -> None:
        name = f"{EVENT_PREFIX}{decision.kind}"
        with self._lock:
            parent = self._settled.get((decision.run_id, decision.key))
        context = (
            opentelemetry.trace.set_span_in_context(opentelemetry.trace.NonRecordingSpan(parent))
            if parent is not None
            else None
        )
        moment = _ns(decision.time)
        common = self._common(decision)
        common["governor.key"] = decision.key
        details: Attributes = {
            "limit_name": decision.limit,
            "observed": decision.observed,
            "ceiling": decision.ceiling,
            "scope": decision.scope,
            "tenant": decision.tenant,
            "agent": decision.agent,
            "workflow_id": decision.workflow_id,
            "run_id": decision.run_id,
        }
        details.update(_named_details(decision))
        span = self._tracer.start_span(
            name, context=context, kind=SpanKind.INTERNAL, attributes=common, start_time=moment
        )
        span.add_event(name, attributes=details, timestamp=moment)
        span.end(end_time=moment)

    def _count(self, decision: DecisionRecord) -> None:
        amounts = decision.amounts
        models = decision.models
        tokens = amounts.get("tokens", 0.0)
        split: dict[str, float] = {m: float(t) for m, t in models.items() if t}
        unattributed = tokens - sum(split.values())
        if unattributed > 0:
            split[_UNKNOWN_MODEL] = split.get(_UNKNOWN_MODEL, 0.0) + unattributed
        for model, count in split.items():
            self._tokens.add(count, self._metric_attributes(decision, model=model))
        single = next(iter(models)) if len(models) == 1 else ""
        cost = amounts.get("cost_usd", 0.0)
        if cost:
            self._cost.add(cost, self._metric_attributes(decision, model=single))
        calls = amounts.get("tool_calls", 0.0)
        if calls:
            self._tool_calls.add(calls, self._metric_attributes(decision, model=single))

    # -- attributes ----------------------------------------------------------------------

    @staticmethod
    def _common(decision: DecisionRecord) -> Attributes:
        attributes: Attributes = {
            "governor.tenant": decision.tenant,
            "governor.agent": decision.agent,
            "governor.workflow_id": decision.workflow_id,
            "governor.run_id": decision.run_id,
        }
        if decision.owner:
            attributes["governor.owner"] = decision.owner
        return attributes

    @staticmethod
    def _metric_attributes(record: DecisionRecord, **extra: str) -> Attributes:
        attributes: Attributes = {"tenant": record.tenant, "agent": record.agent}
        if record.dispatch == "child":
            attributes["child"] = record.target
        else:
            attributes["tool"] = record.target
        attributes.update(extra)
        return attributes


def _run_scope(decision: DecisionRecord) -> str:
    return f"run {decision.agent}/{decision.workflow_id}"


def _named_details(decision: DecisionRecord) -> Attributes:
    """A control or detector event's category and fields under their own names.

    (``limit_name`` and ``scope`` still carry them too, as they always did: the issuer or
    detector, and the outcome or message. A budget event's attributes are as they were.)
    """
    payload = decision.payload
    if isinstance(payload, ControlPayload):
        return {
            "category": payload.category,
            "signal": payload.signal,
            "accepted": payload.accepted,
            "issuer": payload.issuer,
            "outcome": payload.outcome,
        }
    if isinstance(payload, DetectorPayload):
        return {
            "category": payload.category,
            "detector": payload.detector,
            "message": payload.message,
            "threshold": payload.threshold,
        }
    return {}


_GLOBAL_GAUGE_SINKS: weakref.WeakSet[OpenTelemetrySink] = weakref.WeakSet()
_GAUGE_SINKS: weakref.WeakKeyDictionary[MeterProvider, weakref.WeakSet[OpenTelemetrySink]] = (
    weakref.WeakKeyDictionary()
)


def _observe_with(
    meter: opentelemetry.metrics.Meter,
    provider: MeterProvider | None,
    sink: OpenTelemetrySink,
) -> None:
    """Let ``sink``'s runs show in the ``governor.remaining`` gauge of ``provider``.

    OpenTelemetry keeps the first instrument of a name on a meter and drops the callbacks
    of later ones, so every sink on one provider shares one gauge whose callback asks each.
    """
    if provider is None:
        sinks = _GLOBAL_GAUGE_SINKS
        first = not sinks
    else:
        first = provider not in _GAUGE_SINKS
        sinks = _GAUGE_SINKS.setdefault(provider, weakref.WeakSet())
    sinks.add(sink)
    if first:

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [seen for each in list(sinks) for seen in each._observe_remaining(options)]

        meter.create_observable_gauge(
            "governor.remaining",
            callbacks=[observe],
            unit="1",
            description="A run's remaining budget per resource under its tightest limit.",
        )


__all__ = [
    "DISPATCH_SPAN_PREFIX",
    "EVENT_PREFIX",
    "INSTRUMENTATION_NAME",
    "BudgetPayload",
    "ControlPayload",
    "DecisionRecord",
    "DecisionSink",
    "DetectorPayload",
    "OpenTelemetrySink",
]
