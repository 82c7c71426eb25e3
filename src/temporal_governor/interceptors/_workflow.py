"""Workflow side: reserve before every dispatch, commit after, halt on breach."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

import temporalio.workflow
from temporalio.common import RawValue, SearchAttributeUpdate
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    FailureError,
)
from temporalio.worker import (
    ContinueAsNewInput,
    ExecuteWorkflowInput,
    StartActivityInput,
    StartChildWorkflowInput,
    StartLocalActivityInput,
    WorkflowInboundInterceptor,
    WorkflowOutboundInterceptor,
)
from temporalio.workflow import ParentClosePolicy

from ..context import (
    HEADER,
    BudgetContext,
    decode_context,
    explicit_estimate,
    forget_workflow_context,
    register_workflow_context,
    with_context,
)
from ..control._messages import Keyring
from ..core.accounting import Amounts
from ..core.decisions import DecisionSink, Dispatch
from ..core.degradation import rewrite_arguments
from ..core.scopes import SharedLimit
from ..errors import (
    BUDGET_EXCEEDED,
    GOVERNANCE_KILLED,
    RUNAWAY_LOOP,
    BreachDetails,
    BudgetExceeded,
)
from ..ledger._workflow import LEDGER_ACTIVITY, LEDGER_WORKFLOW
from ..names import BUDGET_QUERY, MEMO_KEY, STATE_ATTRIBUTE, TENANT_ATTRIBUTE
from ..policy import Estimate, Policy
from ..usage import Usage
from ._control import ControlPlane, forget_plane, register_plane
from ._run import GovernedRun
from ._shared import Ticket
from ._versions import (
    CANCEL_PATCH,
    CLOSE_CHILDREN_PATCH,
    HALT_PATCH,
    KEY_ON_ASK_PATCH,
    Commands,
    UnmarkedRuns,
    lineage,
)
from ._wire import (
    USAGE_METADATA_KEY,
    attach_usage,
    carry_failure_usage,
    has_usage_marker,
    take_failure_usage,
    take_usage,
)

_ActivityStart = StartActivityInput | StartLocalActivityInput
_Starter = Callable[[Any], temporalio.workflow.ActivityHandle[Any]]
"""The next interceptor's ``start_activity`` or ``start_local_activity``."""
_GOVERNOR_FAILURES = (BUDGET_EXCEEDED, RUNAWAY_LOOP, GOVERNANCE_KILLED)


class GovernedWorkflowInbound(WorkflowInboundInterceptor):
    """Builds the run's budget from its headers, answers the budget query, enforces breach.

    A subclass bound to a policy is made per worker by :meth:`bind`.
    """

    policy: ClassVar[Policy]
    sinks: ClassVar[Sequence[DecisionSink]] = ()
    keyring: ClassVar[Keyring] = Keyring({})
    govern_new_runs: ClassVar[bool] = True
    unmarked_runs: ClassVar[UnmarkedRuns] = "plain"

    @classmethod
    def bind(
        cls,
        policy: Policy,
        sinks: Sequence[DecisionSink] = (),
        keyring: Keyring | None = None,
        *,
        govern_new_runs: bool = True,
        unmarked_runs: UnmarkedRuns = "plain",
    ) -> type[GovernedWorkflowInbound]:
        """A subclass of this interceptor that governs with ``policy`` and reports to ``sinks``.

        ``keyring`` verifies (and signs relayed) control messages. ``govern_new_runs`` and
        ``unmarked_runs`` say which runs are governed (see :func:`._versions.lineage`).
        """
        attributes = {
            "policy": policy,
            "sinks": tuple(sinks),
            "keyring": keyring or Keyring({}),
            "govern_new_runs": govern_new_runs,
            "unmarked_runs": unmarked_runs,
        }
        return type(cls.__name__, (cls,), attributes)

    def __init__(self, next: WorkflowInboundInterceptor) -> None:
        super().__init__(next)
        self._outbound: GovernedWorkflowOutbound | None = None

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        self._outbound = GovernedWorkflowOutbound(outbound)
        super().init(self._outbound)

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        assert self._outbound is not None
        if temporalio.workflow.info().workflow_type == LEDGER_WORKFLOW:
            return await self.next.execute_workflow(input)
        made_with = lineage(self.govern_new_runs, self.unmarked_runs)  # before any command
        if made_with is None:
            # began without the governor: plain for its whole life (no handlers, no commands)
            return await self.next.execute_workflow(input)
        context = decode_context(input.headers) or BudgetContext()
        run = GovernedRun(self.policy, context, self.sinks, self.keyring)
        run.shared.commands = Commands(made_with)
        context = run.context  # as judged: what the header could not prove is gone
        self._outbound.run = run
        temporalio.workflow.set_query_handler(BUDGET_QUERY, run.budget_query)
        plane = ControlPlane(run, self.keyring)
        run.control = plane
        self._outbound.plane = plane
        plane.install()
        register_workflow_context(run.info.run_id, context)
        register_plane(run.info.run_id, plane)
        main: asyncio.Future[Any] | None = None
        try:
            try:
                await _start(run, plane, context)
            except asyncio.CancelledError:
                if run.shared.commands.since(CANCEL_PATCH):
                    await _uninterrupted(run.shared.release_all())  # cancelled before agent code
                raise
            if run.breach is None:  # a fleet kill found at start stops it before its code runs
                main = asyncio.ensure_future(self.next.execute_workflow(input))
                main.add_done_callback(_retrieve)
                await _run_agent_code(run, main)
            if run.breach is not None or main is None:
                await _halt(run, main)
                _publish(run, "killed" if run.killed else "breached")
                raise run.final_error()
            if not _ends_the_run(main):
                # a plain exception fails the workflow *task*, not the run: the run lives on
                # (retried until the code is fixed) and keeps everything it holds
                return main.result()
            if _children_closing(run) and run.shared.commands.since(CLOSE_CHILDREN_PATCH):
                await _interruptible(_let_children_settle(run, cancel=True))
            await _uninterrupted(run.shared.release_all())
            try:
                result = main.result()
            except ApplicationError as error:
                _publish(run, "failed")
                spent = Usage.from_amounts(run.ledger.committed)
                # a governed parent must learn what it spent (a plain one would only see it)
                child = _governed_parent(run)
                # also on a governor-typed failure the run did not raise itself (a
                # grandchild's breach passed on, or one forged by agent code): the parent
                # must be charged this run's own spend, not the numbers in those details
                if child and spent.amounts().nonzero():
                    carry_failure_usage(error, spent)  # the error itself stays as raised
                raise
            await _learn(run)
            _publish(run, "completed")
            payload = (
                result.payload
                if isinstance(result, RawValue)
                else temporalio.workflow.payload_converter().to_payload(result)
            )
            return RawValue(attach_usage(payload, Usage.from_amounts(run.ledger.committed)))
        finally:
            if not run.breached.done():
                run.breached.cancel()
            if _evicting():
                # the SDK cancels the tasks it made, not the governor's handles: left
                # suspended, they would be closed by the garbage collector later, on any
                # thread, and a `finally` there could issue commands into another run
                for handle in list(run.in_flight):
                    handle.cancel()
            forget_workflow_context(run.info.run_id)
            forget_plane(run.info.run_id)


HALT_GRACE = timedelta(seconds=30)
"""How long a halted run lets its in-flight activities finish before it cancels them."""

CHILD_SETTLE_TIMEOUT = timedelta(seconds=10)
"""How long a closing run waits for the children it cancelled to settle their own budgets."""


async def _let_activities_finish(run: GovernedRun) -> None:
    """Let a halted run's in-flight activities finish (bounded), so what they spent is known.

    They were reserved within the budget before the halt, so finishing them overspends
    nothing; a run cannot dispatch anything new once halted. What is still running after
    :data:`HALT_GRACE` is cancelled and charged its reservation.
    """
    activities = [h for h in run.in_flight if isinstance(h, _GovernedActivityHandle)]
    if activities:
        await temporalio.workflow.wait(
            activities, timeout=HALT_GRACE.total_seconds(), return_when=asyncio.ALL_COMPLETED
        )


def _children_closing(run: GovernedRun) -> bool:
    """Whether children the parent-close policy ``TERMINATE`` would cut off still run."""
    return any(isinstance(h, _GovernedChildHandle) and h.terminated_on_close for h in run.in_flight)


def _governed_parent(run: GovernedRun) -> bool:
    """Whether a governed parent started the run (its start header proved it).

    A parent's chain is believed only when its last link is the run's parent, so a run of
    a plain parent (one that began before the governor was adopted) has none.
    """
    parent = run.info.parent
    chain = run.context.chain
    return parent is not None and bool(chain) and chain[-1].run_id == parent.run_id


async def _let_children_settle(run: GovernedRun, cancel: bool) -> None:
    """Wait (bounded) for children that close with this run to settle their own budgets.

    A child still running when its parent closes is terminated by the default parent-close
    policy (``TERMINATE``) and can settle nothing. With ``cancel`` such children are
    cancelled first (a halted run has cancelled all of its children already); given
    :data:`CHILD_SETTLE_TIMEOUT`, each hands the cancellation to its agent code and settles
    its shared leases exactly (see ``_run_agent_code``). Children with ``ABANDON`` or
    ``REQUEST_CANCEL`` policies settle by themselves and are left alone.
    """
    children = [
        h
        for h in run.in_flight
        if isinstance(h, _GovernedChildHandle) and (h.terminated_on_close or not cancel)
    ]
    if not children:
        return
    if cancel:
        for child in children:
            child.cancel()
    await temporalio.workflow.wait(
        children, timeout=CHILD_SETTLE_TIMEOUT.total_seconds(), return_when=asyncio.ALL_COMPLETED
    )
    for child in children:  # their outcome is the governor's to see, not asyncio's to log
        if child.done():
            _retrieve(child)


async def _halt(run: GovernedRun, main: asyncio.Future[Any] | None) -> None:
    """Stop a halted run: finish or cancel what runs, let children settle, settle the rest.

    A cancellation of the run that arrives meanwhile cuts the waiting short, never the
    settling: the run still fails with its breach or kill. A run of the previous release
    (:data:`HALT_PATCH` not taken) cancels everything at once, as that release did.
    """
    grace = run.shared.commands.since(HALT_PATCH)
    if grace and not run.killed:
        await _interruptible(_let_activities_finish(run))
    if main is not None:
        main.cancel()
    for handle in list(run.in_flight):
        handle.cancel()
    # let the cancellations become commands before the run fails
    for _ in range(3):
        await asyncio.sleep(0)
    if grace:
        await _interruptible(_let_children_settle(run, cancel=False))
    await _uninterrupted(run.shared.release_all())


def _ends_the_run(main: asyncio.Future[Any]) -> bool:
    """Whether the agent code's outcome closes the run (else it only fails a workflow task).

    Success, a Temporal failure (``ApplicationError``, cancellation ...), a cancellation
    and continue-as-new close the run. Any other exception fails the workflow task, which
    is retried; exceptions a worker configures as workflow failures
    (``workflow_failure_exception_types``) are not visible here and are treated as such:
    what such a run holds expires and is charged in full (see docs/shared.md).
    """
    if main.cancelled():
        return True
    error = main.exception()
    return error is None or isinstance(
        error,
        FailureError | asyncio.CancelledError | temporalio.workflow.ContinueAsNewError,
    )


async def _uninterrupted(step: Coroutine[Any, Any, None]) -> None:
    """Run a settling step to its end even if the run is cancelled meanwhile.

    The cancellation is absorbed: a run settling its budget has already finished its
    agent code (or is failing with a breach), and leaving the ledger half-settled would
    hold budget until the reservations expire.
    """
    task = asyncio.ensure_future(step)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()


async def _interruptible(wait: Coroutine[Any, Any, None]) -> None:
    """A bounded wait that a cancellation of the run cuts short (and is absorbed)."""
    with contextlib.suppress(asyncio.CancelledError):
        await wait


async def _run_agent_code(run: GovernedRun, main: asyncio.Future[Any]) -> None:
    """Wait for the agent code to end, or for a halt, passing a cancellation on to it.

    The SDK cancels only the run's primary task (this interceptor); agent code runs in a
    task of its own, so a cancellation of the run (client cancel, parent-close policy
    ``REQUEST_CANCEL``) is handed to it here, and its ``except``/``finally`` blocks, its
    activities' cancellation and cleanup run exactly as without the governor. A run of
    the previous release that was cancelled before :data:`CANCEL_PATCH` existed ends
    cancelled at once, as it did then.
    """
    while True:
        try:
            await temporalio.workflow.wait(
                [main, run.breached], return_when=asyncio.FIRST_COMPLETED
            )
            return
        except asyncio.CancelledError:
            if not run.shared.commands.since(CANCEL_PATCH):
                raise
            main.cancel()


class GovernedWorkflowOutbound(WorkflowOutboundInterceptor):
    """Wraps every activity, local activity and child workflow dispatch of a run."""

    run: GovernedRun | None = None
    plane: ControlPlane | None = None
    """The run's control plane (its pause and backpressure gate every dispatch)."""

    def start_activity(self, input: StartActivityInput) -> temporalio.workflow.ActivityHandle[Any]:
        return self._start_activity(input, self.next.start_activity)

    def start_local_activity(
        self, input: StartLocalActivityInput
    ) -> temporalio.workflow.ActivityHandle[Any]:
        return self._start_activity(input, self.next.start_local_activity)

    def _start_activity(
        self, input: _ActivityStart, start: _Starter
    ) -> temporalio.workflow.ActivityHandle[Any]:
        if self.run is None or input.activity == LEDGER_ACTIVITY:
            return start(input)
        assert self.plane is not None
        activity = _Activity(self.run, self.plane, input, start)
        wait = activity.admit()
        return self.run.track(activity.launch(wait))

    async def start_child_workflow(
        self, input: StartChildWorkflowInput
    ) -> temporalio.workflow.ChildWorkflowHandle[Any, Any]:
        if self.run is None:
            return await self.next.start_child_workflow(input)
        run: GovernedRun = self.run
        plane = self.plane
        assert plane is not None
        explicit = explicit_estimate() or _amounts(run.policy.estimate_for_child(input.workflow))
        dispatch = run.child(input.workflow, input.id)
        run.raise_if_halted()
        wait = run.guard.admit(dispatch, input.args)
        input.priority = run.guard.priority(dispatch, input.priority)
        if wait > 0:
            await temporalio.workflow.sleep(wait)
        await _gate_and_pace(run, plane, dispatch, paced=False)
        try:
            allowance = run.carve(dispatch, explicit)
        except BaseException:
            plane.finished()
            raise
        key = dispatch.key
        reserved = run.ledger.reservations[key]
        context = BudgetContext(
            attribution=run.context.attribution,
            chain=[*run.context.chain, run.link],
            allowance=allowance,
            deadline=run.deadline,
            max_depth=run.max_depth,
            max_depth_scope=run.max_depth_scope,
            guard_state=run.guard.inherit(),
        )
        input.headers = with_context(input.headers, context)
        ret_type = input.ret_type
        input.ret_type = RawValue
        limits = run.shared.limits_for(None)
        ticket = None
        try:
            if limits:
                ticket = await run.shared.reserve(
                    key,
                    limits,
                    {"subtasks": 1.0, "concurrency": 1.0},
                    dispatch.label,
                    priority=run.guard.priority_class(dispatch),
                )
            inner = await self.next.start_child_workflow(input)
        except BaseException:
            run.release(key)
            plane.finished()
            if ticket is not None:
                await run.shared.settle(ticket, {})
            raise
        plane.joined(key, input.id)
        charge = functools.partial(_child_amounts, reserved=reserved)
        entered = _Entered()
        settle = _settled_child(
            entered,
            plane,
            key,
            functools.partial(_settle, run, plane, dispatch, inner, ret_type, charge, ticket),
        )
        handle = _GovernedChildHandle(inner, settle)
        handle.terminated_on_close = input.parent_close_policy == ParentClosePolicy.TERMINATE
        handle.add_done_callback(
            functools.partial(
                _never_ran, entered, run, key, lambda: reserved, functools.partial(plane.left, key)
            )
        )
        return run.track(handle)

    def continue_as_new(self, input: ContinueAsNewInput) -> Any:
        run = self.run
        if run is None:
            return self.next.continue_as_new(input)
        context = run.context.model_copy(
            update={
                "carried": run.ledger.committed + run.ledger.reserved,
                "deadline": run.deadline,
                "controls": {},
                "guard_state": {
                    **(run.guard.carry() or {}),
                    **({"control": self.plane.carry()} if self.plane else {}),
                },
            }
        )
        input.headers = with_context(input.headers, context)
        return self.next.continue_as_new(input)


@dataclass(frozen=True)
class _Attempt:
    """One attempt of an activity dispatch: reserved and started."""

    dispatch: Dispatch
    inner: temporalio.workflow.ActivityHandle[Any]
    ticket: Ticket | None
    """Its reservation in shared scopes, if any apply."""


class _Activity:
    """One activity dispatch of agent code, in four steps: admit, reserve, dispatch, settle.

    In the common case it is reserved and started at once, in the workflow task of the
    agent code that asked for it (:meth:`launch`). A dispatch that must wait first (for a
    throttle, a pause, backpressure or the shared ledger) is reserved and started by its
    handle's coroutine; so is one a pause cancelled, again once the pause ends, under a
    new key.

    A run takes the dispatch's key when agent code asks for it, so the guards' records
    carry it (a re-dispatch takes its new key before its wait). A run recorded before
    :data:`KEY_ON_ASK_PATCH` takes it when the dispatch is reserved, after the guards and
    its wait, as it did then: its keys are its ledger keys and update ids, and must stay
    what its history made them.
    """

    def __init__(
        self, run: GovernedRun, plane: ControlPlane, input: _ActivityStart, start: _Starter
    ) -> None:
        self.run = run
        self.plane = plane
        self.input = input
        self.start = start
        counts, planned = run.activity_plan(input.activity)
        explicit = explicit_estimate()
        self.wanted = planned if explicit is None else explicit + Amounts(tool_calls=counts)
        """What the dispatch reserves in the run's ledger."""
        self.counts = counts
        """The tool calls the dispatch itself counts."""
        self.dispatch = Dispatch("activity", input.activity, "")
        """The dispatch of the current attempt (keyed once admitted)."""
        self.limits: list[SharedLimit] = []
        self.ret_type: type | None = None
        self.entered = _Entered()
        self.handle: _GovernedActivityHandle | None = None
        self._key_taken = False
        """Whether an attempt has taken the admitted key (a re-dispatch takes a new one)."""
        self._key_on_ask = True
        """Whether the key is taken when agent code asks (else when reserved)."""

    @property
    def shared_amounts(self) -> dict[str, float]:
        """What the dispatch reserves in shared scopes."""
        return {**self.wanted.nonzero(), "concurrency": 1.0}

    def charge(self, usage: Usage | None) -> Amounts:
        """What a finished attempt costs the run, from the usage it carried back."""
        return _activity_amounts(usage, self.counts)

    def admit(self) -> float:
        """Ask the run's guards, and shape the input as they decide.

        Raises:
            BudgetExceeded: The run is halted, or a guard halts it now.
            ApplicationError: ``ToolDisabled`` (a degrade rule disabled the tool).

        Returns:
            Seconds the dispatch must wait before it starts.
        """
        run, input = self.run, self.input
        run.raise_if_halted()
        self._key_on_ask = run.shared.commands.since(KEY_ON_ASK_PATCH)
        if self._key_on_ask:
            self.dispatch = run.activity(input.activity)
        # else it stays unkeyed until it is reserved (its guards' records have no key)
        wait = run.guard.admit(self.dispatch, input.args)
        decision = run.guard.decision
        if decision is not None and decision.rewrite_arguments:
            input.args = rewrite_arguments(input.args, decision)
        if isinstance(input, StartActivityInput):  # local activities have no priority
            input.priority = run.guard.priority(self.dispatch, input.priority)
        input.headers = {**input.headers, HEADER: run.activity_header(decision)}
        self.ret_type = input.ret_type
        input.ret_type = RawValue
        self.limits = run.shared.limits_for(input.activity)
        return wait

    def launch(self, wait: float) -> _GovernedActivityHandle:
        """The handle agent code gets: the activity started now, or by the handle later.

        Args:
            wait: Seconds the guards hold the dispatch back.
        """
        if self.limits or wait > 0 or self.plane.holds():
            return self._handle(None, self._flow(None, paced=False, hold=wait))
        bucket = self.run.guard.pace(self.dispatch)
        if bucket > 0:  # the token is taken: wait for it, then gate and start
            return self._handle(None, self._flow(None, paced=True, hold=bucket))
        # the common case: reserve and start now, in the same workflow task as agent code
        attempt = self._reserve_and_start()
        handle = self._handle(attempt.inner, self._flow(attempt, paced=True, hold=0.0))
        handle.add_done_callback(
            functools.partial(
                _never_ran,
                self.entered,
                self.run,
                attempt.dispatch.key,
                functools.partial(self.charge, None),
                self.plane.finished,
            )
        )
        return handle

    def _handle(
        self,
        inner: temporalio.workflow.ActivityHandle[Any] | None,
        flow: Coroutine[Any, Any, Any],
    ) -> _GovernedActivityHandle:
        self.handle = _GovernedActivityHandle(inner, flow)
        return self.handle

    def _attempt(self) -> Dispatch:
        """The dispatch of the next attempt: the admitted key first, then a new one each.

        A run that takes keys when reserved (see the class) takes a new one every attempt.
        """
        if self._key_taken or not self._key_on_ask:
            self.dispatch = self.run.activity(self.input.activity)
        self._key_taken = True
        return self.dispatch

    def _unkeyed(self) -> Dispatch:
        """The dispatch before it is keyed (a run that takes keys when reserved)."""
        return Dispatch("activity", self.input.activity, "")

    def _reserve_and_start(self) -> _Attempt:
        """Reserve the dispatch in the run's ledger and start it (nothing holds it)."""
        dispatch = self._attempt()
        self.run.reserve(dispatch, self.wanted)
        try:
            inner = self.start(self.input)
        except BaseException:
            self.run.release(dispatch.key)
            raise
        self.plane.started()
        return _Attempt(dispatch, inner, None)

    async def _dispatch(self, hold: float, paced: bool) -> _Attempt:
        """Wait ``hold`` seconds, then gate, pace, reserve (here and shared) and start."""
        run, plane = self.run, self.plane
        if hold > 0:
            await temporalio.workflow.sleep(hold)
        while True:
            if self._key_on_ask:
                dispatch = self._attempt()
                await _gate_and_pace(run, plane, dispatch, paced)
            else:  # keyed once the gate and the throttle let it go, as it was recorded
                await _gate_and_pace(run, plane, self._unkeyed(), paced)
                dispatch = self._attempt()
            paced = True
            try:
                run.reserve(dispatch, self.wanted)
            except BaseException:
                plane.finished()
                raise
            ticket = None
            try:
                if self.limits:
                    ticket = await run.shared.reserve(
                        dispatch.key,
                        self.limits,
                        self.shared_amounts,
                        dispatch.label,
                        priority=run.guard.priority_class(dispatch),
                    )
                if run.breach is not None and run.shared.commands.since(HALT_PATCH):
                    run.raise_if_halted()  # halted while it waited for the ledger
                if plane.paused is None:
                    return _Attempt(dispatch, self.start(self.input), ticket)
            except BaseException:
                run.release(dispatch.key)
                plane.finished()
                if ticket is not None:
                    await run.shared.settle(ticket, {})
                raise
            # paused while the ledger was asked: give the slot back, wait for the resume
            run.release(dispatch.key)
            plane.finished()
            if ticket is not None:
                await run.shared.settle(ticket, {})

    async def _flow(self, first: _Attempt | None, paced: bool, hold: float) -> Any:
        """The handle's coroutine: dispatch (unless started already), then settle.

        An attempt a pause cancelled is dispatched again once the pause ends.
        """
        self.entered.yes = True
        plane, attempt = self.plane, first
        assert self.handle is not None
        while True:
            if attempt is None:
                attempt = await self._dispatch(hold, paced)
                hold, paced = 0.0, False
            key = attempt.dispatch.key
            self.handle.inner = attempt.inner
            plane.activities[key] = self.handle
            try:
                return await _settle(
                    self.run,
                    plane,
                    attempt.dispatch,
                    attempt.inner,
                    self.ret_type,
                    self.charge,
                    attempt.ticket,
                )
            except ActivityError:
                if key not in plane.cancelled_by_pause:
                    raise
                attempt = None  # paused: dispatch it again once resumed
            finally:
                plane.cancelled_by_pause.discard(key)
                plane.activities.pop(key, None)
                plane.finished()


async def _settle(
    run: GovernedRun,
    plane: ControlPlane,
    dispatch: Dispatch,
    inner: Awaitable[RawValue],
    ret_type: type | None,
    charge: Callable[[Usage | None], Amounts],
    ticket: Ticket | None = None,
) -> Any:
    """Await a dispatch, commit what it used (success, failure or cancel), return its result.

    With a shared-scope ``ticket`` the usage is also settled in the shared scopes. A
    dispatch cancelled before it reported (by a pause, by agent code, by the run's own
    cancellation) is charged its whole reservation: what it spent before it stopped is
    unknown, and the governor never assumes money was not spent. The run's guard counts
    the outcome against the dispatch's target.
    """
    kind, name, key = dispatch.kind, dispatch.target, dispatch.key
    actual: Amounts | None = None
    settle_shared = True
    dispatched_at = temporalio.workflow.time_ns()  # the workflow task that started it
    try:
        raw = await inner
    except (ActivityError, ChildWorkflowError) as error:
        refused = has_usage_marker(error.cause)
        usage = take_failure_usage(error.cause) or _breach_usage(error.cause, run, kind)
        refused = refused and usage is None  # there, but not believable: unknown
        paused = key in plane.cancelled_by_pause
        if usage is None and refused:
            actual = run.ledger.reservations.get(key) or charge(None)
        elif usage is None and (paused or isinstance(error.cause, CancelledError)):
            if kind == "activity" and temporalio.workflow.time_ns() == dispatched_at:
                # cancelled in the workflow task that started it: the schedule command was
                # never sent, so nothing ran and nothing was spent
                actual = charge(None)
            else:
                # cancelled before it could report: what it spent is unknown
                actual = run.ledger.reservations.get(key) or charge(None)
        else:
            actual = charge(usage)
        run.commit(key, actual, usage.models if usage else None)
        settle_shared = run.breach is None  # before a verdict below may halt the run
        if usage is not None and usage.backpressure and kind == "activity":
            plane.emitted(usage.backpressure, name)
        if not paused and not isinstance(error.cause, CancelledError):
            # a cancel (a hedged call, a timeout in agent code) is no failure of the tool
            run.guard.after(dispatch, False, actual.cost_usd)
        raise
    except GeneratorExit:
        raise  # the coroutine is closed unfinished (the run left the cache): no outcome
    except BaseException:
        if not _evicting():
            # cancelled (or cut off) before an outcome came back: charge what it reserved
            actual = run.ledger.reservations.get(key) or charge(None)
            run.commit(key, actual)
            settle_shared = run.breach is None
        raise
    else:
        reported = USAGE_METADATA_KEY in raw.payload.metadata
        usage = take_usage(raw.payload)
        if usage is None and reported:  # there, but not believable: charge the reservation
            actual = run.ledger.reservations.get(key) or charge(None)
        else:
            actual = charge(usage)
        run.commit(key, actual, usage.models if usage else None)
        settle_shared = run.breach is None  # before a verdict below may halt the run
        if usage is not None and usage.backpressure:
            plane.emitted(usage.backpressure, name)
        run.guard.after(dispatch, True, actual.cost_usd)
        return _decode(raw, ret_type)
    finally:
        if ticket is not None and actual is not None:
            run.shared.record(ticket, actual.nonzero())
            if settle_shared:
                await run.shared.flush(ticket)


async def _gate_and_pace(
    run: GovernedRun, plane: ControlPlane, dispatch: Dispatch, paced: bool
) -> None:
    """Wait until a dispatch may start, then take its throttle token (unless ``paced``).

    The token is taken once the pause and backpressure gate lets the dispatch through, and
    taken again after a pause held it, so held dispatches do not all go at once on resume.
    Counts the dispatch as running when it returns, like the gate.
    """
    while True:
        if await plane.gate():
            paced = False  # held by a pause: take a fresh token
        if paced:
            return
        paced = True
        wait = run.guard.pace(dispatch)
        if wait <= 0:
            return
        plane.finished()
        await temporalio.workflow.sleep(wait)


async def _settled_child(
    entered: _Entered, plane: ControlPlane, key: str, settle: Callable[[], Awaitable[Any]]
) -> Any:
    """A child's settlement that also tells the control plane the child has ended.

    ``settle`` is made only once this runs: a handle cancelled before its first step
    would otherwise leave an unawaited coroutine behind (see :func:`_never_ran`).
    """
    entered.yes = True
    try:
        return await settle()
    finally:
        plane.left(key)


async def _start(run: GovernedRun, plane: ControlPlane, context: BudgetContext) -> None:
    """Everything before agent code runs; a halt here (``run.breach``) stops it running."""
    if run.policy.visibility.search_attributes:
        temporalio.workflow.upsert_search_attributes(
            [TENANT_ATTRIBUTE.value_set(context.attribution.tenant), _state("running")]
        )
    carried = (context.guard_state or {}).get("control")
    if carried:
        plane.restore(carried)  # the pause and nonces of the run before a continue-as-new
    if context.controls:
        # fleet-wide kills the starting client found in the ledger (see _client.py)
        plane.apply_stored(context.controls)
    try:
        run_limits = run.shared.limits_for(None, kind="run")
        if run_limits and run.breach is None:
            # a concurrency slot for the run itself (max_concurrent_tasks), before its code
            await run.shared.reserve(
                "run",
                run_limits,
                {"concurrency": 1.0},
                "run start",
                priority=run.guard.priority_class(None),
            )
    except BudgetExceeded:
        return  # run.breach is set: the run fails with it
    if run.guard.anomaly is not None and run.breach is None:
        try:
            run.guard.load_baselines(await run.shared.baselines(run.guard.baseline_keys()))
        except (
            ActivityError,
            ApplicationError,
        ) as error:  # fail open: a ledger outage does not stop agents
            temporalio.workflow.logger.warning(
                "governor: no spend baselines (%s); anomalies are not judged in this run", error
            )


async def _learn(run: GovernedRun) -> None:
    """Fold a healthy completed run's spend into the ledger's baselines (fail open)."""
    anomaly = run.guard.anomaly
    learnt = run.guard.observations()
    if anomaly is None or not learnt:
        return
    try:
        await run.shared.observe(learnt, anomaly.alpha, anomaly.min_samples)
    except (ActivityError, ApplicationError) as error:
        temporalio.workflow.logger.warning("governor: baselines not updated (%s)", error)


class _Entered:
    """Whether a dispatch's settling coroutine has started running."""

    yes = False


def _never_ran(
    entered: _Entered,
    run: GovernedRun,
    key: str,
    spent: Callable[[], Amounts],
    ended: Callable[[], None],
    task: asyncio.Future[Any],
) -> None:
    """Settle a dispatch whose handle was cancelled before its coroutine ever ran.

    Cancelling a task before its first step closes the coroutine unstarted, so its own
    commit and bookkeeping never happen; do them here (the dispatch's outcome is unknown,
    so it is charged as a cancel).
    """
    if entered.yes or _evicting():
        return
    if key in run.ledger.reservations:
        run.commit(key, spent())
    ended()


def _evicting() -> bool:
    """Whether the worker is evicting this run from its cache (not a real cancellation).

    The SDK cancels every task of an evicted run; that is no outcome of the dispatch, and
    committing it would hand sinks settle records no history event stands for.

    No public API says a run is being evicted (temporalio 1.35: ``cancellation_reason()``
    is for server cancels only, and eviction also marks the run as replaying). What the
    SDK does publicly is refuse every workflow action while it evicts, with an exception
    of its own (not an ``Exception``), so ask for ``workflow.random()``: it has no side
    effect (it returns the run's generator) and is refused otherwise only in a query or
    an update validator (``ReadOnlyContextError``), where no eviction happens.
    """
    if not temporalio.workflow.in_workflow():
        return False  # a coroutine closed by the garbage collector, outside any run
    try:
        temporalio.workflow.random()
    except temporalio.workflow.ReadOnlyContextError:
        return False
    except BaseException:  # the SDK refusing an action while it evicts the run
        return True
    return False


def _amounts(estimate: Estimate) -> Amounts:
    """The amounts a policy estimate reserves."""
    return Amounts(
        tokens=estimate.tokens, cost_usd=estimate.cost_usd, tool_calls=estimate.tool_calls
    )


def _state(state: str) -> SearchAttributeUpdate[str]:
    return STATE_ATTRIBUTE.value_set(state)


def _publish(run: GovernedRun, state: str) -> None:
    """Show how the run ended in its memo and search attributes, as the policy asks."""
    visibility = run.policy.visibility
    if visibility.search_attributes:
        temporalio.workflow.upsert_search_attributes([_state(state)])
    if visibility.memo:
        temporalio.workflow.upsert_memo({MEMO_KEY: run.summary(state)})


def _decode(raw: RawValue, ret_type: type | None) -> Any:
    """Convert a result payload to the type agent code asked for."""
    hints = [ret_type] if ret_type is not None else None
    return temporalio.workflow.payload_converter().from_payloads([raw.payload], hints)[0]


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark the agent code's outcome as seen (it may be superseded by a breach)."""
    if not task.cancelled():
        task.exception()


def _activity_amounts(usage: Usage | None, counts: float) -> Amounts:
    """What an activity attempt costs: its usage and the tool call it counts as."""
    if usage is None:
        return Amounts(tool_calls=counts)
    return Amounts(
        tokens=float(usage.tokens),
        cost_usd=usage.cost_usd,
        tool_calls=float(usage.tool_calls) + counts,
        subtasks=float(usage.subtasks),
        child_workflows=float(usage.child_workflows),
    )


def _breach_usage(error: BaseException | None, run: GovernedRun, kind: str) -> Usage | None:
    """The spend in a child's own halt, if the failure is exactly that.

    Only details on the failure itself (not deeper in its causes), of a run directly
    below this one: a grandchild's breach passed on by a child says nothing of the child's
    own spend, which is then unknown (the child is charged its whole carve).
    """
    if kind != "child" or not isinstance(error, ApplicationError):
        return None
    if error.type not in _GOVERNOR_FAILURES:
        return None
    details = BreachDetails.from_error(error)
    if details is None or len(details.chain) < 2 or details.chain[-2] != run.link:
        return None
    return Usage.from_amounts(Amounts(**details.spent))


def _child_amounts(usage: Usage | None, reserved: Amounts) -> Amounts:
    """What a finished child costs its parent: its subtree's spend, itself, one subtask.

    A child whose spend is unknown (terminated from outside, timed out) is charged its
    whole reservation: the governor never assumes money was not spent.
    """
    if usage is None:
        return reserved
    spent = usage.amounts()
    return spent.model_copy(
        update={"subtasks": 1.0, "child_workflows": spent.child_workflows + 1.0}
    )


class _GovernedActivityHandle(temporalio.workflow.ActivityHandle[Any]):
    """The handle agent code gets: resolves to the converted result once usage is settled.

    With shared scopes the real activity starts only after the ledger granted it, so
    ``inner`` is set later.
    """

    def __init__(
        self,
        inner: temporalio.workflow.ActivityHandle[Any] | None,
        settle: Coroutine[Any, Any, Any],
    ):
        super().__init__(settle)
        self.inner = inner

    def cancel(self, msg: Any | None = None) -> bool:
        if self.inner is not None:
            self.inner.cancel(msg)
        return super().cancel(msg)


class _GovernedChildHandle(temporalio.workflow.ChildWorkflowHandle[Any, Any]):
    """The child handle agent code gets: same id and signals, result after settling."""

    terminated_on_close = True
    """The child's parent-close policy is ``TERMINATE`` (the default)."""

    def __init__(
        self,
        inner: temporalio.workflow.ChildWorkflowHandle[Any, Any],
        settle: Coroutine[Any, Any, Any],
    ):
        super().__init__(settle)
        self._inner = inner

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def first_execution_run_id(self) -> str | None:
        return self._inner.first_execution_run_id

    async def signal(self, *args: Any, **kwargs: Any) -> None:
        await self._inner.signal(*args, **kwargs)

    def cancel(self, msg: Any | None = None) -> bool:
        self._inner.cancel(msg)
        return super().cancel(msg)
