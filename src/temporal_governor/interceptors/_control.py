"""A governed run's control plane: kill, resume, backpressure and override, all audited.

The decisions are the pure core's (:mod:`temporal_governor.core.control`); this module is the
glue around them. It receives the four control signals, has their payloads checked
(:class:`~temporal_governor.control.ControlCheck`: decoding, signature, freshness, nonces),
asks the core what to do, and turns its effects into Temporal commands: signals relayed to
other runs of the tree, timers, search attributes, the run's halt, records in the audit trail.

Everything here runs in workflow code and is deterministic: signals arrive through
history, time is workflow time, waits are workflow timers and conditions, nonces for
relayed messages come from ``workflow.uuid4()``. A replay with the same keys reaches the
same verdicts.

The signal handlers take the payload undecoded (:class:`~temporalio.common.RawValue`) and the
governor decodes it itself (:func:`~temporal_governor.control.decode_payload`): a payload the
SDK could not decode, or one above the size cap, is rejected and audited, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import temporalio.workflow
from pydantic import ValidationError
from temporalio.common import RawValue

from ..context import BudgetContext
from ..control._messages import (
    BACKPRESSURE_SIGNAL,
    CONTROL_QUERY,
    MESSAGE_OF_SIGNAL,
    AnyControl,
    BackpressureMessage,
    ControlCheck,
    Keyring,
    KillMessage,
    decode_payload,
    encode_message,
    overridable,
)
from ..core import control as core
from ..core.accounting import Limit, RunLedger
from ..core.control import (
    ActiveBackpressure,
    ActiveOverride,
    AwaitResume,
    AwaitSlot,
    CancelInFlight,
    ControlRecord,
    ControlRules,
    ControlState,
    ControlStatus,
    Effect,
    Go,
    Halt,
    OwnLimit,
    PollFleet,
    Record,
    RelayTo,
    SetCeiling,
    ShowState,
    SleepUntil,
    Step,
    WatchPause,
)
from ..errors import KILL_LIMIT, BreachDetails, BudgetExceeded, GovernanceKilled
from ..names import STATE_ATTRIBUTE
from ..policy import PER_TASK_LIMITS, ControlSettings, Policy

_ONE_RAW_PAYLOAD = inspect.Signature(
    [inspect.Parameter("payload", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=RawValue)],
    return_annotation=None,
)
"""What a control signal handler shows the SDK: one parameter, an undecoded payload."""


class FleetReader(Protocol):
    """What the control plane uses of a run's shared budget: asking for fleet controls."""

    async def fleet_controls(self) -> None:
        """Ask the ledger for kills and resumes of the run's tenant and agent it has not seen."""
        ...


class ControlledRun(Protocol):
    """What the control plane uses of the governed run it serves (``GovernedRun``)."""

    @property
    def policy(self) -> Policy:
        """The policy the run is governed by (its ``control`` and ``visibility``)."""
        ...

    @property
    def info(self) -> temporalio.workflow.Info:
        """The run's workflow info."""
        ...

    @property
    def context(self) -> BudgetContext:
        """The run's budget context (its tenant, its parent chain)."""
        ...

    @property
    def agent(self) -> str:
        """The run's workflow type."""
        ...

    @property
    def scope(self) -> str:
        """The run's own budget scope, e.g. ``run planner/wf-1``."""
        ...

    @property
    def ledger(self) -> RunLedger:
        """The run's budget ledger (an override changes one of its limits)."""
        ...

    @property
    def shared(self) -> FleetReader:
        """The run's shared budget (a fleet pause polls it for its resume)."""
        ...

    @property
    def breach(self) -> BudgetExceeded | None:
        """What halted the run, if it is halted."""
        ...

    @property
    def killed(self) -> bool:
        """Whether the run was halted by a kill (``GovernanceKilled``)."""
        ...

    def stop(self, error: BudgetExceeded, *, refused: str | None = None) -> BudgetExceeded:
        """Halt the run with ``error`` (``GovernanceKilled`` here), the one way to halt it."""
        ...

    def raise_if_halted(self) -> None:
        """Raise the run's halt again if it is halted."""
        ...

    def hard_ceiling(self, limit_name: str) -> float:
        """The ceiling no override can lift for one of the run's own per-task limits."""
        ...

    def details(self, **fields: Any) -> BreachDetails:
        """Breach details of this run: ``fields`` plus its chain, tenant and spend so far."""
        ...

    def control_event(self, record: ControlRecord) -> None:
        """Log a control message the run accepted or rejected."""
        ...


def control_rules(settings: ControlSettings) -> ControlRules:
    """The policy's ``control`` section as the pure core takes it."""
    return ControlRules(
        pause_timeout=settings.pause_timeout,
        above_ceiling=settings.above_ceiling,
        max_override=settings.max_override,
        backpressure_propagation=settings.backpressure_propagation,
        max_backpressure=settings.max_backpressure,
        check_kills_at_start=settings.check_kills_at_start,
        overridable=frozenset(name for name in PER_TASK_LIMITS if overridable(name)),
    )


class ControlPlane:
    """The control state of one governed run, its signal handlers and its dispatch gate."""

    def __init__(self, run: ControlledRun, keyring: Keyring) -> None:
        self.run = run
        self.settings = run.policy.control
        self.rules = control_rules(self.settings)
        self.keyring = keyring
        self.check = ControlCheck(keyring, self.settings)
        self.state = ControlState()
        """The decision state (pause, backpressure, overrides, children, fleet kills)."""
        self.audit = core.AuditTrail()
        self.running = 0
        """Dispatches started and not yet settled."""
        self.activities: dict[str, Any] = {}
        """Key -> handle of in-flight activities (a pause cancels them)."""
        self.cancelled_by_pause: set[str] = set()
        """Keys of in-flight activities a pause cancelled (to dispatch again on resume)."""
        self._facts = _Facts(self)
        self._last_dispatch_ns: int | None = None
        """Workflow time (ns) the last dispatch started at (read only under backpressure)."""
        self._watch: asyncio.Future[Any] | None = None
        self._poll: asyncio.Future[Any] | None = None
        self._sends: set[asyncio.Future[Any]] = set()
        self._expiry_of: ControlState | None = None
        self._expiry: datetime | None = None
        """When the first backpressure or override of state ``_expiry_of`` runs out."""

    @property
    def paused(self) -> KillMessage | None:
        """The kill that paused the run, while the pause holds."""
        return self.state.paused

    # -- installation -------------------------------------------------------------------

    def install(self) -> None:
        """Register the four control signals and the ``governor.control`` query."""
        for name in MESSAGE_OF_SIGNAL:
            temporalio.workflow.set_signal_handler(name, self._handler(name))
        temporalio.workflow.set_query_handler(CONTROL_QUERY, self.query)

    def _handler(self, signal: str) -> Callable[..., None]:
        """A signal handler that gets the payload undecoded, whatever its bytes.

        The SDK decodes a signal's payloads with the types of its handler's parameters when
        their number matches, and drops a signal it cannot decode. The handler shows it one
        parameter of type ``RawValue`` (its ``__signature__`` and annotations), so the one
        payload of a control signal always comes through undecoded and :meth:`receive`
        judges it. It takes any number of arguments, so a signal with none or several
        (decoded by the SDK) is rejected here too instead of failing the workflow task.
        """

        def handle(*args: Any) -> None:
            self.receive(signal, args)

        handle.__signature__ = _ONE_RAW_PAYLOAD  # type: ignore[attr-defined]
        handle.__annotations__ = {"payload": RawValue, "return": None}
        return handle

    def query(self, *args: Any) -> dict[str, Any]:
        """Query handler: the control status as JSON-ready data."""
        return self.status().model_dump(mode="json")

    def status(self) -> ControlStatus:
        """The run's control state and audit trail (read only: queries must not change state)."""
        info = self.run.info
        return core.status(
            self.state,
            self.audit,
            temporalio.workflow.now(),
            info.workflow_id,
            info.run_id,
            self.run.killed,
        )

    # -- receiving ------------------------------------------------------------------------

    def receive(self, signal: str, args: tuple[Any, ...], now_ms: int | None = None) -> None:
        """Check one control message and apply it; a rejected one is recorded, nothing more.

        Args:
            signal: The signal name.
            args: Its arguments (one ``RawValue`` as received, decoded by the check).
            now_ms: The clock to judge staleness by (default: workflow time now).

        """
        clock = _now_ms() if now_ms is None else now_ms
        try:
            verdict = self.check.check(signal, args, clock)
            now = temporalio.workflow.now()
            self._do(core.receive(self.state, signal, verdict, now, self._facts, self.rules))
        except Exception as error:  # a control message must never fail the workflow task
            self._reject(signal, None, f"could not apply: {type(error).__name__}: {error}")

    def apply_stored(self, stored: dict[str, Any]) -> None:
        """Take the fleet-wide kills and resumes the ledger keeps for this run's tenant and agent.

        They come in the start header, or back with a ledger reservation. Each stored
        message is taken once (by scope, signal and the time the ledger took it), must be
        signed, and its age is judged against that time. Then per scope the newer of kill
        and resume wins; the run is killed if any scope's kill wins, and a pause that came
        from the fleet is lifted once none does.
        """
        now = temporalio.workflow.now()
        self._do(
            core.take_stored(self.state, stored, self._verify_stored, now, self._facts, self.rules)
        )

    def _verify_stored(
        self, signal: str, data: Any, recorded_at_ms: int
    ) -> tuple[AnyControl | None, str | None]:
        return self.check.check(signal, (data,), recorded_at_ms, stored=True)

    def emitted(self, data: dict[str, Any], tool: str) -> None:
        """Apply backpressure an activity of this run emitted, and route it upstream."""
        try:
            message = BackpressureMessage(
                **data,
                issuer=f"activity {tool}",
                target="run",
                workflow_id=self.run.info.workflow_id,
                issued_at_ms=_now_ms(),
                nonce=temporalio.workflow.uuid4().hex,
            )
        except ValidationError as error:
            self._reject(BACKPRESSURE_SIGNAL, None, f"malformed emit_backpressure: {error}")
            return
        now = temporalio.workflow.now()
        self._do(core.apply(self.state, message, now, self._facts, self.rules))

    # -- children and continue-as-new ---------------------------------------------------------

    def joined(self, key: str, workflow_id: str) -> None:
        """A child started: pause it too if this run is paused meanwhile."""
        self._do(core.joined(self.state, key, workflow_id))

    def left(self, key: str) -> None:
        """A child ended."""
        self.state, known = core.left(self.state, key)
        if known:
            self.finished()

    def carry(self) -> dict[str, Any]:
        """What a continue-as-new hands on: the pause in force and the nonces seen."""
        return core.carry(self.state, self.check.nonces())

    def restore(self, state: dict[str, Any]) -> None:
        """Take over what the previous run of a continue-as-new chain handed on."""
        self.check.remember({str(k): int(v) for k, v in state.get("nonces", {}).items()})
        self._do(core.restore(self.state, state, temporalio.workflow.now(), self.rules))

    # -- backpressure and overrides in force ----------------------------------------------------

    def current_backpressure(self) -> ActiveBackpressure | None:
        """The backpressure holding now, if any."""
        now = temporalio.workflow.now()
        self._expire(now)
        return core.current_backpressure(self.state, now)

    def _expire(self, now: datetime) -> None:
        """Drop the backpressure and overrides whose time is up (restoring the limits).

        Only once the earliest of them is up (kept per state: states are immutable).
        """
        state = self.state
        if state is not self._expiry_of:
            self._expiry_of, self._expiry = state, core.next_expiry(state)
        if self._expiry is not None and now >= self._expiry:
            self._do(core.expire(state, now))

    # -- the dispatch gate -----------------------------------------------------------------

    def holds(self) -> bool:
        """Whether a new dispatch must pass :meth:`gate` (paused, or backpressure holds)."""
        state = self.state
        if state.backpressure is None and not state.overrides:
            return state.paused is not None  # nothing in force expires: no clock to read
        now = temporalio.workflow.now()
        self._expire(now)
        return core.holds(self.state, now)

    async def gate(self) -> bool:
        """Wait until a new dispatch may start: not paused, spaced and capped as asked.

        Counts the dispatch as running when it returns (:meth:`finished` undoes it).

        Returns:
            Whether it waited for a pause to end.
        """
        counted_hold = False
        while True:
            self.run.raise_if_halted()
            now = temporalio.workflow.now()
            self._expire(now)
            match core.may_dispatch(self.state, now, self.running, self._last_dispatch()):
                case Go():
                    break
                case AwaitResume():
                    if not counted_hold:
                        self.state = core.held(self.state)
                        counted_hold = True
                    await temporalio.workflow.wait_condition(self._resumed_or_halted)
                case SleepUntil(moment=moment):
                    await temporalio.workflow.sleep(moment - now)
                case AwaitSlot(cap=cap, timeout=timeout):
                    with contextlib.suppress(TimeoutError):  # the backpressure expired
                        await temporalio.workflow.wait_condition(
                            functools.partial(self._below, cap), timeout=timeout
                        )
        self.started()
        return counted_hold

    def _resumed_or_halted(self) -> bool:
        return self.state.paused is None or self.run.breach is not None

    def _below(self, cap: int) -> bool:
        return self.running < cap or self.state.paused is not None

    def started(self) -> None:
        """Count a dispatch that starts now."""
        self.running += 1
        self._last_dispatch_ns = temporalio.workflow.time_ns()  # no datetime per dispatch

    def _last_dispatch(self) -> datetime | None:
        """When the last dispatch started, as ``workflow.now()`` gave it then."""
        moment = self._last_dispatch_ns
        return None if moment is None else datetime.fromtimestamp(moment / 1e9, UTC)

    def finished(self) -> None:
        """Count a dispatch that ended."""
        self.running -= 1

    # -- carrying out the core's effects ----------------------------------------------------

    def _do(self, step: Step) -> None:
        """Take the core's next state and carry out its effects, in order."""
        self.state, effects = step
        for effect in effects:
            self._effect(effect)

    def _effect(self, effect: Effect) -> None:
        match effect:
            case Record():
                self._record(effect)
            case RelayTo(signal=signal, message=message, workflow_id=target, direction=way):
                self._send(signal, message, target, way)
            case Halt():
                self._halt(effect)
            case ShowState(state=state):
                self._show(state)
            case WatchPause(message=message):
                self._watch = asyncio.ensure_future(self._pause_watch(message))
            case PollFleet(message=message):
                self._poll = asyncio.ensure_future(self._poll_fleet(message))
            case CancelInFlight():
                for key, handle in list(self.activities.items()):
                    inner = getattr(handle, "inner", None)
                    if inner is not None and not inner.done():
                        self.cancelled_by_pause.add(key)
                        inner.cancel()
            case SetCeiling(limit=name, ceiling=ceiling):
                limit = _own_limit(self.run, name)
                if limit is not None:
                    limit.ceiling = ceiling

    def _halt(self, halt: Halt) -> None:
        """Fail the run with ``GovernanceKilled`` (a run already halted stays as it was)."""
        details = self.run.details(
            limit=KILL_LIMIT,
            resource="control",
            scope=halt.scope,
            observed=0.0,
            ceiling=0.0,
            dispatch=halt.dispatch,
            killed_by=halt.killed_by,
            kill_reason=halt.kill_reason,
        )
        self.run.stop(GovernanceKilled(details))

    def _pause_over(self, message: KillMessage) -> bool:
        """Whether the pause ``message`` started no longer holds (lifted, or the run halted)."""
        return core.pause_over(self.state, message) or self.run.breach is not None

    async def _pause_watch(self, message: KillMessage) -> None:
        try:
            await temporalio.workflow.wait_condition(
                functools.partial(self._pause_over, message),
                timeout=timedelta(seconds=self.settings.pause_timeout),
            )
        except TimeoutError:
            self._halt(core.pause_timed_out(message, self._facts, self.rules))

    async def _poll_fleet(self, message: KillMessage) -> None:
        """While a fleet pause holds, ask the ledger now and then whether it was lifted."""
        interval = timedelta(seconds=self.settings.fleet_poll_interval)
        while not self._pause_over(message):
            with contextlib.suppress(TimeoutError):
                await temporalio.workflow.wait_condition(
                    functools.partial(self._pause_over, message), timeout=interval
                )
            if self._pause_over(message):
                return
            try:
                await self.run.shared.fleet_controls()
            except Exception as error:  # the ledger may be down: try again later
                temporalio.workflow.logger.warning("governor: fleet poll failed (%s)", error)

    def _send(self, signal: str, message: AnyControl, workflow_id: str, relay: str) -> None:
        """Forward a message to another run of the tree, re-signed by this worker."""
        relayed = message.model_copy(
            update={
                "workflow_id": workflow_id,
                "target": "tree" if message.target == "tree" else "run",
                "issued_at_ms": _now_ms(),
                "nonce": temporalio.workflow.uuid4().hex,
                "relay": relay,
                "key_id": None,
                "signature": None,
            }
        )
        if self.keyring.signing_key is not None:
            relayed = self.keyring.sign(relayed)
        payload = encode_message(relayed)
        problem = decode_payload(payload)[1]  # what the other run would reject unread
        if problem is not None:  # never costs the other run's history
            self._reject(signal, relayed, f"not relayed {relay} to {workflow_id}: {problem}")
            return
        handle = temporalio.workflow.get_external_workflow_handle(workflow_id)
        task = asyncio.ensure_future(self._deliver(handle, signal, RawValue(payload), workflow_id))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _deliver(self, handle: Any, signal: str, payload: Any, workflow_id: str) -> None:
        try:
            await handle.signal(signal, payload)
        except Exception as error:  # the other run may have ended meanwhile
            temporalio.workflow.logger.info(
                "governor: could not relay %s to %s: %s", signal, workflow_id, error
            )

    def _record(self, entry: Record) -> None:
        record = self.audit.add(entry, temporalio.workflow.now())
        self.run.control_event(record)

    def _reject(self, signal: str, message: AnyControl | None, problem: str) -> None:
        self._record(core.rejection(signal, message, problem))

    def _show(self, state: str) -> None:
        """Show the run as paused or running again in its ``GovernorState`` attribute."""
        if self.run.policy.visibility.search_attributes:
            temporalio.workflow.upsert_search_attributes([STATE_ATTRIBUTE.value_set(state)])


class _Facts:
    """The run as the core's control decisions see it, read when a decision asks."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane
        self._run = plane.run

    @property
    def workflow_id(self) -> str:
        return self._run.info.workflow_id

    @property
    def tenant(self) -> str:
        return self._run.context.attribution.tenant

    @property
    def agent(self) -> str:
        return self._run.agent

    @property
    def scope(self) -> str:
        return self._run.scope

    @property
    def parent(self) -> str | None:
        chain = self._run.context.chain
        return chain[-1].workflow_id if chain else None

    @property
    def stopped(self) -> bool:
        return self._run.killed or self._run.breach is not None

    @property
    def in_flight(self) -> int:
        inners = (getattr(h, "inner", None) for h in self._plane.activities.values())
        return sum(1 for inner in inners if inner is not None and not inner.done())

    def limit(self, name: str) -> OwnLimit | None:
        limit = _own_limit(self._run, name)
        if limit is None:
            return None
        return OwnLimit(limit.ceiling, self._run.hard_ceiling(name), limit.scope)


_planes: dict[str, ControlPlane] = {}


def register_plane(run_id: str, plane: ControlPlane) -> None:
    """Remember a run's control plane so its workflow code can read it."""
    _planes[run_id] = plane


def forget_plane(run_id: str) -> None:
    """Forget a run's control plane when its workflow code ends."""
    _planes.pop(run_id, None)


def current_backpressure() -> ActiveBackpressure | None:
    """In governed workflow code: the backpressure holding on this run now, if any.

    Agent code may read ``reduce_batch_to`` here to make its batches smaller; the governor
    itself already spaces and caps the run's dispatches. Outside a governed workflow:
    ``None``.
    """
    if not temporalio.workflow.in_workflow():
        return None
    plane = _planes.get(temporalio.workflow.info().run_id)
    return plane.current_backpressure() if plane is not None else None


def _own_limit(run: ControlledRun, name: str) -> Limit | None:
    """The run's own limit ``name`` (the one an override changes), if it has it."""
    for limit in run.ledger.limits:
        if limit.name == name and limit.scope == run.scope:
            return limit
    return None


def _now_ms() -> int:
    return int(temporalio.workflow.now().timestamp() * 1000)


__all__ = [
    "ActiveBackpressure",
    "ActiveOverride",
    "ControlPlane",
    "ControlRecord",
    "ControlStatus",
    "ControlledRun",
    "FleetReader",
    "control_rules",
    "current_backpressure",
]
