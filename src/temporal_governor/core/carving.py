"""How a run carves its children's allowances out of what it has left: pure, no Temporal.

A child workflow gets, for every resource its parent limits (``tokens``, ``cost_usd``,
``tool_calls``, ``child_workflows``), a share of what the parent has left after the
child's estimate, and at least its estimate. The whole carve is reserved in the parent's
ledger until the child ends, so the carves of all children in flight plus the parent's
own spend and reservations never pass the parent's ceilings.

The glue (``interceptors/_run.py``) decides only what needs workflow state: which rule
applies (``child_allowance``, and whether the run may use ``auto``, a patch marker) and
what to do with a refusal (halt the run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..policy import Policy
from .accounting import FLOAT_OPS, Amounts, Ops, Refusal, RunLedger

CARVED: tuple[str, ...] = ("tokens", "cost_usd", "tool_calls", "child_workflows")
"""The resources a child's allowance is carved of (when the parent limits them)."""

STARVING: tuple[str, ...] = ("tokens", "cost_usd")
"""The resources of which a child is refused outright when nothing is left."""

CHILD_KEY_PREFIX = "child:"
"""The reservation key of a child dispatch: ``child:<child workflow id>``."""

MAX_DEPTH_LIMIT = "loop_detection.max_depth"
"""The ``limit`` of the refusal of a child deeper than ``loop_detection.max_depth``."""


@dataclass(frozen=True)
class FairShare:
    """``child_allowance: auto``: a child's share shrinks with the children in flight."""

    running: int
    """The parent's children in flight (carved and not yet settled) before this one."""
    caps: dict[str, float] = field(default_factory=dict)
    """The child's own terminate per-task ceilings: it can never spend more."""


CarveRule = float | FairShare
"""A fraction of what is left (``child_allowance: 0.5``), or a :class:`FairShare`."""


@dataclass(frozen=True)
class ChildShare:
    """What a child is carved of one resource, and the parent limit that bounded it."""

    amount: float
    limit: str
    """The parent's binding limit, e.g. ``max_tokens_per_task``."""
    scope: str
    """That limit's scope, e.g. ``run planner/wf-1``."""


@dataclass(frozen=True)
class Carve:
    """A child's carve: what the parent reserves for it, and its allowance per resource."""

    reservation: Amounts
    """Reserved in the parent's ledger until the child ends: its estimate, one subtask,
    one child workflow, and every share."""
    shares: dict[str, ChildShare]
    """The child's allowance per carved resource (those the parent limits)."""


def starved(resource: str, left: float) -> bool:
    """Whether a child is refused outright for ``resource``, with ``left`` after its estimate.

    Only when nothing of ``tokens`` or ``cost_usd`` is left: the other resources are left
    to the reservation of the carve.
    """
    return resource in STARVING and left <= 0


def share(
    rule: CarveRule, resource: str, left: float, estimate: float, ops: Ops = FLOAT_OPS
) -> float:
    """What a child is carved of one resource, of ``left`` (what remains after its estimate).

    A negative ``left`` counts as nothing. A fraction ``f``: ``f * left``. A fair share:
    ``left / (running + 2)`` (half of what is left with no other child running, a third
    with one, ...), at most the child's own ceiling. Never less than the estimate (which
    ``left`` does not include).

    Args:
        rule: The carve rule.
        resource: The resource carved.
        left: What the parent has left of it after the child's estimate.
        estimate: The child's estimate of it.
        ops: :data:`~temporal_governor.core.accounting.FLOAT_OPS` at runtime (the bounded
            proofs pass the solver's).

    Returns:
        The child's allowance of ``resource``.
    """
    left = ops.max(left, 0.0)
    if not isinstance(rule, FairShare):
        return ops.max(estimate, rule * left)
    portion = left / (rule.running + 2)
    cap = rule.caps.get(resource)
    if cap is not None:
        portion = ops.min(portion, cap)
    return ops.max(estimate, portion)


def carve(ledger: RunLedger, estimate: Amounts, rule: Callable[[], CarveRule]) -> Carve | Refusal:
    """Carve a child's allowance out of what the parent's ``ledger`` has left.

    Nothing is reserved here: the caller reserves :attr:`Carve.reservation` under the
    child's key (and the ledger may still refuse it, for example for ``subtasks``).

    Args:
        ledger: The parent's ledger.
        estimate: The child's own estimate.
        rule: Asked once, and only when a resource is to be carved (it may record a
            patch marker): the fraction or fair share of the parent's ``child_allowance``.

    Returns:
        The carve, or the refusal when less than its estimate, or nothing at all, remains
        of ``tokens`` or ``cost_usd``.
    """
    base = estimate + Amounts(subtasks=1, child_workflows=1)
    reservation = base
    shares: dict[str, ChildShare] = {}
    chosen: CarveRule | None = None
    for resource in CARVED:
        binding = ledger.binding_limit(resource)
        remaining = ledger.remaining(resource)
        if binding is None or remaining is None:
            continue
        left = remaining - base.get(resource)
        if starved(resource, left):
            committed = ledger.committed.get(resource)
            return Refusal(
                limit=binding.name,
                resource=resource,
                scope=binding.scope,
                observed=binding.ceiling - remaining + estimate.get(resource),
                ceiling=binding.ceiling,
                committed=committed,
                overage=max(0.0, committed - binding.ceiling),
            )
        if chosen is None:
            chosen = rule()
        give = share(chosen, resource, left, estimate.get(resource))
        shares[resource] = ChildShare(amount=give, limit=binding.name, scope=binding.scope)
        # the child itself is one child workflow; its allowance is for its descendants
        own = 1.0 if resource == "child_workflows" else 0.0
        reservation = reservation.model_copy(update={resource: own + give})
    return Carve(reservation=reservation, shares=shares)


def depth_refusal(depth: int, max_depth: int | None, scope: str) -> Refusal | None:
    """Whether a run at ``depth`` may start a child (``loop_detection.max_depth``).

    Args:
        depth: The parent's depth (0 for a root run); its child is one deeper.
        max_depth: The tightest ``max_depth`` of the parent and its ancestors, if any.
        scope: Where that ``max_depth`` was set.

    Returns:
        The refusal of the child, or ``None``.
    """
    child = depth + 1
    if max_depth is None or child <= max_depth:
        return None
    return Refusal(
        limit=MAX_DEPTH_LIMIT,
        resource="depth",
        scope=scope,
        observed=child,
        ceiling=max_depth,
        committed=depth,
        overage=0.0,
    )


def children_in_flight(ledger: RunLedger) -> int:
    """How many children of the run are carved and not yet settled."""
    return sum(1 for key in ledger.reservations if key.startswith(CHILD_KEY_PREFIX))


def child_caps(policy: Policy, child_type: str) -> dict[str, float]:
    """A child's own terminate per-task ceilings of the carved resources (fair-share caps)."""
    return {
        resource: spec.ceiling
        for resource, spec in policy.quotas_for(child_type).per_task().items()
        if resource in CARVED and policy.on_breach_of(spec) == "terminate"
    }


__all__ = [
    "CARVED",
    "CHILD_KEY_PREFIX",
    "MAX_DEPTH_LIMIT",
    "STARVING",
    "Carve",
    "CarveRule",
    "ChildShare",
    "FairShare",
    "carve",
    "child_caps",
    "children_in_flight",
    "depth_refusal",
    "share",
    "starved",
]
