"""What travels in Temporal headers, and the context managers that set it.

A run's :class:`BudgetContext` (who pays, the chain of runs above it, the allowance its
parent carved for it and its deadline) is carried from the client to the workflow, from a
parent to each child, across continue-as-new, and (without the allowance) into every
activity, in one header named :data:`HEADER`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import temporalio.activity
import temporalio.workflow
from pydantic import BaseModel, ConfigDict, Field
from temporalio.api.common.v1 import Payload

from .accounting import Amounts
from .degradation import Decision
from .errors import ChainLink

HEADER = "temporal-governor"
"""The Temporal header key that carries the serialised :class:`BudgetContext`."""

DEFAULT_TENANT = "default"
"""The tenant of runs started without :func:`attribution`."""


class Attribution(BaseModel):
    """Who pays for a run: a tenant and, optionally, an owner within it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str = DEFAULT_TENANT
    """The tenant (customer, team) the run is charged to."""
    owner: str | None = None
    """The person or service that started it."""


class AllowanceEntry(BaseModel):
    """How much of one resource a parent carved for a child, and from which limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: float
    """The allowance."""
    limit: str
    """The ancestor limit that bounded it, e.g. ``max_tokens_per_task``."""
    scope: str
    """That limit's scope, e.g. ``run planner/run-1``."""


class Deadline(BaseModel):
    """A wall-time limit inherited or set for a run, as an absolute workflow time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: datetime
    limit: str
    scope: str
    seconds: float
    """The ceiling in seconds, for reporting."""


class BudgetContext(BaseModel):
    """Everything the governor carries between runs and into activities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attribution: Attribution = Field(default_factory=Attribution)
    """Who pays."""
    chain: list[ChainLink] = Field(default_factory=list)
    """The runs above the receiver, root first (for an activity: up to its own run)."""
    allowance: dict[str, AllowanceEntry] = Field(default_factory=dict)
    """Per resource, what the parent carved for this child run."""
    deadline: Deadline | None = None
    """The inherited wall-time deadline."""
    carried: Amounts | None = None
    """Spend carried over a continue-as-new, so the new run is not a fresh budget."""
    max_depth: int | None = None
    """The tightest ``loop_detection.max_depth`` of the receiver's ancestors."""
    max_depth_scope: str = ""
    """The scope that set :attr:`max_depth`."""
    decision: Decision | None = None
    """For an activity: the degradation in force when it was dispatched."""
    guard_state: dict[str, Any] | None = None
    """Loop-detector and throttle state carried over a continue-as-new (so a loop cannot
    escape detection or an iteration cap by continuing as new), or for a child the
    parent's recent call signatures (so a loop spanning sub-agents is seen)."""
    controls: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """For a starting root run: the fleet-wide kills and resumes in force for its tenant
    and workflow type, as the ledger keeps them (scope -> signal -> stored message)."""

    @property
    def depth(self) -> int:
        """How many runs are above the receiver (0 for a root run)."""
        return len(self.chain)


_PAYLOAD_ENCODING = {"encoding": b"json/plain"}


def encode_context(context: BudgetContext) -> Payload:
    """Serialise a context into a header payload."""
    return Payload(
        metadata=_PAYLOAD_ENCODING, data=context.model_dump_json(exclude_defaults=True).encode()
    )


def decode_context(headers: Mapping[str, Payload]) -> BudgetContext | None:
    """Read the governor's context from Temporal headers, if present and well formed.

    A malformed header is ignored (the receiver then governs as a root run of the
    default tenant) rather than failing the workflow task.
    """
    payload = headers.get(HEADER)
    if payload is None:
        return None
    try:
        return BudgetContext.model_validate_json(payload.data)
    except ValueError:
        return None


def with_context(headers: Mapping[str, Payload], context: BudgetContext) -> Mapping[str, Payload]:
    """Headers with the governor's context added or replaced."""
    return {**headers, HEADER: encode_context(context)}


_attribution: contextvars.ContextVar[Attribution | None] = contextvars.ContextVar(
    "temporal_governor_attribution", default=None
)
_estimate: contextvars.ContextVar[Amounts | None] = contextvars.ContextVar(
    "temporal_governor_estimate", default=None
)
_activity_context: contextvars.ContextVar[BudgetContext | None] = contextvars.ContextVar(
    "temporal_governor_activity_context", default=None
)


@contextmanager
def attribution(tenant: str = DEFAULT_TENANT, owner: str | None = None) -> Iterator[Attribution]:
    """Attribute the workflows started inside the block to a tenant and owner.

    Use it around client calls; the client interceptor puts it in the start header::

        with attribution(tenant="acme", owner="alice@acme"):
            await client.execute_workflow(Planner.run, goal, id="run-1", task_queue="agents")

    Args:
        tenant: The tenant that pays.
        owner: The person or service within the tenant.

    Yields:
        The attribution in force.

    """
    value = Attribution(tenant=tenant, owner=owner)
    token = _attribution.set(value)
    try:
        yield value
    finally:
        _attribution.reset(token)


def pending_attribution() -> Attribution | None:
    """The attribution set by an enclosing :func:`attribution` block, if any."""
    return _attribution.get()


@contextmanager
def estimate(tokens: float = 0, cost_usd: float = 0.0, tool_calls: float = 0) -> Iterator[None]:
    """Override the policy's estimate for dispatches started inside the block.

    Use it in workflow code around ``execute_activity`` or ``execute_child_workflow``::

        with temporal_governor.estimate(tokens=8_000, cost_usd=0.05):
            answer = await workflow.execute_activity(call_llm, prompt, ...)

    The estimate is what is reserved before dispatch; the actual usage is committed when
    the result is back and the rest released.

    Args:
        tokens: Tokens the dispatch may use at most.
        cost_usd: Dollars it may cost at most.
        tool_calls: Tool calls it may make beyond the dispatch itself.

    """
    token = _estimate.set(Amounts(tokens=tokens, cost_usd=cost_usd, tool_calls=tool_calls))
    try:
        yield
    finally:
        _estimate.reset(token)


def explicit_estimate() -> Amounts | None:
    """The estimate set by an enclosing :func:`estimate` block, if any."""
    return _estimate.get()


def set_activity_context(context: BudgetContext | None) -> contextvars.Token[BudgetContext | None]:
    """Make a context current for the running activity (used by the activity interceptor)."""
    return _activity_context.set(context)


def reset_activity_context(token: contextvars.Token[BudgetContext | None]) -> None:
    """Undo :func:`set_activity_context`."""
    _activity_context.reset(token)


_workflow_contexts: dict[str, BudgetContext] = {}


def register_workflow_context(run_id: str, context: BudgetContext) -> None:
    """Remember a governed run's context so workflow code can ask for it."""
    _workflow_contexts[run_id] = context


def forget_workflow_context(run_id: str) -> None:
    """Forget a run's context when the run's workflow code ends."""
    _workflow_contexts.pop(run_id, None)


def current_attribution() -> BudgetContext | None:
    """The governor's context of the current activity or workflow run.

    Inside an activity it is the context of the run that dispatched it (its chain ends
    with that run); inside workflow code it is the run's own context. Outside both, or
    for ungoverned runs, it is ``None``.

    Returns:
        The attribution, chain and depth, or ``None``.

    """
    if temporalio.activity.in_activity():
        return _activity_context.get()
    if temporalio.workflow.in_workflow():
        return _workflow_contexts.get(temporalio.workflow.info().run_id)
    return None


def current_decision() -> Decision | None:
    """Inside a governed activity: the degradation in force when it was dispatched.

    ``None`` when no ``degrade`` rule applied (or outside a governed activity). Use it to
    pick a cheaper model or a smaller ``max_tokens`` where the governor cannot rewrite
    the arguments itself::

        decision = temporal_governor.current_decision()
        model = decision.model_for(request.model) if decision else request.model
    """
    if not temporalio.activity.in_activity():
        return None
    context = _activity_context.get()
    return context.decision if context is not None else None
