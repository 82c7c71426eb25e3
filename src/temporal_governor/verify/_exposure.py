"""Spend nothing stops: alert-only limits, and what a fleet of runs may spend at once.

- Unbounded spend: a limit in ``alert`` mode, and no ``terminate`` limit on the same units
  for some run it applies to; the solver finds the run's spend has no maximum and gives a
  run spending a thousand times the alert's ceiling.
- Fleet exposure: the fewest runs at once, each at its per-task ceiling (``hard_ceiling``
  with overrides), that pass a windowed shared budget; a task may spend all of its budget
  within one window, so only the shared ledger stands between them and that budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..policy import Policy
from ._findings import Finding, FindingKind, Severity
from ._limits import (
    DEFAULTS,
    Bound,
    Scope,
    TenantContext,
    amount,
    cap_on,
    same_units,
    say,
    task_scope_of,
    tenant_contexts,
)
from ._solver import Smt

_SPENT = ("tokens", "cost_usd", "tool_calls", "subtasks", "child_workflows")
"""What a run spends (runs at once are not spent: a run ends and gives its place back)."""
_SPENT_IN_WINDOWS = ("tokens", "cost_usd", "tool_calls")
"""What shared windowed budgets count, which fleet exposure compares with."""
_UNBOUNDED_FACTOR = 1000
"""The unbounded-spend witness spends this many times the alert's ceiling."""


@dataclass(frozen=True)
class RunContext:
    """A run as the policy sees it: its agent entry, its task quotas, its tenant."""

    agent: str | None
    """The agent entry governing it, or ``None`` for a workflow without one."""
    task_scope: str
    """Whose per-task quotas it gets (an agent entry name, or ``defaults``)."""
    tenant: TenantContext

    def describe(self) -> str:
        """The run in words."""
        who = f"agent {self.agent}" if self.agent else "a workflow without an agent entry"
        return f"a run of {who} ({self.tenant.describe()})"

    def counts_in(self, bound: Bound) -> bool:
        """Whether ``bound`` counts this run's spend."""
        scope = bound.scope
        return (
            scope.kind == "global"
            or scope == Scope("task", self.task_scope)
            or scope == Scope("agent", self.agent or "")
            or scope == Scope("tenant", self.tenant.entry or "")
            or (self.tenant.owner and scope == Scope("owner", self.tenant.entry or ""))
        )


def run_contexts(policy: Policy) -> Iterator[RunContext]:
    """Every kind of run: each agent entry and an unlisted workflow, in each tenant.

    Without an owner for every tenant situation (an owner only adds bounds, so that is the
    worst case for every other bound); with an owner only for tenant entries that set
    ``per_owner`` limits (which count nothing else).
    """
    agents: list[str | None] = [*policy.agents, None]
    for tenant in tenant_contexts(policy):
        if tenant.owner and not _has_owner_limits(policy, tenant.entry):
            continue
        for agent in agents:
            scope = task_scope_of(policy, agent) if agent is not None else DEFAULTS
            yield RunContext(agent, scope, tenant)


def _has_owner_limits(policy: Policy, entry: str | None) -> bool:
    tenant = policy.tenants.get(entry) if entry is not None else None
    return tenant is not None and bool(tenant.per_owner.model_dump(exclude_none=True))


def backs(limit: Bound, alert: Bound) -> bool:
    """Whether the terminate ``limit`` caps what a run adds to ``alert``'s counter.

    It counts the same units (:func:`~._limits.same_units`) and its window caps the
    alert's (:func:`~._limits.cap_on`): a total, or a window that holds the alert's or
    nests in it; a window does not cap a total (it rolls over and the total grows).
    The caller checks that ``limit`` counts the run at all.
    """
    return limit.terminate and same_units(limit, alert) and cap_on(limit, alert) is not None


def unbounded_findings(policy: Policy, bounds: list[Bound], smt: Smt) -> list[Finding]:
    """Alert limits with no terminate limit capping the same units behind them, for some run."""
    findings: dict[str, Finding] = {}
    for run in run_contexts(policy):
        counting = [bound for bound in bounds if run.counts_in(bound)]
        for alert in counting:
            if alert.terminate or alert.resource not in _SPENT or alert.path in findings:
                continue
            if run.tenant.owner and alert.scope.kind != "owner":
                continue  # already tried without the owner's limits
            if any(backs(limit, alert) for limit in counting):
                continue
            windowed = [b for b in counting if b.terminate and same_units(b, alert)]
            finding = _unbounded(alert, run, smt, windowed[0] if windowed else None)
            if finding is not None:
                findings[alert.path] = finding
    return list(findings.values())


def _unbounded(
    alert: Bound, run: RunContext, smt: Smt, windowed: Bound | None = None
) -> Finding | None:
    """The solver's unbounded spend past ``alert``, for a run no terminate limit caps.

    ``windowed``: a terminate limit that counts the run's units but only per window,
    which caps no total (named in the message).
    """
    spend = smt.amount("spend", alert.integer)
    if smt.maximum(spend, [spend >= 0]) is not None:
        return None  # bounded after all
    target = _UNBOUNDED_FACTOR * max(alert.limit, 1.0)
    model = smt.model([spend >= target], spend)
    if model is None:
        return None
    spent = model[0]
    resource = alert.resource
    nothing = f"no terminate limit on {alert.unit} counts {run.describe()}"
    if windowed is not None:
        nothing = (
            f"no terminate limit on {alert.unit} caps the total of {run.describe()}; "
            f"{windowed.path} counts {windowed.period}, a window that rolls over and caps "
            "no total"
        )
    return Finding(
        kind=FindingKind.UNBOUNDED_SPEND,
        severity=Severity.ERROR,
        path=alert.path,
        message=(
            f"only alerts: {nothing}, so its spend has no upper bound; spending "
            f"{amount(spent, resource)} {alert.period} ({_UNBOUNDED_FACTOR:,} times the "
            f"{say(alert.limit, resource)} ceiling) is logged and let through"
        ),
        witness={
            "spend": spent,
            "limit": alert.limit,
            "agent": run.agent or "",
            "tenant_entry": run.tenant.entry or "",
            "with_owner": run.tenant.owner,
        },
    )


def fleet_findings(policy: Policy, bounds: list[Bound], smt: Smt) -> list[Finding]:
    """Windowed shared budgets that concurrent runs at their per-task ceilings pass."""
    findings: list[Finding] = []
    for shared in bounds:
        if shared.scope.kind == "task" or shared.window_s is None:
            continue
        if shared.resource not in _SPENT_IN_WINDOWS:
            continue
        heaviest = _heaviest_task(policy, shared, bounds)
        if heaviest is None:
            continue
        concurrency = _concurrency(shared, bounds)
        finding = _exposure(policy, shared, heaviest, concurrency, smt)
        if finding is not None:
            findings.append(finding)
    return findings


def _heaviest_task(policy: Policy, shared: Bound, bounds: list[Bound]) -> Bound | None:
    """The largest terminate per-task ceiling whose runs ``shared`` counts."""
    scopes: set[str] | None = None
    if shared.scope.kind == "agent":
        scopes = {task_scope_of(policy, shared.scope.name)}
    tasks = [
        bound
        for bound in bounds
        if bound.scope.kind == "task"
        and bound.resource == shared.resource
        and bound.terminate
        and (scopes is None or bound.scope.name in scopes)
    ]
    return max(tasks, key=lambda bound: bound.ceiling, default=None)


def _concurrency(shared: Bound, bounds: list[Bound]) -> Bound | None:
    """The tightest terminate limit on runs at once among those ``shared``'s runs obey."""
    nested = {
        "global": {"global"},
        "agent": {"global"},
        "tenant": {"global", f"tenant:{shared.scope.name}"},
        "owner": {"global", f"tenant:{shared.scope.name}", f"owner:{shared.scope.name}"},
    }[shared.scope.kind]
    limits = [
        bound
        for bound in bounds
        if bound.resource == "runs" and bound.terminate and _key(bound.scope) in nested
    ]
    return min(limits, key=lambda bound: bound.limit, default=None)


def _key(scope: Scope) -> str:
    return scope.kind if scope.kind == "global" else f"{scope.kind}:{scope.name}"


def _exposure(
    policy: Policy, shared: Bound, task: Bound, concurrency: Bound | None, smt: Smt
) -> Finding | None:
    """The fewest runs at ``task``'s ceiling that pass ``shared`` (none: no finding)."""
    z3 = smt.z3
    runs = z3.Int("runs")
    constraints = [runs >= 1, runs * z3.RealVal(task.ceiling) > z3.RealVal(shared.limit)]
    if concurrency is not None:
        constraints.append(runs <= int(concurrency.limit))
    fewest = smt.minimum(runs, constraints)
    if fewest is None:
        return None
    count = int(fewest)
    return Finding(
        kind=FindingKind.FLEET_EXPOSURE,
        severity=_exposure_severity(policy, shared),
        path=shared.path,
        message=_exposure_message(policy, shared, task, concurrency, count),
        witness=_exposure_witness(shared, task, concurrency, count),
        related=[task.path] + ([concurrency.path] if concurrency is not None else []),
    )


def _exposure_severity(policy: Policy, shared: Bound) -> Severity:
    """Info while the ledger refuses; a warning when nothing (or an outage) lets it pass."""
    if not shared.terminate or policy.shared.on_unavailable == "open":
        return Severity.WARNING
    return Severity.INFO


def _exposure_witness(
    shared: Bound, task: Bound, concurrency: Bound | None, count: int
) -> dict[str, int | float | str]:
    witness: dict[str, int | float | str] = {
        "runs": count,
        "per_task_ceiling": task.ceiling,
        "spend": count * task.ceiling,
        "shared_limit": shared.limit,
        "task_scope": task.scope.name,
    }
    if concurrency is not None:
        witness["max_runs_at_once"] = int(concurrency.limit)
        witness["worst_case"] = int(concurrency.limit) * task.ceiling
    return witness


def _exposure_message(
    policy: Policy, shared: Bound, task: Bound, concurrency: Bound | None, count: int
) -> str:
    resource = shared.resource
    at_once = (
        f"up to {amount(int(concurrency.limit), 'runs')} ({concurrency.path}) may spend "
        f"{amount(concurrency.limit * task.ceiling, resource)}"
        if concurrency is not None
        else "no limit on runs at once bounds what they may spend"
    )
    guard = "only the shared ledger stands between"
    if not shared.terminate:
        guard = "and this limit only alerts: nothing stands between"
    elif policy.shared.on_unavailable == "open":
        guard += " (and shared.on_unavailable: open lets spend through a ledger outage)"
    runs = (
        "1 run at its per-task ceiling"
        if count == 1
        else f"{count:,} runs at once, each at its per-task ceiling"
    )
    return (
        f"{runs} ({task.path}: {say(task.ceiling, resource)}), "
        f"{'spends' if count == 1 else 'spend'} {amount(count * task.ceiling, resource)}, "
        f"past {say(shared.limit, resource)} {shared.period}; {at_once} "
        f"{shared.period}: {guard}"
    )
