"""Activity side: meter each attempt's usage and send it back on the result path.

Usage is checked here before it leaves the worker: :func:`~temporal_governor.report_usage`
raises :class:`~temporal_governor.errors.InvalidUsage` for NaN, infinities, negatives and
absurd amounts (the activity fails without retries unless it catches it), and the same
values read from a model-response-shaped result are refused without failing the activity.
Either way the attempt is charged at least the policy's estimate for the activity (its
true spend is unknown) and the refusal is logged, naming the activity.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import temporalio.activity
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue
from temporalio.exceptions import CancelledError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ActivityOutboundInterceptor,
    ExecuteActivityInput,
)

from ..context import (
    HEADER,
    BudgetContext,
    read_context,
    reset_activity_context,
    set_activity_context,
)
from ..errors import InvalidUsage
from ..policy import Policy
from ..usage import Usage, UsageMeter, reset_meter, set_meter, usage_in_result
from ._failures import marker_detail
from ._wire import attach_usage, carry_failure_usage, read_marker

_LOCAL_CARRY_LIMIT = 10_000
_logger = logging.getLogger(__name__)


class _LocalCarry:
    """Usage of failed local-activity attempts, kept in the worker process.

    Local activities retry inside the worker and cannot heartbeat, so the usage of a
    failed attempt waits here (keyed by run and activity id) for the next attempt.
    """

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[str, str], Usage] = OrderedDict()

    def put(self, key: tuple[str, str], usage: Usage) -> None:
        self._items[key] = usage
        self._items.move_to_end(key)
        while len(self._items) > _LOCAL_CARRY_LIMIT:
            self._items.popitem(last=False)

    def pop(self, key: tuple[str, str]) -> Usage | None:
        return self._items.pop(key, None)


class GovernedActivityInbound(ActivityInboundInterceptor):
    """Meters an activity attempt and attaches the usage of all attempts to its outcome."""

    def __init__(self, next: ActivityInboundInterceptor, policy: Policy, carry: _LocalCarry):
        super().__init__(next)
        self._policy = policy
        self._carry = carry
        self._outbound: GovernedActivityOutbound | None = None

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        self._outbound = GovernedActivityOutbound(outbound)
        super().init(self._outbound)

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        assert self._outbound is not None
        if HEADER not in input.headers:
            # dispatched by a run the governor does not govern (a plain run on a governed
            # worker, the governor's own ledger call): nothing to meter, nothing to add
            return await self.next.execute_activity(input)
        info = self._outbound.next.info()
        carry_key = (info.workflow_run_id or "", info.activity_id)
        meter = UsageMeter(price=self._policy.cost_usd, activity=_describe(info))
        earlier: Usage | None
        outbound = self._outbound
        if info.is_local:
            earlier = self._carry.pop(carry_key)
        else:
            earlier, _, problem = read_marker(info.heartbeat_details)
            if problem is not None:  # earlier attempts' usage is unknown: charge the estimate
                _logger.warning("governor: %s", meter.refuse(problem))
            # heartbeat the usage once the attempt goes on after a report: if its completion
            # never reaches the server (worker killed, server down), the retry still has it
            before = earlier
            # the agent's own heartbeats keep the earlier attempts' usage, and ours keep the
            # agent's last details
            outbound.adopt(info.heartbeat_details, before)
            meter.on_report = _on_the_loop(
                asyncio.get_running_loop(),
                functools.partial(
                    outbound.usage_reported,
                    lambda: self._total(meter, before, info.activity_type),
                ),
            )
        meter_token = set_meter(meter)
        context_token = set_activity_context(_context_of(input.headers))
        try:
            result = await self.next.execute_activity(input)
        except BaseException as error:
            if isinstance(error, InvalidUsage):
                _logger.warning("governor: %s", error)
            total = self._total(meter, earlier, info.activity_type)
            if isinstance(error, CancelledError | KeyboardInterrupt | SystemExit) or not (
                _has_spend(total)
            ):
                outbound.finished(send_pending=True)  # its failure may carry no usage
                raise
            outbound.finished()  # the heartbeat below carries it
            if info.is_local:
                self._carry.put(carry_key, total)
            else:
                self._outbound.heartbeat_usage(total)
            # the error goes on exactly as raised; its failure carries the usage
            carry_failure_usage(error, total)
            raise
        finally:
            reset_activity_context(context_token)
            reset_meter(meter_token)
        try:
            if not meter.reported:
                try:
                    found = usage_in_result(result, input.args)
                except InvalidUsage as refused:
                    _logger.warning("governor: %s", meter.refuse(str(refused)))
                    found = None
                if found is not None:
                    meter.add(found[0], found[1], None, found[2], 0)
            total = self._total(meter, earlier, info.activity_type)
            if not _has_spend(total) and total.attempts <= 1:
                outbound.finished()
                return result
            payload = (
                result.payload
                if isinstance(result, RawValue)
                else temporalio.activity.payload_converter().to_payload(result)
            )
            carried = RawValue(attach_usage(payload, total))
        except BaseException as error:
            # the result cannot carry the usage (it does not convert): the failure does,
            # and a heartbeat keeps it for the retry, as on any other failure
            total = self._total(meter, earlier, info.activity_type)
            if not _has_spend(total):
                outbound.finished(send_pending=True)
                raise
            outbound.finished()
            if info.is_local:
                self._carry.put(carry_key, total)
            else:
                self._outbound.heartbeat_usage(total)
            carry_failure_usage(error, total)
            raise
        # the usage goes with the result now built: a heartbeat of it still pending is
        # not needed
        outbound.finished()
        return carried

    def _total(self, meter: UsageMeter, earlier: Usage | None, activity_type: str) -> Usage:
        """The usage of every attempt so far.

        An attempt whose usage was refused is charged at least the policy's estimate.
        """
        this_attempt = meter.usage.model_copy(update={"attempts": 1})
        if meter.refused:
            estimate = self._policy.estimate_for_activity(activity_type)
            this_attempt = this_attempt.at_least(
                estimate.tokens, estimate.cost_usd, estimate.tool_calls, "; ".join(meter.refused)
            )
        return this_attempt if earlier is None else earlier + this_attempt


class GovernedActivityOutbound(ActivityOutboundInterceptor):
    """Hides the governor's heartbeat marker from activity code and keeps it on heartbeats.

    Reported usage is heartbeated as soon as the attempt goes on after the report (the
    next turn of the event loop), or with the agent's own next heartbeat if that comes
    first; an attempt that ends in the same step as its last report sends none, since its
    result or failure carries the usage (a failure heartbeats it for the retry anyway).
    """

    def __init__(self, next: ActivityOutboundInterceptor) -> None:
        super().__init__(next)
        self._marker: RawValue | None = None
        self._user_details: tuple[Any, ...] = ()
        self._pending: Callable[[], Usage] | None = None
        """The usage so far, to heartbeat: set by a report, cleared once sent."""
        self._flush: asyncio.Handle | None = None
        self._finished = False

    def info(self) -> temporalio.activity.Info:
        info = self.next.info()
        _, rest, _ = read_marker(info.heartbeat_details)
        if len(rest) == len(info.heartbeat_details):
            return info
        return dataclasses.replace(info, heartbeat_details=rest)

    def heartbeat(self, *details: Any) -> None:
        self._user_details = details
        if self._pending is not None:  # a report not heartbeated yet: this one carries it
            self._marker = marker_detail(self._take_pending())
        if self._marker is None:
            self.next.heartbeat(*details)
        else:
            self.next.heartbeat(*details, self._marker)

    def usage_reported(self, usage_so_far: Callable[[], Usage]) -> None:
        """Heartbeat the usage so far on the next turn of the event loop (unless ended).

        Called on the event loop after every report; ``usage_so_far`` is read when the
        heartbeat is sent, so reports in one step make one heartbeat.
        """
        if self._finished:
            return
        self._pending = usage_so_far
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._send_pending)

    def finished(self, send_pending: bool = False) -> None:
        """The attempt has ended: no heartbeat of its usage is sent later.

        Args:
            send_pending: Send a report not heartbeated yet now (the outcome does not
                carry the usage); else it is dropped (the outcome carries it).
        """
        if send_pending and self._pending is not None and not self._finished:
            self.heartbeat_usage(self._take_pending())
        self._finished = True
        self._pending = None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def _send_pending(self) -> None:
        self._flush = None
        if self._pending is not None and not self._finished:
            self.heartbeat_usage(self._take_pending())

    def _take_pending(self) -> Usage:
        assert self._pending is not None
        usage, self._pending = self._pending(), None
        return usage

    def adopt(self, details: Sequence[Any], earlier: Usage | None) -> None:
        """Start from the last heartbeat of the earlier attempts (without sending one).

        The agent's details are kept for the governor's own heartbeats, and the earlier
        attempts' usage for the agent's heartbeats, so neither erases the other.
        """
        _, self._user_details, _ = read_marker(details)
        self._marker = marker_detail(earlier) if earlier is not None else None

    def heartbeat_usage(self, usage: Usage) -> None:
        """Record the usage so far as the last heartbeat detail, for the next attempt."""
        self._pending = None
        self._marker = marker_detail(usage)
        self.next.heartbeat(*self._user_details, self._marker)


_CONTEXT_CACHE_LIMIT = 512
"""Most checked activity headers kept (by their bytes)."""
_CONTEXT_CACHE_BYTES = 16 * 1024
"""Headers larger than this are checked on every attempt, not kept."""
_contexts: OrderedDict[bytes, BudgetContext | None] = OrderedDict()


def _context_of(headers: Mapping[str, Payload]) -> BudgetContext | None:
    """The checked context of an activity's header (:func:`read_context`), kept by its bytes.

    Every dispatch of a run carries the same header until its degradation changes, so
    the parse and the checks run once per header, not once per attempt. The context is
    a pure function of the bytes; the cache is bounded (least recently used goes). The
    context returned is shared: :func:`set_activity_context` gives agent code a copy of
    its own when it asks, so nothing may change this one.
    """
    payload = headers.get(HEADER)
    if payload is None:
        return None
    data = payload.data
    if len(data) > _CONTEXT_CACHE_BYTES:
        return read_context(data)[0]
    try:
        context = _contexts[data]
        _contexts.move_to_end(data)
    except KeyError:
        context = read_context(data)[0]
        _contexts[data] = context
        if len(_contexts) > _CONTEXT_CACHE_LIMIT:
            _contexts.popitem(last=False)
    return context


def _on_the_loop(loop: asyncio.AbstractEventLoop, call: Callable[[], None]) -> Callable[[], None]:
    """``call``, run on ``loop`` even when invoked from another thread.

    ``report_usage`` may be called from a synchronous activity's thread or from
    ``asyncio.to_thread``; the SDK's heartbeat must run on the worker's event loop.
    """

    def run() -> None:
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            call()
        else:
            loop.call_soon_threadsafe(call)

    return run


def _describe(info: temporalio.activity.Info) -> str:
    """The activity as messages name it."""
    return (
        f"activity {info.activity_type} (id {info.activity_id}, attempt {info.attempt}) of "
        f"workflow {info.workflow_id}"
    )


def _has_spend(usage: Usage) -> bool:
    """Whether the usage is worth sending back (spend, or backpressure to route)."""
    return bool(
        usage.tokens or usage.cost_usd or usage.tool_calls or usage.backpressure or usage.refused
    )
