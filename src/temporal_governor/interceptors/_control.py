"""A governed run's control plane: kill, resume, backpressure and override, all audited.

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
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import temporalio.workflow
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.common import RawValue

from ..control._messages import (
    BACKPRESSURE_SIGNAL,
    CONTROL_QUERY,
    KILL_SIGNAL,
    MESSAGE_OF_SIGNAL,
    OVERRIDE_SIGNAL,
    RESUME_SIGNAL,
    SIGNAL_OF_ACTION,
    AnyControl,
    BackpressureMessage,
    ControlCheck,
    ControlMessage,
    Keyring,
    KillMessage,
    OverrideMessage,
    ResumeMessage,
    decode_payload,
    encode_message,
    overridable,
)
from ..core.accounting import Limit
from ..errors import KILL_LIMIT, BreachDetails
from ..names import STATE_ATTRIBUTE

if TYPE_CHECKING:
    from ._run import GovernedRun

_AUDIT_KEPT = 200
_ONE_RAW_PAYLOAD = inspect.Signature(
    [inspect.Parameter("payload", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=RawValue)],
    return_annotation=None,
)
"""What a control signal handler shows the SDK: one parameter, an undecoded payload."""
RunState = Literal["running", "paused", "killed"]


class ControlRecord(BaseModel):
    """One control message a run received, accepted or rejected, and what it changed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int
    time: datetime
    """Workflow time it was handled."""
    signal: str
    accepted: bool
    outcome: str
    """What happened (``paused``, ``resumed``, ``override max_tokens_per_task 5000 ->
    8000``) or why it was rejected."""
    issuer: str = ""
    reason: str = ""
    target: str = ""
    key_id: str | None = None
    nonce: str = ""
    relay: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class ActiveBackpressure(BaseModel):
    """Backpressure holding on a run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retry_after_ms: int
    max_concurrency: int | None
    reduce_batch_to: int | None
    source: str
    reason: str
    issuer: str
    until: datetime


class ActiveOverride(BaseModel):
    """An operator's override of one limit, until it expires."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: str
    scope: str
    value: float
    before: float
    hard_ceiling: float
    until: datetime
    issuer: str
    reason: str


class ControlStatus(BaseModel):
    """What the ``governor.control`` query returns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    run_id: str
    state: RunState
    paused_since: datetime | None = None
    paused_by: str | None = None
    pause_reason: str | None = None
    pause_deadline: datetime | None = None
    """When a pause not resumed fails the run (``control.pause_timeout``)."""
    backpressure: ActiveBackpressure | None = None
    overrides: list[ActiveOverride] = Field(default_factory=list)
    dispatches_refused_while_paused: int = 0
    """Dispatches agent code asked for while paused (they wait for the resume)."""
    accepted: int = 0
    rejected: int = 0
    audit: list[ControlRecord] = Field(default_factory=list)
    """The last control messages, oldest first, accepted and rejected."""


class ControlPlane:
    """The control state of one governed run, its signal handlers and its dispatch gate."""

    def __init__(self, run: GovernedRun, keyring: Keyring) -> None:
        self.run = run
        self.settings = run.policy.control
        self.keyring = keyring
        self.check = ControlCheck(keyring, self.settings)
        self.paused: KillMessage | None = None
        self.paused_since: datetime | None = None
        self.pause_deadline: datetime | None = None
        self.backpressure: ActiveBackpressure | None = None
        self.overrides: dict[str, ActiveOverride] = {}
        self.running = 0
        """Dispatches started and not yet settled."""
        self.activities: dict[str, Any] = {}
        """Key -> handle of in-flight activities (a pause cancels them)."""
        self.children: dict[str, str] = {}
        """Key -> workflow id of running children (a pause is forwarded to them)."""
        self.cancelled_by_pause: set[str] = set()
        """Keys of in-flight activities a pause cancelled (to dispatch again on resume)."""
        self.held_while_paused = 0
        self._last_dispatch: datetime | None = None
        self._audit: list[ControlRecord] = []
        self._accepted = 0
        self._rejected = 0
        self._seq = 0
        self._watch: asyncio.Future[Any] | None = None
        self._poll: asyncio.Future[Any] | None = None
        self._sends: set[asyncio.Future[Any]] = set()
        self._fleet: dict[str, dict[str, tuple[int, AnyControl]]] = {}
        self._fleet_seen: set[tuple[str, str, int]] = set()

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
        now = temporalio.workflow.now()
        pressure = self.backpressure
        state: RunState = (
            "killed" if self.run.killed else "paused" if self.paused is not None else "running"
        )
        return ControlStatus(
            workflow_id=self.run.info.workflow_id,
            run_id=self.run.info.run_id,
            state=state,
            paused_since=self.paused_since,
            paused_by=self.paused.issuer if self.paused else None,
            pause_reason=self.paused.reason if self.paused else None,
            pause_deadline=self.pause_deadline,
            backpressure=pressure if pressure is not None and now < pressure.until else None,
            overrides=[o for o in self.overrides.values() if now < o.until],
            dispatches_refused_while_paused=self.held_while_paused,
            accepted=self._accepted,
            rejected=self._rejected,
            audit=self._audit[-_AUDIT_KEPT:],
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
            message, problem = self.check.check(signal, args, clock)
            if problem is None and message is not None:
                problem = self._misdirected(message)
            if problem is not None or message is None:
                self._reject(signal, message, problem or "rejected")
                return
            self._apply(message)
        except Exception as error:  # a control message must never fail the workflow task
            self._reject(signal, None, f"could not apply: {type(error).__name__}: {error}")

    def _misdirected(self, message: ControlMessage) -> str | None:
        """Why a valid message is not for this run, or ``None`` when it is."""
        info = self.run.info
        attribution = self.run.context.attribution
        if message.target in ("run", "tree"):
            if message.workflow_id is None:
                return f"malformed: target {message.target} needs workflow_id"
            if message.workflow_id != info.workflow_id:
                return f"misdirected: for workflow {message.workflow_id}"
        elif message.target == "tenant" and message.tenant != attribution.tenant:
            return f"misdirected: for tenant {message.tenant}, this run is {attribution.tenant}"
        elif message.target == "agent" and message.agent != self.run.agent:
            return f"misdirected: for agent {message.agent}, this run is {self.run.agent}"
        return None

    def _apply(self, message: AnyControl) -> None:
        if isinstance(message, KillMessage):
            self._kill(message)
        elif isinstance(message, ResumeMessage):
            self._resume(message)
        elif isinstance(message, BackpressureMessage):
            self._backpressure(message)
        else:
            self._override(message)

    # -- kill and resume -------------------------------------------------------------------

    def _kill(self, message: KillMessage) -> None:
        if self.run.killed or self.run.breach is not None:
            self._record(message, True, "already stopped; nothing changed")
            return
        if message.mode == "terminate" and message.signature is None:
            # an unsigned kill stops spend but cannot do what only a resume could undo
            message = message.model_copy(update={"mode": "pause"})
            self._record(message, True, "unsigned terminate taken as a pause")
        if message.mode == "terminate":
            self._record(message, True, "terminated")
            if message.target != "run":
                self._relay_down(message)
            self.run.kill(_kill_details(self.run, message))
            return
        self._relay_down(message)  # sub-agents spend this run's allowance: they rest too
        if self.paused is not None:
            self._record(message, True, "already paused")
            return
        cancelled = 0
        for key, handle in list(self.activities.items()):
            inner = getattr(handle, "inner", None)
            if inner is not None and not inner.done():
                self.cancelled_by_pause.add(key)
                inner.cancel()
                cancelled += 1
        self._rest(
            message,
            f"paused; {cancelled} in-flight activities cancelled (re-dispatched on resume), "
            f"{len(self.children)} children paused",
        )

    def _rest(self, message: KillMessage, outcome: str) -> None:
        """Hold the run paused by ``message`` until it is lifted or ``pause_timeout`` ends."""
        now = temporalio.workflow.now()
        self.paused, self.paused_since = message, now
        self.pause_deadline = now + timedelta(seconds=self.settings.pause_timeout)
        self._record(message, True, outcome)
        self._show("paused")
        self._watch = asyncio.ensure_future(self._pause_watch(message))
        if message.target in ("tenant", "agent") and self.settings.check_kills_at_start:
            self._poll = asyncio.ensure_future(self._poll_fleet(message))

    def _pause_over(self, message: KillMessage) -> bool:
        """Whether the pause ``message`` started no longer holds (lifted, or the run halted)."""
        return self.paused is not message or self.run.breach is not None

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

    async def _pause_watch(self, message: KillMessage) -> None:
        try:
            await temporalio.workflow.wait_condition(
                functools.partial(self._pause_over, message),
                timeout=timedelta(seconds=self.settings.pause_timeout),
            )
        except TimeoutError:
            reason = (
                f"paused by {message.issuer} and not resumed within "
                f"control.pause_timeout ({self.settings.pause_timeout:g} s)"
            )
            details = _kill_details(self.run, message).model_copy(update={"kill_reason": reason})
            self.run.kill(details)

    def _resume(self, message: ResumeMessage) -> None:
        self._relay_down(message)
        if self.paused is None:
            self._record(message, True, "not paused; nothing to resume")
            return
        before = {"paused_by": self.paused.issuer, "since": _iso(self.paused_since)}
        self.paused = None
        self.paused_since = self.pause_deadline = None
        self._record(message, True, "resumed", before=before, after={"state": "running"})
        self._show("running")

    def apply_stored(self, stored: dict[str, Any]) -> None:
        """Take the fleet-wide kills and resumes the ledger keeps for this run's tenant and agent.

        They come in the start header, or back with a ledger reservation. Each stored
        message is taken once (by scope, signal and the time the ledger took it), must be
        signed, and its age is judged against that time. Then per scope the newer of kill
        and resume wins; the run is killed if any scope's kill wins, and a pause that came
        from the fleet is lifted once none does.
        """
        fresh = False
        for scope in sorted(stored):
            for signal, entry in sorted(stored[scope].items()):
                if signal not in (KILL_SIGNAL, RESUME_SIGNAL):
                    continue
                recorded_at = int(entry["recorded_at_ms"])
                identity = (scope, signal, recorded_at)
                if identity in self._fleet_seen:
                    continue
                self._fleet_seen.add(identity)
                known = self._fleet.setdefault(scope, {}).get(signal)
                if known is not None and known[0] > recorded_at:
                    continue
                message, problem = self.check.check(
                    signal, (entry["message"],), recorded_at, stored=True
                )
                if problem is None and message is not None:
                    problem = self._misdirected(message)
                if problem is not None or message is None:
                    self._reject(signal, message, f"stored for {scope}: {problem or 'rejected'}")
                    continue
                self._fleet[scope][signal] = (recorded_at, message)
                fresh = True
        if fresh:
            self._judge_fleet()

    def _judge_fleet(self) -> None:
        winning: list[KillMessage] = []
        resumes: list[tuple[int, AnyControl]] = []
        for scope in sorted(self._fleet):
            kill = self._fleet[scope].get(KILL_SIGNAL)
            resume = self._fleet[scope].get(RESUME_SIGNAL)
            if kill is not None and (resume is None or resume[0] < kill[0]):
                assert isinstance(kill[1], KillMessage)
                winning.append(kill[1])
            elif resume is not None:
                resumes.append(resume)
        terminate = [k for k in winning if k.mode == "terminate" and k.signature is not None]
        if terminate:
            self._kill(terminate[0])
        elif winning:
            if self.paused is None:
                self._kill(winning[0])
        elif self.paused is not None and self.paused.target in ("tenant", "agent") and resumes:
            latest = max(resumes, key=lambda r: r[0])[1]
            assert isinstance(latest, ResumeMessage)
            self._resume(latest)

    def joined(self, key: str, workflow_id: str) -> None:
        """A child started: pause it too if this run is paused meanwhile."""
        self.children[key] = workflow_id
        if self.paused is not None:
            self._send(KILL_SIGNAL, self.paused, workflow_id, "down")

    def left(self, key: str) -> None:
        """A child ended."""
        if self.children.pop(key, None) is not None:
            self.finished()

    def carry(self) -> dict[str, Any]:
        """What a continue-as-new hands on: the pause in force and the nonces seen."""
        state: dict[str, Any] = {"nonces": self.check.nonces()}
        if self.paused is not None:
            state["paused"] = self.paused.model_dump(mode="json")
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Take over what the previous run of a continue-as-new chain handed on."""
        self.check.remember({str(k): int(v) for k, v in state.get("nonces", {}).items()})
        paused = state.get("paused")
        if paused:
            self._rest(KillMessage.model_validate(paused), "still paused after continue-as-new")

    # -- backpressure ----------------------------------------------------------------------

    def _backpressure(self, message: BackpressureMessage) -> None:
        duration_ms = min(message.duration_ms, int(self.settings.max_backpressure * 1000))
        before = self.backpressure.model_dump(mode="json") if self.backpressure else None
        self.backpressure = ActiveBackpressure(
            retry_after_ms=message.retry_after_ms,
            max_concurrency=message.max_concurrency,
            reduce_batch_to=message.reduce_batch_to,
            source=message.source,
            reason=message.reason,
            issuer=message.issuer,
            until=temporalio.workflow.now() + timedelta(milliseconds=duration_ms),
        )
        relayed = []
        propagation = self.settings.backpressure_propagation
        if message.relay != "down" and propagation in ("up", "both"):
            parent = self.run.context.chain[-1].workflow_id if self.run.context.chain else None
            if parent is not None:
                self._send(BACKPRESSURE_SIGNAL, message, parent, "up")
                relayed.append(f"parent {parent}")
        if message.relay != "up" and propagation in ("down", "both"):
            relayed += [f"child {c}" for c in self._relay_down(message)]
        outcome = f"slowing down for {duration_ms} ms"
        if relayed:
            outcome += "; relayed to " + ", ".join(relayed)
        self._record(
            message, True, outcome, before=before, after=self.backpressure.model_dump(mode="json")
        )

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
        self._backpressure(message)

    def current_backpressure(self) -> ActiveBackpressure | None:
        """The backpressure holding now, if any."""
        self._expire()
        return self.backpressure

    # -- overrides ---------------------------------------------------------------------------

    def _override(self, message: OverrideMessage) -> None:
        if message.target == "tree":
            self._relay_down(message)  # every run of the tree judges it for its own limits
        if not overridable(message.limit):
            self._reject(
                OVERRIDE_SIGNAL,
                message,
                f"unknown limit {message.limit!r}: an override changes a per-task quota "
                "(max_tokens_per_task, max_cost_usd_per_task, max_tool_calls_per_task, "
                "max_subtasks_per_task, max_child_workflows_per_task)",
            )
            return
        limit = self._own_limit(message.limit)
        if limit is None:
            self._reject(
                OVERRIDE_SIGNAL, message, f"{message.limit} is not set for agent {self.run.agent}"
            )
            return
        self._expire()
        active = self.overrides.get(message.limit)
        original = active.before if active else limit.ceiling
        hard = self.run.hard_ceiling(message.limit)
        value = message.value
        if value > hard:
            if self.settings.above_ceiling == "reject":
                self._reject(
                    OVERRIDE_SIGNAL,
                    message,
                    f"{message.value:g} is above the hard ceiling {hard:g} of "
                    f"{message.limit} (control.above_ceiling: reject)",
                )
                return
            value = hard
        duration = min(message.duration_s, self.settings.max_override)
        before = limit.ceiling
        limit.ceiling = value
        override = ActiveOverride(
            limit=message.limit,
            scope=limit.scope,
            value=value,
            before=original,
            hard_ceiling=hard,
            until=temporalio.workflow.now() + timedelta(seconds=duration),
            issuer=message.issuer,
            reason=message.reason,
        )
        self.overrides[message.limit] = override
        clamped = (
            f" (clamped from {message.value:g} to the hard ceiling)"
            if value != message.value
            else ""
        )
        self._record(
            message,
            True,
            f"override {message.limit} {before:g} -> {value:g} for {duration:g} s{clamped}",
            before={"limit": message.limit, "ceiling": before},
            after={"limit": message.limit, "ceiling": value, "until": _iso(override.until)},
        )

    def _own_limit(self, name: str) -> Limit | None:
        for limit in self.run.ledger.limits:
            if limit.name == name and limit.scope == self.run.scope:
                return limit
        return None

    def _expire(self) -> None:
        """Drop the backpressure and overrides whose time is up (restoring the limits)."""
        now = temporalio.workflow.now()
        if self.backpressure is not None and now >= self.backpressure.until:
            self.backpressure = None
        for name, override in list(self.overrides.items()):
            if now >= override.until:
                limit = self._own_limit(name)
                if limit is not None:
                    limit.ceiling = override.before
                del self.overrides[name]

    # -- the dispatch gate -----------------------------------------------------------------

    def holds(self) -> bool:
        """Whether a new dispatch must pass :meth:`gate` (paused, or backpressure holds)."""
        self._expire()
        return self.paused is not None or self.backpressure is not None

    async def gate(self) -> bool:
        """Wait until a new dispatch may start: not paused, spaced and capped as asked.

        Counts the dispatch as running when it returns (:meth:`finished` undoes it).

        Returns:
            Whether it waited for a pause to end.
        """
        counted_hold = False
        while True:
            self.run.raise_if_halted()
            self._expire()
            if self.paused is not None:
                if not counted_hold:
                    self.held_while_paused += 1
                    counted_hold = True
                await temporalio.workflow.wait_condition(
                    lambda: self.paused is None or self.run.breach is not None
                )
                continue
            pressure = self.backpressure
            if pressure is None:
                break
            now = temporalio.workflow.now()
            if pressure.retry_after_ms and self._last_dispatch is not None:
                ready = min(
                    self._last_dispatch + timedelta(milliseconds=pressure.retry_after_ms),
                    pressure.until,
                )
                if now < ready:
                    await temporalio.workflow.sleep(ready - now)
                    continue
            cap = pressure.max_concurrency
            if cap is not None and self.running >= cap:
                with contextlib.suppress(TimeoutError):  # the backpressure expired
                    await temporalio.workflow.wait_condition(
                        functools.partial(self._below, cap),
                        timeout=max(pressure.until - now, timedelta(milliseconds=1)),
                    )
                continue
            break
        self.started()
        return counted_hold

    def _below(self, cap: int) -> bool:
        return self.running < cap or self.paused is not None

    def started(self) -> None:
        """Count a dispatch that starts now."""
        self.running += 1
        self._last_dispatch = temporalio.workflow.now()

    def finished(self) -> None:
        """Count a dispatch that ended."""
        self.running -= 1

    # -- relaying and the audit trail -------------------------------------------------------

    def _relay_down(self, message: AnyControl) -> list[str]:
        children = sorted(set(self.children.values()))
        for child in children:
            self._send(SIGNAL_OF_ACTION[message.action], message, child, "down")
        return children

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

    def _record(
        self,
        message: AnyControl | None,
        accepted: bool,
        outcome: str,
        signal: str | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        self._seq += 1
        if accepted:
            self._accepted += 1
        else:
            self._rejected += 1
        name = signal or (SIGNAL_OF_ACTION[message.action] if message is not None else "?")
        record = ControlRecord(
            seq=self._seq,
            time=temporalio.workflow.now(),
            signal=name,
            accepted=accepted,
            outcome=outcome,
            issuer=message.issuer if message else "",
            reason=message.reason if message else "",
            target=message.target if message else "",
            key_id=message.key_id if message else None,
            nonce=message.nonce if message else "",
            relay=message.relay if message else None,
            before=before,
            after=after,
        )
        self._audit.append(record)
        if len(self._audit) > 2 * _AUDIT_KEPT:
            del self._audit[:_AUDIT_KEPT]
        self.run.control_event(record)

    def _show(self, state: str) -> None:
        """Show the run as paused or running again in its ``GovernorState`` attribute."""
        if self.run.policy.visibility.search_attributes:
            temporalio.workflow.upsert_search_attributes([STATE_ATTRIBUTE.value_set(state)])

    def _reject(self, signal: str, message: AnyControl | None, problem: str) -> None:
        self._record(message, False, problem, signal=signal)


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


def _kill_details(run: GovernedRun, message: KillMessage) -> BreachDetails:
    scope = {
        "run": run.scope,
        "tree": f"tree of {message.workflow_id}",
        "tenant": f"tenant {message.tenant}",
        "agent": f"agent {message.agent}",
    }[message.target]
    return run.details(
        limit=KILL_LIMIT,
        resource="control",
        scope=scope,
        observed=0.0,
        ceiling=0.0,
        dispatch=f"{message.mode} by {message.issuer}",
        killed_by=message.issuer,
        kill_reason=message.reason,
    )


def _now_ms() -> int:
    return int(temporalio.workflow.now().timestamp() * 1000)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


__all__ = [
    "ActiveBackpressure",
    "ActiveOverride",
    "ControlPlane",
    "ControlRecord",
    "ControlStatus",
    "current_backpressure",
]
