"""The control plane's decisions: kill, pause, resume, backpressure and override, pure.

A governed run's control state is a :class:`ControlState` (plain pydantic data). Each
control message it accepts goes through :func:`apply`, which returns the next state and the
effects the Temporal glue (``interceptors/_control.py``) turns into commands: signals relayed
to other runs of the tree, timers, search attributes, records for the audit trail, a halt.
Nothing here imports ``temporalio``, reads a clock or draws a random number: time comes in as
``now``, the run is seen through :class:`RunFacts`, so the same inputs give the same
decisions, in unit tests as in a replay.

The control messages themselves are defined here too (``temporal_governor.control``
re-exports them with their signing and wire checks), so the decisions can take them typed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

# -- messages ---------------------------------------------------------------------------

KILL_SIGNAL = "governor.kill"
"""Signal: stop a run (``pause`` until an authorised resume, or ``terminate``)."""
RESUME_SIGNAL = "governor.resume"
"""Signal: let a paused run dispatch again (signed only)."""
BACKPRESSURE_SIGNAL = "governor.backpressure"
"""Signal: slow a run's dispatches down for a while."""
OVERRIDE_SIGNAL = "governor.override"
"""Signal: raise or lower a limit of a run for a while, never above its hard ceiling."""
CONTROL_QUERY = "governor.control"
"""Query: the run's control state and the audit trail of control messages."""

Target = Literal["run", "tree", "tenant", "agent"]
"""What a message is for: one run, a run and its descendants, a tenant's or an agent
type's runs."""
Relay = Literal["up", "down"]

_Name = Annotated[str, Field(min_length=1, max_length=200)]


class ControlMessage(BaseModel):
    """What every control message carries: who, why, for whom, when, and its signature."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    issuer: _Name
    """Who sent it (a person, a service, or ``governor:<workflow id>`` when relayed)."""
    reason: str = Field(default="", max_length=2000)
    """Why: kept in the audit trail."""
    target: Target = "run"
    workflow_id: str | None = Field(default=None, max_length=1000)
    """For ``run`` and ``tree``: the workflow the message is for."""
    tenant: str | None = Field(default=None, max_length=200)
    """For ``tenant``: the tenant whose runs it is for."""
    agent: str | None = Field(default=None, max_length=200)
    """For ``agent``: the workflow type whose runs it is for."""
    issued_at_ms: int = Field(ge=0)
    """When it was issued, epoch milliseconds; too far from the run's clock is stale."""
    nonce: str = Field(min_length=8, max_length=128)
    """A one-time value: a run rejects a nonce it has seen."""
    key_id: str | None = Field(default=None, max_length=200)
    signature: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Hex HMAC-SHA256 of :func:`~temporal_governor.control.canonical` with the key
    ``key_id``."""
    relay: Relay | None = None
    """Set by the governor when it forwards a message up or down the tree (not signed)."""


class KillMessage(ControlMessage):
    """Stop dispatching: ``pause`` (rest until resumed) or ``terminate`` (fail the run)."""

    action: Literal["kill"] = "kill"
    mode: Literal["pause", "terminate"] = "pause"


class ResumeMessage(ControlMessage):
    """Let a paused run dispatch again."""

    action: Literal["resume"] = "resume"


class BackpressureMessage(ControlMessage):
    """Slow down: space dispatches, cap those in flight, suggest smaller batches."""

    action: Literal["backpressure"] = "backpressure"
    retry_after_ms: int = Field(default=0, ge=0, le=3_600_000)
    """Least time between two dispatches of the run while the backpressure holds."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Most dispatches in flight at once while it holds."""
    reduce_batch_to: int | None = Field(default=None, ge=1)
    """Advice to agent code (see ``current_backpressure()``): batch at most this many."""
    source: str = Field(default="", max_length=200)
    """Who is overloaded (a tool, a provider, a downstream agent)."""
    duration_ms: int = Field(default=60_000, gt=0)
    """How long it holds (cut to the policy's ``control.max_backpressure``)."""


class OverrideMessage(ControlMessage):
    """Set a per-task limit of a run to ``value`` for ``duration_s`` seconds."""

    action: Literal["override"] = "override"
    limit: str = Field(min_length=1, max_length=100)
    """A per-task quota name, e.g. ``max_tokens_per_task``."""
    value: float = Field(ge=0)
    duration_s: float = Field(default=3600.0, gt=0)
    """How long the override holds (cut to the policy's ``control.max_override``)."""


AnyControl = KillMessage | ResumeMessage | BackpressureMessage | OverrideMessage
"""Any of the four control messages (what ``ControlClient.send`` takes)."""

MESSAGE_OF_SIGNAL: dict[str, type[ControlMessage]] = {
    KILL_SIGNAL: KillMessage,
    RESUME_SIGNAL: ResumeMessage,
    BACKPRESSURE_SIGNAL: BackpressureMessage,
    OVERRIDE_SIGNAL: OverrideMessage,
}
"""Signal name -> the message model it carries."""
SIGNAL_OF_ACTION: dict[str, str] = {
    model.model_fields["action"].default: name for name, model in MESSAGE_OF_SIGNAL.items()
}
"""A message's ``action`` -> the signal that carries it."""

# -- the state and what the glue shows of it ----------------------------------------------

AUDIT_KEPT = 200
"""How many control records the ``governor.control`` query shows (the newest)."""
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


class FleetEntry(BaseModel):
    """A fleet-wide kill or resume the ledger stored, as this run accepted it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recorded_at_ms: int
    """When the ledger took it (what decides which of a kill and a resume is newer)."""
    message: Annotated[KillMessage | ResumeMessage, Field(discriminator="action")]


class ControlState(BaseModel):
    """The control state of one governed run: pause, backpressure, overrides, fleet kills.

    Immutable: every change is a new state (``model_copy``). It round-trips through
    ``model_dump(mode="json")`` and ``model_validate``; what a continue-as-new hands on is
    the smaller :func:`carry`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    paused: KillMessage | None = None
    """The kill that paused the run, while the pause holds."""
    paused_since: datetime | None = None
    pause_deadline: datetime | None = None
    """When the pause fails the run if no resume comes (``control.pause_timeout``)."""
    backpressure: ActiveBackpressure | None = None
    overrides: dict[str, ActiveOverride] = Field(default_factory=dict)
    """Limit name -> the override in force (until it expires)."""
    children: dict[str, str] = Field(default_factory=dict)
    """Dispatch key -> workflow id of the run's running children (control is relayed
    down to them)."""
    held_while_paused: int = 0
    """Dispatches agent code asked for while paused."""
    fleet: dict[str, dict[str, FleetEntry]] = Field(default_factory=dict)
    """Scope (``tenant:x``, ``agent:y``) -> signal -> the newest stored message taken."""
    fleet_seen: frozenset[tuple[str, str, int]] = frozenset()
    """(scope, signal, recorded_at_ms) of every stored message looked at once already."""


@dataclass(frozen=True)
class ControlRules:
    """The policy's ``control`` settings a decision needs (``ControlSettings``, as data)."""

    pause_timeout: float = 86400.0
    """Seconds a pause holds before it fails the run."""
    above_ceiling: Literal["reject", "clamp"] = "reject"
    """What an override above a limit's hard ceiling gets."""
    max_override: float = 86400.0
    """The longest an override lasts, seconds."""
    backpressure_propagation: Literal["up", "down", "both", "none"] = "up"
    """Where backpressure a run receives is relayed."""
    max_backpressure: float = 3600.0
    """The longest one backpressure message holds, seconds."""
    check_kills_at_start: bool = True
    """A fleet pause is polled for its resume (see ``ControlSettings``)."""
    overridable: frozenset[str] = frozenset()
    """The per-task limits an override may change."""


@dataclass(frozen=True)
class OwnLimit:
    """One of the run's own per-task limits, as an override sees it."""

    ceiling: float
    """The ceiling in force now."""
    hard_ceiling: float
    """The ceiling no override may lift (the policy's)."""
    scope: str
    """The limit's scope (the run's)."""


class RunFacts(Protocol):
    """What a control decision needs to know of the run, read when it is made."""

    @property
    def workflow_id(self) -> str:
        """The run's workflow id."""
        ...

    @property
    def tenant(self) -> str:
        """The tenant the run is attributed to."""
        ...

    @property
    def agent(self) -> str:
        """The run's workflow type."""
        ...

    @property
    def scope(self) -> str:
        """The run's own scope (``run <agent>/<workflow id>``)."""
        ...

    @property
    def parent(self) -> str | None:
        """The workflow id of the run's parent in the governed tree, if any."""
        ...

    @property
    def stopped(self) -> bool:
        """Whether the run is already killed or halted."""
        ...

    @property
    def in_flight(self) -> int:
        """How many in-flight activities a pause would cancel."""
        ...

    def limit(self, name: str) -> OwnLimit | None:
        """The run's own per-task limit ``name``, or ``None`` when it has none."""
        ...


# -- effects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """Add an entry to the audit trail (the glue numbers it and logs it)."""

    signal: str
    accepted: bool
    outcome: str
    message: AnyControl | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


@dataclass(frozen=True)
class RelayTo:
    """Forward ``message`` as ``signal`` to another run of the tree, re-signed."""

    signal: str
    message: AnyControl
    workflow_id: str
    direction: Relay


@dataclass(frozen=True)
class Halt:
    """Fail the run with ``GovernanceKilled`` (a terminate, or a pause that timed out)."""

    scope: str
    """Whose kill it is (``run ...``, ``tree of ...``, ``tenant ...``, ``agent ...``)."""
    dispatch: str
    """What stopped it, e.g. ``terminate by oncall``."""
    killed_by: str
    kill_reason: str


@dataclass(frozen=True)
class ShowState:
    """Show the run as ``paused`` or ``running`` (its state search attribute)."""

    state: Literal["paused", "running"]


@dataclass(frozen=True)
class WatchPause:
    """Start the timer that fails the run if the pause ``message`` is not lifted in time."""

    message: KillMessage
    timeout_s: float


@dataclass(frozen=True)
class PollFleet:
    """While the fleet pause ``message`` holds, ask the ledger now and then for its resume."""

    message: KillMessage


@dataclass(frozen=True)
class CancelInFlight:
    """Cancel the run's in-flight activities (dispatched again once the pause is lifted)."""


@dataclass(frozen=True)
class SetCeiling:
    """Set the run's own per-task limit ``limit`` to ``ceiling``."""

    limit: str
    ceiling: float


Effect = Record | RelayTo | Halt | ShowState | WatchPause | PollFleet | CancelInFlight | SetCeiling
"""What a decision asks the glue to do, in order."""
Step = tuple[ControlState, list[Effect]]
"""A decision's outcome: the next state and its effects."""

# -- receiving ----------------------------------------------------------------------------


def misdirected(message: ControlMessage, run: RunFacts) -> str | None:
    """Why a valid message is not for this run, or ``None`` when it is."""
    if message.target in ("run", "tree"):
        if message.workflow_id is None:
            return f"malformed: target {message.target} needs workflow_id"
        if message.workflow_id != run.workflow_id:
            return f"misdirected: for workflow {message.workflow_id}"
    elif message.target == "tenant" and message.tenant != run.tenant:
        return f"misdirected: for tenant {message.tenant}, this run is {run.tenant}"
    elif message.target == "agent" and message.agent != run.agent:
        return f"misdirected: for agent {message.agent}, this run is {run.agent}"
    return None


def rejection(signal: str, message: AnyControl | None, problem: str) -> Record:
    """The audit entry of a message the run rejected."""
    return Record(signal, False, problem, message)


def apply(
    state: ControlState, message: AnyControl, now: datetime, run: RunFacts, rules: ControlRules
) -> Step:
    """Apply one verified control message meant for this run.

    Args:
        state: The run's control state.
        message: The message, already decoded, authorised and found to be for this run.
        now: Workflow time.
        run: What the decision needs to know of the run.
        rules: The policy's control settings.

    Returns:
        The next state and the effects to carry out, in order.

    """
    if isinstance(message, KillMessage):
        return _kill(state, message, now, run, rules)
    if isinstance(message, ResumeMessage):
        return _resume(state, message)
    if isinstance(message, BackpressureMessage):
        return _backpressure(state, message, now, run, rules)
    return _override(state, message, now, run, rules)


def receive(
    state: ControlState,
    signal: str,
    verdict: tuple[AnyControl | None, str | None],
    now: datetime,
    run: RunFacts,
    rules: ControlRules,
) -> Step:
    """Judge a checked signal: reject it (recorded) or :func:`apply` it.

    Args:
        state: The run's control state.
        signal: The signal's name.
        verdict: What the signature and freshness check made of its payload:
            ``(message, None)`` when it passed, else ``(message or None, why not)``.
        now: Workflow time.
        run: What the decision needs to know of the run.
        rules: The policy's control settings.

    Returns:
        The next state and the effects to carry out, in order.

    """
    message, problem = verdict
    if problem is None and message is not None:
        problem = misdirected(message, run)
    if problem is not None or message is None:
        return state, [rejection(signal, message, problem or "rejected")]
    return apply(state, message, now, run, rules)


# -- kill and resume ------------------------------------------------------------------------


def _kill(
    state: ControlState, message: KillMessage, now: datetime, run: RunFacts, rules: ControlRules
) -> Step:
    effects: list[Effect] = []
    if run.stopped:
        return state, [Record(KILL_SIGNAL, True, "already stopped; nothing changed", message)]
    if message.mode == "terminate" and message.signature is None:
        # an unsigned kill stops spend but cannot do what only a resume could undo
        message = message.model_copy(update={"mode": "pause"})
        effects.append(Record(KILL_SIGNAL, True, "unsigned terminate taken as a pause", message))
    if message.mode == "terminate":
        effects.append(Record(KILL_SIGNAL, True, "terminated", message))
        if message.target != "run":
            effects += _relay_down(state, message)
        effects.append(kill_halt(message, run))
        return state, effects
    effects += _relay_down(state, message)  # sub-agents spend this run's allowance: they rest
    if state.paused is not None:
        effects.append(Record(KILL_SIGNAL, True, "already paused", message))
        return state, effects
    cancelled = run.in_flight
    effects.append(CancelInFlight())
    outcome = (
        f"paused; {cancelled} in-flight activities cancelled (re-dispatched on resume), "
        f"{len(state.children)} children paused"
    )
    state, rested = rest(state, message, outcome, now, rules)
    return state, effects + rested


def rest(
    state: ControlState, message: KillMessage, outcome: str, now: datetime, rules: ControlRules
) -> Step:
    """Hold the run paused by ``message`` until it is lifted or ``pause_timeout`` ends."""
    state = state.model_copy(
        update={
            "paused": message,
            "paused_since": now,
            "pause_deadline": now + timedelta(seconds=rules.pause_timeout),
        }
    )
    effects: list[Effect] = [
        Record(KILL_SIGNAL, True, outcome, message),
        ShowState("paused"),
        WatchPause(message, rules.pause_timeout),
    ]
    if message.target in ("tenant", "agent") and rules.check_kills_at_start:
        effects.append(PollFleet(message))
    return state, effects


def kill_halt(message: KillMessage, run: RunFacts) -> Halt:
    """The halt a ``terminate`` kill asks for."""
    return Halt(
        scope=_kill_scope(message, run),
        dispatch=f"{message.mode} by {message.issuer}",
        killed_by=message.issuer,
        kill_reason=message.reason,
    )


def pause_timed_out(message: KillMessage, run: RunFacts, rules: ControlRules) -> Halt:
    """The halt of a run whose pause ``message`` was not lifted within ``pause_timeout``."""
    reason = (
        f"paused by {message.issuer} and not resumed within "
        f"control.pause_timeout ({rules.pause_timeout:g} s)"
    )
    return Halt(
        scope=_kill_scope(message, run),
        dispatch=f"{message.mode} by {message.issuer}",
        killed_by=message.issuer,
        kill_reason=reason,
    )


def _kill_scope(message: KillMessage, run: RunFacts) -> str:
    return {
        "run": run.scope,
        "tree": f"tree of {message.workflow_id}",
        "tenant": f"tenant {message.tenant}",
        "agent": f"agent {message.agent}",
    }[message.target]


def _resume(state: ControlState, message: ResumeMessage) -> Step:
    effects: list[Effect] = _relay_down(state, message)
    if state.paused is None:
        effects.append(Record(RESUME_SIGNAL, True, "not paused; nothing to resume", message))
        return state, effects
    before = {"paused_by": state.paused.issuer, "since": _iso(state.paused_since)}
    state = state.model_copy(update={"paused": None, "paused_since": None, "pause_deadline": None})
    effects += [
        Record(RESUME_SIGNAL, True, "resumed", message, before, {"state": "running"}),
        ShowState("running"),
    ]
    return state, effects


def pause_over(state: ControlState, message: KillMessage) -> bool:
    """Whether the pause ``message`` started is no longer the one in force."""
    return state.paused is not message


# -- the fleet: kills and resumes the ledger stored for a tenant or an agent -----------------

Verify = Callable[[str, Any, int], tuple[AnyControl | None, str | None]]
"""Checks one stored message: (signal, its JSON, recorded_at_ms) -> (message, problem)."""


def take_stored(
    state: ControlState,
    stored: Mapping[str, Mapping[str, Any]],
    verify: Verify,
    now: datetime,
    run: RunFacts,
    rules: ControlRules,
) -> Step:
    """Take the fleet-wide kills and resumes the ledger keeps for this run's tenant and agent.

    Each stored message is looked at once (by scope, signal and the time the ledger took
    it) and checked by ``verify`` (signed, fresh against that time). Then per scope the
    newer of kill and resume wins (:func:`judge_fleet`).

    Args:
        state: The run's control state.
        stored: Scope -> signal -> ``{"recorded_at_ms": ..., "message": {...}}``.
        verify: The signature and freshness check of one stored message (pure).
        now: Workflow time.
        run: What the decision needs to know of the run.
        rules: The policy's control settings.

    Returns:
        The next state and the effects to carry out, in order.

    """
    effects: list[Effect] = []
    fleet = {scope: dict(by_signal) for scope, by_signal in state.fleet.items()}
    seen = set(state.fleet_seen)
    fresh = False
    for scope in sorted(stored):
        for signal, entry in sorted(stored[scope].items()):
            if signal not in (KILL_SIGNAL, RESUME_SIGNAL):
                continue
            recorded_at = int(entry["recorded_at_ms"])
            identity = (scope, signal, recorded_at)
            if identity in seen:
                continue
            seen.add(identity)
            known = fleet.setdefault(scope, {}).get(signal)
            if known is not None and known.recorded_at_ms > recorded_at:
                continue
            message, problem = verify(signal, entry["message"], recorded_at)
            if problem is None and message is not None:
                problem = misdirected(message, run)
            if problem is not None or message is None:
                effects.append(
                    rejection(signal, message, f"stored for {scope}: {problem or 'rejected'}")
                )
                continue
            assert isinstance(message, KillMessage | ResumeMessage)
            fleet[scope][signal] = FleetEntry(recorded_at_ms=recorded_at, message=message)
            fresh = True
    state = state.model_copy(update={"fleet": fleet, "fleet_seen": frozenset(seen)})
    if fresh:
        verdict = judge_fleet(state)
        if verdict is not None:
            state, judged = apply(state, verdict, now, run, rules)
            effects += judged
    return state, effects


def judge_fleet(state: ControlState) -> KillMessage | ResumeMessage | None:
    """The fleet message the run must apply now, if any.

    Per scope the newer of its kill and its resume wins. A signed ``terminate`` that wins
    is applied; else a winning kill pauses a run not yet paused; else, when no kill wins,
    the newest resume lifts a pause that came from the fleet (tenant or agent).
    """
    winning: list[KillMessage] = []
    resumes: list[FleetEntry] = []
    for scope in sorted(state.fleet):
        kill = state.fleet[scope].get(KILL_SIGNAL)
        resume = state.fleet[scope].get(RESUME_SIGNAL)
        if kill is not None and (resume is None or resume.recorded_at_ms < kill.recorded_at_ms):
            assert isinstance(kill.message, KillMessage)
            winning.append(kill.message)
        elif resume is not None:
            resumes.append(resume)
    terminate = [k for k in winning if k.mode == "terminate" and k.signature is not None]
    if terminate:
        return terminate[0]
    if winning:
        return winning[0] if state.paused is None else None
    if state.paused is not None and state.paused.target in ("tenant", "agent") and resumes:
        latest = max(resumes, key=lambda r: r.recorded_at_ms).message
        assert isinstance(latest, ResumeMessage)
        return latest
    return None


# -- children -------------------------------------------------------------------------------


def joined(state: ControlState, key: str, workflow_id: str) -> Step:
    """A child started: remember it, and pause it too if this run is paused."""
    state = state.model_copy(update={"children": {**state.children, key: workflow_id}})
    if state.paused is None:
        return state, []
    return state, [RelayTo(KILL_SIGNAL, state.paused, workflow_id, "down")]


def left(state: ControlState, key: str) -> tuple[ControlState, bool]:
    """A child ended: forget it. Also says whether it was known."""
    if key not in state.children:
        return state, False
    children = {k: v for k, v in state.children.items() if k != key}
    return state.model_copy(update={"children": children}), True


def _relay_down(state: ControlState, message: AnyControl) -> list[Effect]:
    signal = SIGNAL_OF_ACTION[message.action]
    return [RelayTo(signal, message, child, "down") for child in _children(state)]


def _children(state: ControlState) -> list[str]:
    return sorted(set(state.children.values()))


# -- continue-as-new ----------------------------------------------------------------------


def carry(state: ControlState, nonces: Mapping[str, int]) -> dict[str, Any]:
    """What a continue-as-new hands on: the nonces seen and the pause in force."""
    carried: dict[str, Any] = {"nonces": dict(nonces)}
    if state.paused is not None:
        carried["paused"] = state.paused.model_dump(mode="json")
    return carried


def restore(
    state: ControlState, carried: Mapping[str, Any], now: datetime, rules: ControlRules
) -> Step:
    """Take over the pause the previous run of a continue-as-new chain handed on.

    (The nonces it handed on belong to the signature check: ``carried["nonces"]``.)
    """
    paused = carried.get("paused")
    if not paused:
        return state, []
    message = KillMessage.model_validate(paused)
    return rest(state, message, "still paused after continue-as-new", now, rules)


# -- backpressure -------------------------------------------------------------------------


def _backpressure(
    state: ControlState,
    message: BackpressureMessage,
    now: datetime,
    run: RunFacts,
    rules: ControlRules,
) -> Step:
    duration_ms = min(message.duration_ms, int(rules.max_backpressure * 1000))
    before = state.backpressure.model_dump(mode="json") if state.backpressure else None
    pressure = ActiveBackpressure(
        retry_after_ms=message.retry_after_ms,
        max_concurrency=message.max_concurrency,
        reduce_batch_to=message.reduce_batch_to,
        source=message.source,
        reason=message.reason,
        issuer=message.issuer,
        until=now + timedelta(milliseconds=duration_ms),
    )
    state = state.model_copy(update={"backpressure": pressure})
    effects: list[Effect] = []
    relayed = []
    propagation = rules.backpressure_propagation
    if message.relay != "down" and propagation in ("up", "both") and run.parent is not None:
        effects.append(RelayTo(BACKPRESSURE_SIGNAL, message, run.parent, "up"))
        relayed.append(f"parent {run.parent}")
    if message.relay != "up" and propagation in ("down", "both"):
        children = _children(state)
        effects += _relay_down(state, message)
        relayed += [f"child {c}" for c in children]
    outcome = f"slowing down for {duration_ms} ms"
    if relayed:
        outcome += "; relayed to " + ", ".join(relayed)
    after = pressure.model_dump(mode="json")
    effects.append(Record(BACKPRESSURE_SIGNAL, True, outcome, message, before, after))
    return state, effects


def current_backpressure(state: ControlState, now: datetime) -> ActiveBackpressure | None:
    """The backpressure holding at ``now``, if any."""
    pressure = state.backpressure
    return pressure if pressure is not None and now < pressure.until else None


# -- overrides ----------------------------------------------------------------------------


def _override(
    state: ControlState, message: OverrideMessage, now: datetime, run: RunFacts, rules: ControlRules
) -> Step:
    effects: list[Effect] = []
    if message.target == "tree":
        effects += _relay_down(state, message)  # every run of the tree judges it for itself
    if message.limit not in rules.overridable:
        problem = (
            f"unknown limit {message.limit!r}: an override changes a per-task quota "
            "(max_tokens_per_task, max_cost_usd_per_task, max_tool_calls_per_task, "
            "max_subtasks_per_task, max_child_workflows_per_task)"
        )
        return state, [*effects, rejection(OVERRIDE_SIGNAL, message, problem)]
    limit = run.limit(message.limit)
    if limit is None:
        problem = f"{message.limit} is not set for agent {run.agent}"
        return state, [*effects, rejection(OVERRIDE_SIGNAL, message, problem)]
    state, restored = expire(state, now)
    effects += restored
    ceiling = limit.ceiling
    for restore_ in restored:
        if isinstance(restore_, SetCeiling) and restore_.limit == message.limit:
            ceiling = restore_.ceiling
    value = decide_override(message.value, limit.hard_ceiling, rules.above_ceiling)
    if value is None:
        problem = (
            f"{message.value:g} is above the hard ceiling {limit.hard_ceiling:g} of "
            f"{message.limit} (control.above_ceiling: reject)"
        )
        return state, [*effects, rejection(OVERRIDE_SIGNAL, message, problem)]
    active = state.overrides.get(message.limit)
    duration = min(message.duration_s, rules.max_override)
    override = ActiveOverride(
        limit=message.limit,
        scope=limit.scope,
        value=value,
        before=active.before if active else ceiling,
        hard_ceiling=limit.hard_ceiling,
        until=now + timedelta(seconds=duration),
        issuer=message.issuer,
        reason=message.reason,
    )
    state = state.model_copy(update={"overrides": {**state.overrides, message.limit: override}})
    clamped = (
        f" (clamped from {message.value:g} to the hard ceiling)" if value != message.value else ""
    )
    effects += [
        SetCeiling(message.limit, value),
        Record(
            OVERRIDE_SIGNAL,
            True,
            f"override {message.limit} {ceiling:g} -> {value:g} for {duration:g} s{clamped}",
            message,
            before={"limit": message.limit, "ceiling": ceiling},
            after={"limit": message.limit, "ceiling": value, "until": _iso(override.until)},
        ),
    ]
    return state, effects


def decide_override(
    requested: float, hard_ceiling: float, above_ceiling: Literal["reject", "clamp"]
) -> float | None:
    """The ceiling an override sets, or ``None`` when it is rejected.

    An override sets the value asked for (lower or higher than the ceiling in force) but
    never above ``hard_ceiling``: a value above it is rejected (``reject``) or cut to it
    (``clamp``).
    """
    if requested > hard_ceiling:
        return None if above_ceiling == "reject" else hard_ceiling
    return requested


def next_expiry(state: ControlState) -> datetime | None:
    """When the first backpressure or override in force runs out (``None``: none is).

    Before then :func:`expire` changes nothing, so a caller may skip it until that time.
    """
    ends = [override.until for override in state.overrides.values()]
    if state.backpressure is not None:
        ends.append(state.backpressure.until)
    return min(ends) if ends else None


def expire(state: ControlState, now: datetime) -> Step:
    """Drop the backpressure and the overrides whose time is up, restoring the limits."""
    if state.backpressure is None and not state.overrides:
        return state, []
    pressure = state.backpressure
    if pressure is not None and now >= pressure.until:
        pressure = None
    effects: list[Effect] = []
    kept: dict[str, ActiveOverride] = {}
    for name, override in state.overrides.items():
        if now >= override.until:
            effects.append(SetCeiling(name, override.before))
        else:
            kept[name] = override
    if pressure is state.backpressure and not effects:
        return state, []
    return state.model_copy(update={"backpressure": pressure, "overrides": kept}), effects


# -- the dispatch gate ----------------------------------------------------------------------


@dataclass(frozen=True)
class Go:
    """The dispatch may start now."""


@dataclass(frozen=True)
class AwaitResume:
    """Wait until the pause is lifted (or the run halts)."""


@dataclass(frozen=True)
class SleepUntil:
    """Wait until ``moment``: backpressure spaces dispatches ``retry_after_ms`` apart."""

    moment: datetime


@dataclass(frozen=True)
class AwaitSlot:
    """Wait until fewer than ``cap`` dispatches run, at most ``timeout`` (it then expires)."""

    cap: int
    timeout: timedelta


GateDecision = Go | AwaitResume | SleepUntil | AwaitSlot
"""What :func:`may_dispatch` answers."""


def holds(state: ControlState, now: datetime) -> bool:
    """Whether a new dispatch must pass the gate (paused, or backpressure holds)."""
    return state.paused is not None or current_backpressure(state, now) is not None


def may_dispatch(
    state: ControlState, now: datetime, in_flight: int, last_dispatch: datetime | None
) -> GateDecision:
    """Whether a new dispatch may start now, and if not, what to wait for.

    Args:
        state: The run's control state (expired entries are ignored).
        now: Workflow time.
        in_flight: Dispatches started and not yet settled.
        last_dispatch: When the last dispatch started, if any did.

    Returns:
        :class:`Go`, or what to wait for before asking again.

    """
    if state.paused is not None:
        return AwaitResume()
    pressure = current_backpressure(state, now)
    if pressure is None:
        return Go()
    if pressure.retry_after_ms and last_dispatch is not None:
        ready = min(last_dispatch + timedelta(milliseconds=pressure.retry_after_ms), pressure.until)
        if now < ready:
            return SleepUntil(ready)
    cap = pressure.max_concurrency
    if cap is not None and in_flight >= cap:
        return AwaitSlot(cap, max(pressure.until - now, timedelta(milliseconds=1)))
    return Go()


def held(state: ControlState) -> ControlState:
    """Count one dispatch agent code asked for while the run was paused."""
    return state.model_copy(update={"held_while_paused": state.held_while_paused + 1})


# -- the audit trail and the query ----------------------------------------------------------


class AuditTrail:
    """The control records of a run, numbered in the order they were made."""

    def __init__(self) -> None:
        self.records: list[ControlRecord] = []
        self.accepted = 0
        self.rejected = 0
        self.seq = 0

    def add(self, entry: Record, now: datetime) -> ControlRecord:
        """Number ``entry``, keep it, and return it as a :class:`ControlRecord`."""
        self.seq += 1
        if entry.accepted:
            self.accepted += 1
        else:
            self.rejected += 1
        message = entry.message
        record = ControlRecord(
            seq=self.seq,
            time=now,
            signal=entry.signal,
            accepted=entry.accepted,
            outcome=entry.outcome,
            issuer=message.issuer if message else "",
            reason=message.reason if message else "",
            target=message.target if message else "",
            key_id=message.key_id if message else None,
            nonce=message.nonce if message else "",
            relay=message.relay if message else None,
            before=entry.before,
            after=entry.after,
        )
        self.records.append(record)
        if len(self.records) > 2 * AUDIT_KEPT:
            del self.records[:AUDIT_KEPT]
        return record


def status(
    state: ControlState,
    audit: AuditTrail,
    now: datetime,
    workflow_id: str,
    run_id: str,
    killed: bool,
) -> ControlStatus:
    """The run's control state and audit trail as the ``governor.control`` query shows it."""
    paused = state.paused
    shown: RunState = "killed" if killed else "paused" if paused is not None else "running"
    return ControlStatus(
        workflow_id=workflow_id,
        run_id=run_id,
        state=shown,
        paused_since=state.paused_since,
        paused_by=paused.issuer if paused else None,
        pause_reason=paused.reason if paused else None,
        pause_deadline=state.pause_deadline,
        backpressure=current_backpressure(state, now),
        overrides=[o for o in state.overrides.values() if now < o.until],
        dispatches_refused_while_paused=state.held_while_paused,
        accepted=audit.accepted,
        rejected=audit.rejected,
        audit=audit.records[-AUDIT_KEPT:],
    )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


__all__ = [
    "AUDIT_KEPT",
    "BACKPRESSURE_SIGNAL",
    "CONTROL_QUERY",
    "KILL_SIGNAL",
    "MESSAGE_OF_SIGNAL",
    "OVERRIDE_SIGNAL",
    "RESUME_SIGNAL",
    "SIGNAL_OF_ACTION",
    "ActiveBackpressure",
    "ActiveOverride",
    "AnyControl",
    "AuditTrail",
    "AwaitResume",
    "AwaitSlot",
    "BackpressureMessage",
    "CancelInFlight",
    "ControlMessage",
    "ControlRecord",
    "ControlRules",
    "ControlState",
    "ControlStatus",
    "Effect",
    "FleetEntry",
    "GateDecision",
    "Go",
    "Halt",
    "KillMessage",
    "OverrideMessage",
    "OwnLimit",
    "PollFleet",
    "Record",
    "RelayTo",
    "ResumeMessage",
    "RunFacts",
    "RunState",
    "SetCeiling",
    "ShowState",
    "SleepUntil",
    "Step",
    "Target",
    "Verify",
    "WatchPause",
    "apply",
    "carry",
    "current_backpressure",
    "decide_override",
    "expire",
    "held",
    "holds",
    "joined",
    "judge_fleet",
    "kill_halt",
    "left",
    "may_dispatch",
    "misdirected",
    "next_expiry",
    "pause_over",
    "pause_timed_out",
    "receive",
    "rejection",
    "rest",
    "take_stored",
]
