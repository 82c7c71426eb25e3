"""The governed state of one workflow run: its ledger, context, deadline and breach."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import temporalio.workflow
from pydantic import BaseModel, ConfigDict, Field

from ..context import (
    DEFAULT_TENANT,
    HEADER,
    AllowanceEntry,
    BudgetContext,
    Deadline,
    StartFacts,
    proven_by,
    take_start_judgement,
    trusted_context,
    verified_attribution,
)
from ..control._messages import Keyring
from ..core.accounting import (
    FLOAT_OPS,
    RESOURCES,
    ZERO,
    Amounts,
    GovernanceEvent,
    Limit,
    LimitState,
    Ops,
    Refusal,
    RunLedger,
)
from ..core.decisions import DecisionRecord, DecisionSink, DispatchKind
from ..core.scopes import SharedLimit
from ..errors import BreachDetails, BudgetExceeded, ChainLink, GovernanceKilled, RunawayLoop
from ..policy import PER_TASK_LIMITS, Policy
from ._guard import RunGuard, evidence_numbers
from ._shared import SharedBudget

if TYPE_CHECKING:
    from ..core.detectors import Verdict
    from ._control import ControlPlane, ControlRecord

_RESOURCE_TO_LIMIT_NAME = {resource: name for name, resource in PER_TASK_LIMITS.items()}
_CARVED = ("tokens", "cost_usd", "tool_calls", "child_workflows")
_STARVING = ("tokens", "cost_usd")
_RECENT_EVENTS = 50
CHILD_KEY_PREFIX = "child:"
_F = TypeVar("_F", bound="asyncio.Future[Any]")


class BudgetSnapshot(BaseModel):
    """What the ``governor.budget`` query returns: spend and remaining per limit and scope."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    run_id: str
    agent: str
    tenant: str
    owner: str | None
    depth: int
    chain: list[ChainLink]
    limits: list[LimitState]
    """Every limit of the run (own quotas and inherited allowance) with its spend."""
    committed: dict[str, float]
    """Spend so far, per resource, including finished children's subtrees."""
    own_spend: dict[str, float]
    """Spend of this run's own activities (committed less what its children spent)."""
    reserved: dict[str, float]
    """Open reservations of in-flight dispatches (and carved child allowances)."""
    in_flight: int
    deadline: datetime | None
    breach: BreachDetails | None
    event_count: int
    recent_events: list[GovernanceEvent] = Field(default_factory=list)
    """The last decisions, oldest first."""
    shared_limits: list[SharedLimit] = Field(default_factory=list)
    """Limits shared across runs (tenant, owner, agent, tool, global) that applied to this
    run's dispatches so far; their spend is in the ledger (``temporal-governor budget``)."""
    shared_open: int = 0
    """This run's open reservations in the ledger."""


def _judged(
    context: BudgetContext,
    info: temporalio.workflow.Info,
    policy: Policy,
    keyring: Keyring | None,
) -> tuple[BudgetContext, list[str]]:
    """The run's context as far as the run can prove it, and what was not believed.

    ``decode_context`` judges a start header in workflow code already (its context then
    names this run in ``from_run``); a context that was not judged (no header, or built
    by hand) is judged here. With a ``keyring`` the tenant claim is also checked against
    its signature (required when the policy's ``control.require_signed_attribution`` is
    set). Either way the problems come back once.
    """
    facts = StartFacts.of_info(info)
    judgement = take_start_judgement(info.run_id)
    problems = list(judgement.problems) if judgement else []
    proven = judgement.proven if judgement else False
    if context.from_run != info.run_id:
        proven = proven_by(context, facts)
        context, more = trusted_context(context, facts)
        problems += more
    if keyring is not None:
        require = policy.control.require_signed_attribution
        context, more = verified_attribution(
            context, facts, keyring, proven=proven, require=require
        )
        problems += more
    return context, problems


ATTRIBUTION_REQUIRED = "control.require_attribution"
"""The ``limit`` of the ``GovernanceKilled`` failure of a run refused for naming no payer."""

CHILD_SHARE_PATCH = "temporal-governor/child-share-v1"
"""The patch id (``workflow.patched``) of the ``child_allowance: auto`` carve: a run that
carves a child under ``auto`` records it once; one replayed without it carves as before."""


@dataclass(frozen=True)
class _FairShare:
    """``child_allowance: auto``: a child's share shrinks with the children in flight."""

    running: int
    """This run's children in flight (carved and not yet settled) before this one."""
    caps: dict[str, float]
    """The child's own terminate per-task ceilings: it can never spend more."""


def _starved(resource: str, left: float) -> bool:
    """Whether a child is refused outright for ``resource``, with ``left`` after its estimate.

    Only when nothing of ``tokens`` or ``cost_usd`` is left: the other resources are left
    to the reservation of the carve.
    """
    return resource in _STARVING and left <= 0


def _share(
    rule: float | _FairShare, resource: str, left: float, estimate: float, ops: Ops = FLOAT_OPS
) -> float:
    """What a child is carved of one resource, of ``left`` (what remains after its estimate).

    A negative ``left`` counts as nothing. A fraction ``f``: ``f * left``. A fair share:
    ``left / (running + 2)`` (half of what is left with no other child running, a third
    with one, ...), at most the child's own ceiling. Never less than the estimate (which
    ``left`` does not include). ``ops`` is :data:`~temporal_governor.accounting.FLOAT_OPS`
    at runtime (the bounded proofs pass the solver's).
    """
    left = ops.max(left, 0.0)
    if not isinstance(rule, _FairShare):
        return ops.max(estimate, rule * left)
    share = left / (rule.running + 2)
    cap = rule.caps.get(resource)
    if cap is not None:
        share = ops.min(share, cap)
    return ops.max(estimate, share)


class GovernedRun:
    """Budget state of one workflow run, rebuilt deterministically on every replay."""

    def __init__(
        self,
        policy: Policy,
        context: BudgetContext,
        sinks: Sequence[DecisionSink] = (),
        keyring: Keyring | None = None,
    ) -> None:
        info = temporalio.workflow.info()
        self.policy = policy
        self.sinks = sinks
        self.info = info
        context, refused = _judged(context, info, policy, keyring)
        self.context = context
        self.agent = info.workflow_type
        self.link = ChainLink(workflow_id=info.workflow_id, run_id=info.run_id, agent=self.agent)
        self.scope = f"run {self.agent}/{info.workflow_id}"
        self.ledger = RunLedger(limits=self._limits(), committed=context.carried or ZERO)
        self.deadline = self._deadline()
        self.max_depth, self.max_depth_scope = self._max_depth()
        self.breach: BudgetExceeded | None = None
        self.breached = asyncio.get_running_loop().create_future()
        self._dispatches = 0
        self._wall_alerted = False
        self.children_spend = ZERO
        self.in_flight: set[asyncio.Future[Any]] = set()
        self._targets: dict[str, tuple[DispatchKind, str]] = {}
        self._models: dict[str, dict[str, int]] = {}
        self.shared = SharedBudget(self)
        self.killed = False
        self.guard = RunGuard(self)
        self.control: ControlPlane | None = None
        """Set by the workflow interceptor once the control signals are installed."""
        self._record_refused_header(refused)
        if policy.control.require_attribution and self._unattributed():
            self.kill(
                self.details(
                    limit=ATTRIBUTION_REQUIRED,
                    resource="attribution",
                    scope=self.scope,
                    observed=0.0,
                    ceiling=0.0,
                    dispatch="run start",
                    evidence={
                        "message": "the run arrived with no tenant or owner (start it inside "
                        "`with attribution(...)`, from a governed client)"
                    },
                )
            )

    def _unattributed(self) -> bool:
        """A root run that names no payer: default tenant, no owner, no governed caller."""
        who = self.context.attribution
        return (
            self.info.parent is None
            and not self.context.started_by
            and who.tenant == DEFAULT_TENANT
            and who.owner is None
        )

    def _record_refused_header(self, problems: list[str]) -> None:
        """Record what the run did not believe of its start header (decisions and log)."""
        for problem in problems:
            self.ledger.log_control(False, HEADER, "start header", problem)
            temporalio.workflow.logger.warning(
                "governor: start header of %s refused in part: %s", self.scope, problem
            )
        if problems:
            self._log_new_events()

    # -- construction -------------------------------------------------------------------

    def _limits(self) -> list[Limit]:
        limits: list[Limit] = []
        quotas = self.policy.quotas_for(self.agent)
        for resource, spec in quotas.per_task().items():
            if resource not in RESOURCES:
                continue
            limits.append(
                Limit(
                    name=_RESOURCE_TO_LIMIT_NAME[resource],
                    resource=resource,
                    ceiling=float(spec.limit),
                    scope=self.scope,
                    on_breach=self.policy.on_breach_of(spec),
                    warn_at=self.policy.warn_at_of(spec),
                )
            )
        for resource, entry in self.context.allowance.items():
            limits.append(
                Limit(
                    name=entry.limit,
                    resource=resource,
                    ceiling=entry.amount,
                    scope=entry.scope,
                    on_breach="terminate",
                )
            )
        return limits

    def _deadline(self) -> Deadline | None:
        inherited = self.context.deadline
        spec = self.policy.quotas_for(self.agent).per_task().get("wall_time_s")
        if spec is None or self.policy.on_breach_of(spec) != "terminate":
            return inherited
        own = Deadline(
            at=self.info.start_time + timedelta(seconds=float(spec.limit)),
            limit=_RESOURCE_TO_LIMIT_NAME["wall_time_s"],
            scope=self.scope,
            seconds=float(spec.limit),
        )
        return own if inherited is None or own.at < inherited.at else inherited

    def _max_depth(self) -> tuple[int | None, str]:
        inherited = self.context.max_depth
        entry = self.policy.agent_for(self.agent)
        own = entry[1].loop_detection.max_depth if entry else None
        if own is not None and (inherited is None or own < inherited):
            return own, self.scope
        return inherited, self.context.max_depth_scope

    # -- decisions ------------------------------------------------------------------------

    def next_key(self, kind: str, name: str) -> str:
        """A deterministic idempotency key for the next dispatch of this run."""
        self._dispatches += 1
        return f"{kind}:{self._dispatches}:{name}"

    def track(self, handle: _F) -> _F:
        """Remember an in-flight dispatch so a breach can cancel it."""
        self.in_flight.add(handle)
        handle.add_done_callback(self.in_flight.discard)
        return handle

    def reserve(self, key: str, amounts: Amounts, dispatch: str) -> None:
        """Reserve a dispatch's estimate, or halt the run with :class:`BudgetExceeded`."""
        kind, _, target = dispatch.partition(" ")
        self._targets[key] = (kind if kind in ("activity", "child") else "", target)  # type: ignore[assignment]
        if self.breach is not None:
            raise self._halt_again(dispatch)
        self._check_deadline(key, dispatch)
        refusal = self.ledger.reserve(key, amounts)
        if refusal is not None:
            self.ledger.log_breach(key, refusal)
            raise self._halt(refusal, dispatch)
        self._log_new_events()

    def commit(self, key: str, actual: Amounts, models: dict[str, int] | None = None) -> None:
        """Commit a finished dispatch's usage and release the rest of its reservation."""
        if models:
            self._models[key] = models
        if key.startswith(CHILD_KEY_PREFIX) and key in self.ledger.reservations:
            self.children_spend = self.children_spend + actual
        self.ledger.commit(key, actual)
        self._log_new_events()

    def note_wait(self, key: str, limit: str, scope: str, observed: float, ceiling: float) -> None:
        """Record that a dispatch waits for a shared scope (policy ``shared.on_refusal: wait``)."""
        self.ledger.note_wait(key, limit=limit, scope=scope, observed=observed, ceiling=ceiling)
        self._log_new_events()

    def halt_shared(self, key: str, refusal: Refusal, dispatch: str) -> NoReturn:
        """Halt the run because a shared scope refused a dispatch."""
        self.ledger.release(key)
        self.ledger.log_breach(key, refusal)
        raise self._halt(refusal, dispatch)

    def release(self, key: str) -> None:
        """Release the reservation of a dispatch that never started."""
        self.ledger.release(key)
        self._log_new_events()

    def carve(self, key: str, child_type: str, estimate: Amounts) -> dict[str, AllowanceEntry]:
        """Reserve a child's allowance out of this run's remaining budget.

        For every resource this run limits (``tokens``, ``cost_usd``, ``tool_calls``,
        ``child_workflows``) the child gets a share of what is left after its estimate
        (:meth:`_share`), and at least its estimate; it is refused when less than its
        estimate, or nothing at all, remains of ``tokens`` or ``cost_usd``. The whole
        carve is reserved here until the child ends, so the carves of all children in
        flight plus this run's own spend and reservations never pass its ceilings.
        """
        dispatch = f"child {child_type}"
        self._targets[key] = ("child", child_type)
        if self.breach is not None:
            raise self._halt_again(dispatch)
        depth = self.context.depth + 1
        if self.max_depth is not None and depth > self.max_depth:
            refusal = Refusal(
                limit="loop_detection.max_depth",
                resource="depth",
                scope=self.max_depth_scope,
                observed=depth,
                ceiling=self.max_depth,
                committed=self.context.depth,
                overage=0.0,
            )
            self.ledger.log_breach(key, refusal)
            raise self._halt(refusal, dispatch, loop=True)
        self._check_deadline(key, dispatch)
        base = estimate + Amounts(subtasks=1, child_workflows=1)
        reservation = base
        allowance: dict[str, AllowanceEntry] = {}
        rule: float | _FairShare | None = None
        for resource in _CARVED:
            binding = self.ledger.binding_limit(resource)
            remaining = self.ledger.remaining(resource)
            if binding is None or remaining is None:
                continue
            left = remaining - base.get(resource)
            if _starved(resource, left):
                used = binding.ceiling - remaining
                refusal = Refusal(
                    limit=binding.name,
                    resource=resource,
                    scope=binding.scope,
                    observed=used + estimate.get(resource),
                    ceiling=binding.ceiling,
                    committed=self.ledger.committed.get(resource),
                    overage=max(0.0, self.ledger.committed.get(resource) - binding.ceiling),
                )
                self.ledger.log_breach(key, refusal)
                raise self._halt(refusal, dispatch)
            if rule is None:
                rule = self._carve_rule(child_type)
            give = _share(rule, resource, left, estimate.get(resource))
            allowance[resource] = AllowanceEntry(
                amount=give, limit=binding.name, scope=binding.scope
            )
            # the child itself is one child workflow; its allowance is for its descendants
            own = 1.0 if resource == "child_workflows" else 0.0
            reservation = reservation.model_copy(update={resource: own + give})
        self.reserve(key, reservation, dispatch)
        return allowance

    def _carve_rule(self, child_type: str) -> float | _FairShare:
        """How this run carves a child: a fraction of what is left, or a fair share.

        The policy's ``child_allowance`` fraction as it is. ``auto`` is a
        :class:`_FairShare` with the number of this run's children in flight and the
        child's own per-task ceilings; histories recorded before ``auto`` existed (no
        :data:`CHILD_SHARE_PATCH` marker) replay with the former default, ``1.0``.
        """
        setting = self.policy.child_allowance_for(self.agent)
        if setting != "auto":
            return float(setting)
        if not temporalio.workflow.patched(CHILD_SHARE_PATCH):
            return 1.0
        running = sum(1 for key in self.ledger.reservations if key.startswith(CHILD_KEY_PREFIX))
        caps = {
            resource: spec.ceiling
            for resource, spec in self.policy.quotas_for(child_type).per_task().items()
            if resource in _CARVED and self.policy.on_breach_of(spec) == "terminate"
        }
        return _FairShare(running=running, caps=caps)

    def _check_deadline(self, key: str, dispatch: str) -> None:
        now = temporalio.workflow.now()
        if self.deadline is not None and now >= self.deadline.at:
            elapsed = self.deadline.seconds + (now - self.deadline.at).total_seconds()
            refusal = Refusal(
                limit=self.deadline.limit,
                resource="wall_time_s",
                scope=self.deadline.scope,
                observed=elapsed,
                ceiling=self.deadline.seconds,
                committed=elapsed,
                overage=0.0,
            )
            self.ledger.log_breach(key, refusal)
            raise self._halt(refusal, dispatch)
        spec = self.policy.quotas_for(self.agent).per_task().get("wall_time_s")
        if (
            spec is not None
            and not self._wall_alerted
            and self.policy.on_breach_of(spec) == "alert"
        ):
            elapsed = (now - self.info.start_time).total_seconds()
            if elapsed > float(spec.limit):
                self._wall_alerted = True
                temporalio.workflow.logger.warning(
                    "governance alert: %s (wall_time_s) of %s: observed %.1f > ceiling %.1f",
                    _RESOURCE_TO_LIMIT_NAME["wall_time_s"],
                    self.scope,
                    elapsed,
                    float(spec.limit),
                )

    def halt(self, refusal: Refusal, dispatch: str) -> BudgetExceeded:
        """Halt the run on a refusal decided outside the run's ledger (a risk tier's)."""
        return self._halt(refusal, dispatch)

    def halt_verdict(self, verdict: Verdict, dispatch: str, loop: bool) -> BudgetExceeded:
        """Halt the run on a detector's verdict: ``RunawayLoop`` for a loop, else a breach.

        The failure's details carry the verdict's evidence and message.
        """
        observed, ceiling = evidence_numbers(verdict.evidence)
        details = self.details(
            limit=f"loop_detection.{verdict.detector}" if loop else verdict.detector,
            resource="dispatches" if loop else "spend",
            scope=self.scope,
            observed=observed,
            ceiling=ceiling,
            dispatch=dispatch,
            evidence={**verdict.evidence, "detector": verdict.detector, "message": verdict.message},
        )
        error: BudgetExceeded = RunawayLoop(details) if loop else BudgetExceeded(details)
        return self._stop(error) if self.breach is None else error

    def log_events(self) -> None:
        """Hand the decisions logged since the last call to the sinks and the log."""
        self._log_new_events()

    def kill(self, details: BreachDetails) -> None:
        """Stop the run with ``GovernanceKilled`` (a kill ``terminate`` or a pause timeout)."""
        if self.breach is not None:
            return
        self.killed = True
        self._stop(GovernanceKilled(details))

    def raise_if_halted(self) -> None:
        """Raise the run's breach or kill again (a dispatch asked for after the halt)."""
        if self.breach is not None:
            raise self._halt_again(self.breach.breach.dispatch)

    def hard_ceiling(self, limit_name: str) -> float:
        """The ceiling no override can lift for one of the run's own per-task limits."""
        spec = getattr(self.policy.quotas_for(self.agent), limit_name, None)
        return float("inf") if spec is None else spec.ceiling

    def control_event(self, record: ControlRecord) -> None:
        """Log a control message the run accepted or rejected (sinks, telemetry, log)."""
        self.ledger.log_control(record.accepted, record.signal, record.issuer, record.outcome)
        self._log_new_events()
        temporalio.workflow.logger.info(
            "governor control %s %s from %s: %s",
            record.signal,
            "accepted" if record.accepted else "REJECTED",
            record.issuer or "?",
            record.outcome,
        )

    def _halt(self, refusal: Refusal, dispatch: str, loop: bool = False) -> BudgetExceeded:
        details = self._details(refusal, dispatch)
        error: BudgetExceeded = RunawayLoop(details) if loop else BudgetExceeded(details)
        return self._stop(error)

    def _stop(self, error: BudgetExceeded) -> BudgetExceeded:
        """Make ``error`` the run's breach and wake the workflow interceptor to fail the run."""
        self.breach = error
        self._log_new_events()
        if not self.breached.done():
            self.breached.set_result(None)
        return error

    def _halt_again(self, dispatch: str) -> BudgetExceeded:
        assert self.breach is not None
        return self._error(self.breach.breach.model_copy(update={"dispatch": dispatch}))

    def _details(self, refusal: Refusal, dispatch: str) -> BreachDetails:
        return self.details(**refusal.model_dump(), dispatch=dispatch)

    def details(self, **fields: Any) -> BreachDetails:
        """Breach details of this run: ``fields`` plus its chain, tenant and spend so far."""
        return BreachDetails(
            chain=[*self.context.chain, self.link],
            tenant=self.context.attribution.tenant,
            spent=self.ledger.committed.nonzero(),
            **fields,
        )

    def final_error(self) -> BudgetExceeded:
        """The breach to fail the run with, its spend brought up to date."""
        assert self.breach is not None
        spent = self.ledger.committed.nonzero()
        return self._error(self.breach.breach.model_copy(update={"spent": spent}))

    def _error(self, details: BreachDetails) -> BudgetExceeded:
        """A fresh error of the same kind as the run's breach."""
        if isinstance(self.breach, GovernanceKilled):
            return GovernanceKilled(details)
        loop = isinstance(self.breach, RunawayLoop)
        return RunawayLoop(details) if loop else BudgetExceeded(details)

    # -- reporting ------------------------------------------------------------------------

    _logged = 0

    def _log_new_events(self) -> None:
        replaying = temporalio.workflow.unsafe.is_replaying()
        for event in self.ledger.new_events(self._logged):
            self._logged = event.seq
            if self.sinks:
                decision = self._record(event)
                for sink in self.sinks:
                    sink.record(decision, replaying=replaying)
                if event.kind in ("commit", "refuse"):
                    remaining = {
                        r: left for r in RESOURCES if (left := self.ledger.remaining(r)) is not None
                    }
                    for sink in self.sinks:
                        sink.remaining(decision, remaining, replaying=replaying)
            if event.kind in ("warn", "alert", "breach", "overage"):
                temporalio.workflow.logger.warning(
                    "governance %s: %s of %s: observed %s, ceiling %s (%s)",
                    event.kind,
                    event.limit,
                    event.scope,
                    event.observed,
                    event.ceiling,
                    event.key,
                )

    def _record(self, event: GovernanceEvent) -> DecisionRecord:
        dispatch, target = self._targets.get(event.key, ("", ""))
        return DecisionRecord(
            seq=event.seq,
            kind=event.kind,
            event_id=self.info.get_current_history_length(),
            time=temporalio.workflow.now(),
            workflow_id=self.info.workflow_id,
            run_id=self.info.run_id,
            agent=self.agent,
            depth=self.context.depth,
            tenant=self.context.attribution.tenant,
            owner=self.context.attribution.owner,
            dispatch=dispatch,
            target=target,
            key=event.key,
            amounts=event.amounts,
            models=self._models.pop(event.key, {}) if event.kind == "commit" else {},
            limit=event.limit,
            scope=event.scope,
            observed=event.observed,
            ceiling=event.ceiling,
        )

    def snapshot(self) -> BudgetSnapshot:
        """The run's budget as the ``governor.budget`` query reports it."""
        return BudgetSnapshot(
            workflow_id=self.info.workflow_id,
            run_id=self.info.run_id,
            agent=self.agent,
            tenant=self.context.attribution.tenant,
            owner=self.context.attribution.owner,
            depth=self.context.depth,
            chain=[*self.context.chain, self.link],
            limits=self.ledger.states(),
            committed=self.ledger.committed.nonzero(),
            own_spend=Amounts(
                **{
                    r: self.ledger.committed.get(r) - self.children_spend.get(r)
                    for r in ("tokens", "cost_usd", "tool_calls")
                }
            ).nonzero(),
            reserved=self.ledger.reserved.nonzero(),
            in_flight=len(self.ledger.reservations),
            deadline=self.deadline.at if self.deadline else None,
            breach=self.breach.breach if self.breach else None,
            event_count=self.ledger.event_count,
            recent_events=self.ledger.events[-_RECENT_EVENTS:],
            shared_limits=self.shared.applied(),
            shared_open=len(self.shared.open),
        )

    def summary(self, state: str) -> dict[str, Any]:
        """The spend summary written to the run's memo when it ends."""
        return {
            "state": state,
            "tenant": self.context.attribution.tenant,
            "owner": self.context.attribution.owner,
            "agent": self.agent,
            "depth": self.context.depth,
            "spent": self.ledger.committed.nonzero(),
            "breach": self.breach.breach.message() if self.breach else None,
        }

    def budget_query(self, *args: Any) -> dict[str, Any]:
        """Query handler: the snapshot as JSON-ready data."""
        return self.snapshot().model_dump(mode="json")
