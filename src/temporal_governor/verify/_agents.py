"""Child agents no parent can start: their estimate is more than any parent can carve.

A parent carves a child as ``interceptors/_run.py`` ``carve`` does: for every resource the
parent limits (``terminate``), what is left after the child's estimate (and the child
itself: one subtask, one child workflow) must be above zero for tokens and dollars, and at
least zero for tool calls and child workflows; ``loop_detection.max_depth: 0`` starts none.
The solver looks for the parent's spend so far (at least nothing) that lets the carve pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..policy import Estimate, Policy
from ._findings import Finding, FindingKind, Number, Severity
from ._limits import DEFAULTS, Bound, amount, at, say, task_scope_of
from ._solver import Smt

_STRICT = ("tokens", "cost_usd")
"""Resources of which the carve needs something left after the estimate."""


@dataclass(frozen=True)
class Parent:
    """A workflow that may start children: an agent entry, or one without an entry."""

    agent: str | None
    task_scope: str
    max_depth: int | None

    def describe(self) -> str:
        """The parent in words."""
        return self.agent if self.agent is not None else "a workflow without an agent entry"


@dataclass(frozen=True)
class Blocked:
    """Why one parent cannot carve the child: at best, this much is left of a resource."""

    parent: Parent
    resource: str
    best_left: Number
    bound: Bound | None
    """The parent's limit on the resource (``None``: ``max_depth: 0``)."""


def unreachable_findings(policy: Policy, bounds: list[Bound], smt: Smt) -> list[Finding]:
    """Agents with an estimate that no parent (or only an unlisted workflow) can carve."""
    parents = _parents(policy)
    findings: list[Finding] = []
    for name, agent in policy.agents.items():
        if agent.estimate == Estimate():
            continue  # nothing reserved: any parent with budget left can start it
        blocked = {p: _blocked(p, agent.estimate, bounds, smt) for p in parents}
        listed = [p for p in parents if p.agent is not None]
        if all(blocked[p] is not None for p in parents):
            severity = Severity.ERROR
        elif listed and all(blocked[p] is not None for p in listed):
            severity = Severity.WARNING
        else:
            continue
        chosen = parents if severity == Severity.ERROR else listed
        reasons = [b for p in chosen if (b := blocked[p]) is not None]
        findings.append(_finding(name, agent.estimate, reasons, severity))
    return findings


def _parents(policy: Policy) -> list[Parent]:
    parents = [
        Parent(name, task_scope_of(policy, name), agent.loop_detection.max_depth)
        for name, agent in policy.agents.items()
    ]
    return [*parents, Parent(None, DEFAULTS, None)]


def _needs(estimate: Estimate) -> dict[str, float]:
    """What a carve takes of each resource a parent may limit, before any share."""
    return {
        "tokens": float(estimate.tokens),
        "cost_usd": float(estimate.cost_usd),
        "tool_calls": float(estimate.tool_calls),
        "subtasks": 1.0,
        "child_workflows": 1.0,
    }


def _blocked(parent: Parent, estimate: Estimate, bounds: list[Bound], smt: Smt) -> Blocked | None:
    """Why ``parent`` can never carve a child with ``estimate`` (``None``: it can)."""
    if parent.max_depth == 0:
        return Blocked(parent, "depth", 0, None)
    limits = [b for b in bounds if b.scope.kind == "task" and b.scope.name == parent.task_scope]
    needs = _needs(estimate)
    worst: Blocked | None = None
    for bound in limits:
        if not bound.terminate or bound.resource not in needs:
            continue
        best_left = _best_left(bound, needs[bound.resource], smt)
        if best_left is None:
            continue
        too_little = best_left <= 0 if bound.resource in _STRICT else best_left < 0
        if too_little and (worst is None or best_left < worst.best_left):
            worst = Blocked(parent, bound.resource, best_left, bound)
    return worst


def _best_left(bound: Bound, need: float, smt: Smt) -> Number | None:
    """The most left of ``bound`` after ``need``, over every spend so far (at least none).

    The parent's limit may be raised by an override up to its ``hard_ceiling``.
    """
    z3 = smt.z3
    spent = smt.amount("spent", bound.integer)
    left = z3.RealVal(bound.ceiling) - spent - z3.RealVal(need)
    return smt.maximum(left, [spent >= 0])


def _finding(name: str, estimate: Estimate, reasons: list[Blocked], severity: Severity) -> Finding:
    best = max(reasons, key=lambda b: b.bound.ceiling if b.bound else -1.0)
    resource = best.resource
    estimated = resource in ("tokens", "cost_usd", "tool_calls")
    path = at("agents", name, "estimate", resource) if estimated else at("agents", name, "estimate")
    who = "no parent" if severity == Severity.ERROR else "no agent of the policy"
    message = f"{who} can start {name} as a child: " + "; ".join(_why(b) for b in reasons)
    if severity == Severity.WARNING:
        message += " (only a workflow without an agent entry, under defaults.quotas, can)"
    witness: dict[str, Any] = {
        "parent": best.parent.describe(),
        "resource": resource,
        "best_left": best.best_left,
    }
    if best.bound is not None:
        witness["parent_ceiling"] = best.bound.ceiling
        witness["needs"] = _needs(estimate)[resource]
    return Finding(
        kind=FindingKind.UNREACHABLE_AGENT,
        severity=severity,
        path=path,
        message=message,
        witness=witness,
        related=[b.bound.path for b in reasons if b.bound is not None],
    )


def _why(blocked: Blocked) -> str:
    parent = blocked.parent.describe()
    bound = blocked.bound
    if bound is None:
        return f"{parent} has loop_detection.max_depth 0 (no children at all)"
    resource = blocked.resource
    return (
        f"{parent} ({bound.path}: {say(bound.ceiling, resource)}) has at best "
        f"{amount(blocked.best_left, resource)} left after the child's "
        f"{say(bound.ceiling - blocked.best_left, resource)}"
    )
