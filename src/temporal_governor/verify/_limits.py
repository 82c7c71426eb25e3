"""Every numeric limit of a policy as one :class:`Bound`, and which bounds constrain which.

A bound counts some units (tokens, dollars, tool calls, child workflows, runs at once) of a
scope (one task, an agent, a tenant, each owner of a tenant, everything) over a window (a
fixed window of 1 s, 1 min, 1 h, 1 d, or no window: a total). A bound ``outer`` caps what
another bound ``inner`` can count when it counts everything ``inner`` counts: the scopes
nest (a task's spend is its tenant's, a tenant's is everyone's) and the windows either
contain each other, or nest ``k`` times (an hour holds 60 fixed minutes: at most ``60 x``
a per-minute ceiling).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from ..core.scopes import WINDOWS
from ..policy import PER_TASK_LIMITS, LimitSpec, Policy, Quotas, SharedQuotas, _render

ScopeKind = Literal["task", "agent", "tenant", "owner", "global"]

DEFAULTS = "defaults"
"""The task scope of workflows whose agent entry sets no quotas (``defaults.quotas``)."""

_SHARED_RESOURCES = ("tokens", "cost_usd", "tool_calls")
_AGENT_WINDOWED = {"max_tokens_per_minute": "tokens", "max_tool_calls_per_minute": "tool_calls"}
_UNITS = {
    "tokens": "tokens",
    "cost_usd": "US dollars",
    "tool_calls": "tool calls",
    "subtasks": "child workflows",
    "child_workflows": "child workflows",
    "runs": "runs at once",
}
_ONE = {
    "tokens": "token",
    "tool_calls": "tool call",
    "subtasks": "child workflow",
    "child_workflows": "child workflow",
    "runs": "run at once",
}
"""The unit of exactly one (dollars stay plural: ``$1.00 US dollars``)."""
_WINDOW_NAMES = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}


@dataclass(frozen=True)
class Scope:
    """Whose spend a bound counts: a task of an agent, an agent, a tenant entry ..."""

    kind: ScopeKind
    name: str = ""
    """The agent or tenant entry name (``defaults`` for the default task quotas)."""

    def describe(self) -> str:
        """The scope in words, e.g. ``a task of planner`` or ``tenant acme``."""
        if self.kind == "task":
            return "a task of " + (
                "a workflow without agent quotas" if self.name == DEFAULTS else self.name
            )
        if self.kind == "owner":
            return f"each owner of tenant entry {self.name}"
        return "everything" if self.kind == "global" else f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Bound:
    """One limit of the policy, with what it counts and where it is written."""

    path: str
    """Dotted path of the field, e.g. ``tenants.acme.quotas.max_tokens_per_minute``."""
    scope: Scope
    resource: str
    """``tokens``, ``cost_usd``, ``tool_calls``, ``subtasks``, ``child_workflows``, ``runs``."""
    window_s: float | None
    """Fixed window in seconds; ``None`` for a total (a task's whole life for a task)."""
    limit: float
    """The ceiling as written."""
    ceiling: float
    """The most an override may raise it to (``hard_ceiling``, else the limit)."""
    terminate: bool
    """Whether a breach refuses (``terminate``) rather than only alerts."""

    @property
    def integer(self) -> bool:
        """Whether the units are counted in whole numbers (all but dollars)."""
        return self.resource != "cost_usd"

    @property
    def counted_as(self) -> str:
        """The resource of the shared counter this bound's units also go to."""
        return "subtasks" if self.resource == "child_workflows" else self.resource

    @property
    def unit(self) -> str:
        """The unit in words."""
        return _UNITS[self.resource]

    @property
    def period(self) -> str:
        """``per task``, ``per minute`` ... or ``in total``."""
        if self.scope.kind == "task":
            return "per task"
        if self.window_s is None:
            return "at once" if self.resource == "runs" else "in total"
        return f"per {_WINDOW_NAMES[self.window_s]}"


@dataclass(frozen=True)
class TenantContext:
    """The tenant a task runs for, which decides the shared bounds that count its spend."""

    entry: str | None
    """The tenant entry that applies (``default`` for tenants without one), or ``None``."""
    owner: bool
    """Whether the run has an owner (``per_owner`` bounds count it too)."""

    def describe(self) -> str:
        """The context in words, for messages."""
        if self.entry is None:
            who = "tenants without an entry (no tenants.default)"
        elif self.entry == "default":
            who = "tenants without an entry of their own (tenants.default)"
        else:
            who = f"tenant {self.entry}"
        return f"runs of {who}" + (" with an owner" if self.owner else "")


def at(*segments: str | int) -> str:
    """The dotted path of a policy field, rendered as ``PolicyError`` renders paths."""
    return _render(segments)


def bounds_of(policy: Policy) -> list[Bound]:
    """Every limit of the policy: per task, per agent, per tenant and owner, global."""
    bounds = list(_task_bounds(policy))
    bounds += _agent_bounds(policy)
    bounds += _global_bounds(policy)
    for name, tenant in policy.tenants.items():
        bounds += _shared_bounds(policy, tenant.quotas, Scope("tenant", name), "quotas")
        bounds += _shared_bounds(policy, tenant.per_owner, Scope("owner", name), "per_owner")
    return bounds


def task_quotas(policy: Policy) -> dict[str, tuple[tuple[str, ...], Quotas]]:
    """The distinct per-task quotas: task scope name -> (field path segments, quotas).

    Agent entries that set ``quotas`` have their own; every other workflow type gets
    ``defaults.quotas`` (scope name :data:`DEFAULTS`).
    """
    found: dict[str, tuple[tuple[str, ...], Quotas]] = {
        DEFAULTS: (("defaults", "quotas"), policy.defaults.quotas)
    }
    for name, agent in policy.agents.items():
        if "quotas" in agent.model_fields_set:
            found[name] = (("agents", name, "quotas"), agent.quotas)
    return found


def task_scope_of(policy: Policy, agent: str) -> str:
    """The task scope name whose quotas a run of the agent entry ``agent`` gets."""
    return agent if "quotas" in policy.agents[agent].model_fields_set else DEFAULTS


def tenant_contexts(policy: Policy) -> list[TenantContext]:
    """The tenant situations a run can be in: each tenant entry, with and without owner."""
    entries: list[str | None] = list(policy.tenants)
    if "default" not in policy.tenants:
        entries.append(None)
    return [TenantContext(entry, owner) for entry in entries for owner in (False, True)]


def counts_within(outer: Bound, inner: Bound, context: TenantContext | None) -> bool:
    """Whether ``outer`` counts every unit ``inner`` counts (scopes and resources).

    A task's units are its tenant's and owner's only in ``context``; shared scopes nest
    as owner within tenant (same entry), tenant and agent within global.
    """
    if not same_units(outer, inner):
        return False
    if outer.scope == inner.scope:
        return True
    kind, name = outer.scope.kind, outer.scope.name
    if kind == "global":
        return True
    if kind not in ("tenant", "owner"):
        return False
    if inner.scope.kind == "task":
        if context is None or name != context.entry:
            return False
        return kind == "tenant" or (kind == "owner" and context.owner)
    return kind == "tenant" and inner.scope == Scope("owner", name)


def same_units(outer: Bound, inner: Bound) -> bool:
    """Whether ``outer`` counts ``inner``'s units: the same resource, or child workflows.

    A task's direct children (``subtasks``) are among its descendants
    (``child_workflows``), and both are among the tenant's children (``max_subtasks``).
    """
    if outer.resource == inner.resource:
        return True
    if outer.scope.kind == "task":
        return outer.resource == "child_workflows" and inner.resource == "subtasks"
    return outer.counted_as == inner.counted_as


def cap_on(outer: Bound, inner: Bound, overridden: bool = False) -> float | None:
    """The most ``inner``'s counter can hold in one of its windows while ``outer`` passes.

    Args:
        outer: A bound that counts every unit ``inner`` counts (:func:`counts_within`).
        inner: The bound whose counter is capped.
        overridden: Take ``outer`` at its hard ceiling (the most an override can lift
            it to) rather than its limit.

    Returns:
        ``outer``'s limit (or ceiling) when its window holds ``inner``'s (or it is a
        total); ``k`` times it when ``inner``'s window holds ``k`` of ``outer``'s; ``None``
        when ``outer`` caps nothing of it (a window against a total: it rolls over).

    """
    value = outer.ceiling if overridden else outer.limit
    if outer.window_s is None:
        return value
    if inner.window_s is None:
        return None
    if outer.window_s >= inner.window_s:
        return value
    return inner.window_s / outer.window_s * value


def _task_bounds(policy: Policy) -> Iterator[Bound]:
    for name, (prefix, quotas) in task_quotas(policy).items():
        for field, resource in PER_TASK_LIMITS.items():
            spec = getattr(quotas, field)
            if spec is not None and resource != "wall_time_s":
                yield _bound(policy, spec, at(*prefix, field), Scope("task", name), resource)


def _agent_bounds(policy: Policy) -> Iterator[Bound]:
    for name, agent in policy.agents.items():
        for field, resource in _AGENT_WINDOWED.items():
            spec = getattr(agent.quotas, field)
            if spec is not None:
                path = at("agents", name, "quotas", field)
                yield _bound(policy, spec, path, Scope("agent", name), resource, 60.0)


def _global_bounds(policy: Policy) -> Iterator[Bound]:
    limits = policy.global_
    scope = Scope("global")
    for field, resource, window in (
        ("max_concurrent_tasks", "runs", None),
        ("max_tokens_per_minute", "tokens", 60.0),
        ("max_tool_calls_per_minute", "tool_calls", 60.0),
    ):
        value = getattr(limits, field)
        if value is not None:
            yield Bound(f"global.{field}", scope, resource, window, value, value, True)


def _shared_bounds(policy: Policy, quotas: SharedQuotas, scope: Scope, section: str) -> list[Bound]:
    prefix = ("tenants", scope.name, section)
    found: list[Bound] = []
    for resource in _SHARED_RESOURCES:
        for suffix, window in WINDOWS.items():
            field = f"max_{resource}{suffix}"
            spec = getattr(quotas, field)
            if spec is not None:
                found.append(_bound(policy, spec, at(*prefix, field), scope, resource, window))
    for field, resource in (("max_subtasks", "subtasks"), ("max_concurrent_tasks", "runs")):
        spec = getattr(quotas, field)
        if spec is not None:
            found.append(_bound(policy, spec, at(*prefix, field), scope, resource))
    return found


def _bound(
    policy: Policy,
    spec: LimitSpec,
    path: str,
    scope: Scope,
    resource: str,
    window_s: float | None = None,
) -> Bound:
    return Bound(
        path=path,
        scope=scope,
        resource=resource,
        window_s=window_s,
        limit=float(spec.limit),
        ceiling=spec.ceiling,
        terminate=policy.on_breach_of(spec) == "terminate",
    )


def say(value: float, resource: str) -> str:
    """An amount for a message: ``$1.50``, ``50,000``, ``0.5``."""
    if resource == "cost_usd":
        return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:g}"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,g}"


def amount(value: float, resource: str) -> str:
    """An amount with its unit, singular for exactly one: ``1 token``, ``2 tokens``."""
    unit = _ONE[resource] if value == 1 and resource in _ONE else _UNITS[resource]
    return f"{say(value, resource)} {unit}"
