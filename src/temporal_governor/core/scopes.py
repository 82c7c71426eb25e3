"""Which limits shared across runs apply to a dispatch: pure, no Temporal.

Scopes are named ``global``, ``tenant:<t>``, ``owner:<t>/<o>``, ``agent:<workflow type>``
and ``tool:<tool name>``. A dispatch is checked against every scope that applies to it
and reserved in all of them or in none (the ledger does that in one update).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..policy import LimitSpec, Policy, SharedQuotas
from .decisions import DispatchKind

SharedResource = Literal["tokens", "cost_usd", "tool_calls", "subtasks", "concurrency"]

WINDOWS: dict[str, float | None] = {
    "": None,
    "_per_second": 1.0,
    "_per_minute": 60.0,
    "_per_hour": 3600.0,
    "_per_day": 86400.0,
}
"""Field-name suffix of a windowed quota, and its window in seconds (``None``: total)."""


class SharedLimit(BaseModel):
    """One limit of one shared scope, as the ledger enforces it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    """Where it comes from in the policy, e.g. ``tenants.acme.quotas.max_tokens_per_minute``."""
    scope: str
    """The scope, e.g. ``tenant:acme``."""
    resource: SharedResource
    ceiling: float = Field(ge=0)
    window_s: float | None = Field(default=None, gt=0)
    """Fixed window length in seconds; ``None`` for a total."""
    on_breach: Literal["terminate", "alert"] = "terminate"

    @property
    def counter(self) -> str:
        """The ledger counter this limit reads: scope, resource and window."""
        window = "total" if self.window_s is None else f"{self.window_s:g}s"
        return f"{self.scope}|{self.resource}|{window}"


StartKind = Literal["run"] | DispatchKind
"""What reserves in shared scopes: the run's own start (a concurrency slot) or a dispatch."""


def _quota_limits(
    policy: Policy, quotas: SharedQuotas, scope: str, path: str, kind: StartKind
) -> Iterator[SharedLimit]:
    if kind == "activity":
        for resource in ("tokens", "cost_usd", "tool_calls"):
            for suffix, window in WINDOWS.items():
                field = f"max_{resource}{suffix}"
                spec = getattr(quotas, field)
                if spec is not None:
                    yield _limit(policy, spec, f"{path}.{field}", scope, resource, window)
    if kind == "child" and quotas.max_subtasks is not None:
        yield _limit(policy, quotas.max_subtasks, f"{path}.max_subtasks", scope, "subtasks", None)
    if kind == "run" and quotas.max_concurrent_tasks is not None:
        yield _limit(
            policy,
            quotas.max_concurrent_tasks,
            f"{path}.max_concurrent_tasks",
            scope,
            "concurrency",
            None,
        )


def _limit(
    policy: Policy,
    spec: LimitSpec,
    name: str,
    scope: str,
    resource: SharedResource,
    window: float | None,
) -> SharedLimit:
    return SharedLimit(
        name=name,
        scope=scope,
        resource=resource,
        ceiling=float(spec.limit),
        window_s=window,
        on_breach=policy.on_breach_of(spec),
    )


def shared_limits(
    policy: Policy,
    *,
    tenant: str,
    owner: str | None,
    agent: str,
    tool: str | None,
    kind: StartKind | None = None,
) -> list[SharedLimit]:
    """Every shared limit that applies to a run's start or to one of its dispatches.

    A run's start takes a concurrency slot (``max_concurrent_tasks``: runs at once); an
    activity reserves tokens, cost and tool calls (and a tool's concurrency); a child
    workflow reserves a subtask.

    Args:
        policy: The policy.
        tenant: The tenant the run is attributed to.
        owner: Its owner, if any.
        agent: The run's workflow type.
        tool: The activity type for an activity dispatch.
        kind: ``run``, ``activity`` or ``child``; by default ``activity`` when ``tool`` is
            given, else ``child``.

    Returns:
        The limits, global first, then tenant, owner, agent and tool.
    """
    if kind is None:
        kind = "activity" if tool is not None else "child"
    limits: list[SharedLimit] = []
    glob = policy.global_
    if kind == "run" and glob.max_concurrent_tasks is not None:
        limits.append(
            SharedLimit(
                name="global.max_concurrent_tasks",
                scope="global",
                resource="concurrency",
                ceiling=float(glob.max_concurrent_tasks),
            )
        )
    for field, resource in (
        ("max_tokens_per_minute", "tokens"),
        ("max_tool_calls_per_minute", "tool_calls"),
    ):
        value = getattr(glob, field)
        if kind == "activity" and value is not None:
            limits.append(
                SharedLimit(
                    name=f"global.{field}",
                    scope="global",
                    resource=resource,
                    ceiling=float(value),
                    window_s=60.0,
                )
            )
    entry_name = tenant if tenant in policy.tenants else "default"
    entry = policy.tenants.get(entry_name)
    if entry is not None:
        limits += _quota_limits(
            policy, entry.quotas, f"tenant:{tenant}", f"tenants.{entry_name}.quotas", kind
        )
        if owner is not None:
            limits += _quota_limits(
                policy,
                entry.per_owner,
                f"owner:{tenant}/{owner}",
                f"tenants.{entry_name}.per_owner",
                kind,
            )
    agent_entry = policy.agent_for(agent) if kind == "activity" else None
    if agent_entry is not None:
        name, agent_policy = agent_entry
        for field, resource in (
            ("max_tokens_per_minute", "tokens"),
            ("max_tool_calls_per_minute", "tool_calls"),
        ):
            spec = getattr(agent_policy.quotas, field)
            if spec is not None:
                limits.append(
                    _limit(
                        policy,
                        spec,
                        f"agents.{name}.quotas.{field}",
                        f"agent:{name}",
                        resource,  # type: ignore[arg-type]
                        60.0,
                    )
                )
    tool_entry = policy.tool_for(tool) if tool is not None and kind == "activity" else None
    if tool_entry is not None:
        name, tool_policy = tool_entry
        if tool_policy.max_qps is not None:
            limits.append(
                SharedLimit(
                    name=f"tools.{name}.max_qps",
                    scope=f"tool:{name}",
                    resource="tool_calls",
                    ceiling=float(tool_policy.max_qps),
                    window_s=1.0,
                )
            )
        if tool_policy.max_concurrent_requests is not None:
            limits.append(
                SharedLimit(
                    name=f"tools.{name}.max_concurrent_requests",
                    scope=f"tool:{name}",
                    resource="concurrency",
                    ceiling=float(tool_policy.max_concurrent_requests),
                )
            )
    return limits
