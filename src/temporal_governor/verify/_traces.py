"""Plain traces for :mod:`._suggest` from an incident report's decision records and a policy.

Each run's decision log is walked in order, keeping its committed spend and its open
reservations (a child's carve included) as the run's :class:`~..accounting.RunLedger`
does. At each dispatch, a per-task limit compares committed + reserved + the dispatch's
estimate with its ceiling (a child's estimate is its agent's, plus the one subtask and
child workflow it is); ``max_iterations`` compares the dispatch count, ``max_depth`` the
child's depth. The limits they could be written to are read from the policy.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..core.decisions import DecisionRecord
from ..policy import PER_TASK_LIMITS, LimitSpec, Policy
from ..review import IncidentReport
from ._suggest import (
    DEFAULT_MARGIN,
    Dimension,
    DispatchPoint,
    RunTrace,
    Suggestion,
    TreeTrace,
    suggest_limits,
)

_RESOURCES = ("tokens", "cost_usd", "tool_calls", "subtasks", "child_workflows")
_STARTS = ("reserve", "refuse", "breach")
"""Decision kinds that are the first record of a dispatch (a breach: one refused outright)."""
_SAVED = ("tokens", "cost_usd", "tool_calls")
_FIELD_OF = {resource: name for name, resource in PER_TASK_LIMITS.items()}


@dataclass
class _RunState:
    """One run's ledger while its decisions are walked."""

    agent: str
    depth: int
    committed: dict[str, float] = field(default_factory=dict)
    open: dict[str, dict[str, float]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    peak: dict[str, float] = field(default_factory=dict)
    dispatches: int = 0

    def reserved(self, resource: str) -> float:
        """What the run's open reservations hold of a resource."""
        return sum(amounts.get(resource, 0.0) for amounts in self.open.values())

    def settle(self, decision: DecisionRecord) -> None:
        """Apply a reserve, commit or release record."""
        if decision.kind == "reserve":
            self.open[decision.key] = dict(decision.amounts)
        elif decision.kind == "commit":
            self.open.pop(decision.key, None)
            for resource, value in decision.amounts.items():
                self.committed[resource] = self.committed.get(resource, 0.0) + value
            self._raise_peak(self.committed)
        elif decision.kind == "release":
            self.open.pop(decision.key, None)

    def _raise_peak(self, values: dict[str, float]) -> None:
        for metric, value in values.items():
            self.peak[metric] = max(self.peak.get(metric, 0.0), value)


def _demand(policy: Policy, decision: DecisionRecord) -> dict[str, float]:
    """What a dispatch's reservation is checked with: its estimate (a child's, plus itself)."""
    if decision.dispatch == "child":
        estimate = policy.estimate_for_child(decision.target)
        return {
            "tokens": float(estimate.tokens),
            "cost_usd": estimate.cost_usd,
            "tool_calls": float(estimate.tool_calls),
            "subtasks": 1.0,
            "child_workflows": 1.0,
        }
    if decision.kind == "reserve":
        return dict(decision.amounts)
    estimate = policy.estimate_for_activity(decision.target)
    tool = policy.tool_for(decision.target)
    counts = 1.0 if tool is None or tool[1].counts_as_tool_call else 0.0
    return {
        "tokens": float(estimate.tokens),
        "cost_usd": estimate.cost_usd,
        "tool_calls": estimate.tool_calls + counts,
    }


def _need(state: _RunState, demand: dict[str, float], child: bool) -> dict[str, float]:
    need = {
        resource: state.committed.get(resource, 0.0)
        + state.reserved(resource)
        + demand.get(resource, 0.0)
        for resource in _RESOURCES
    }
    need["iterations"] = float(state.dispatches)
    if child:
        need["depth"] = float(state.depth + 1)
    return need


def _walk(
    report: IncidentReport, policy: Policy
) -> tuple[list[tuple[int, DispatchPoint]], dict[str, _RunState]]:
    """Every dispatch (with its position in ``report.decisions``) and each run's end state."""
    states = {run.run_id: _RunState(agent=run.agent, depth=run.depth) for run in report.runs}
    halted = {(chain.decision.run_id, chain.decision.key) for chain in report.breaches}
    points: list[tuple[int, DispatchPoint]] = []
    for order, decision in enumerate(report.decisions):
        state = states.setdefault(decision.run_id, _RunState(decision.agent, decision.depth))
        if decision.kind in _STARTS and decision.key not in state.seen:
            state.seen.add(decision.key)
            state.dispatches += 1
            need = _need(state, _demand(policy, decision), decision.dispatch == "child")
            state._raise_peak(need)
            point = DispatchPoint(
                index=len(points) + 1,
                workflow_id=decision.workflow_id,
                run_id=decision.run_id,
                agent=decision.agent,
                position=state.dispatches,
                label=f"{decision.dispatch or 'dispatch'} {decision.target}".strip(),
                key=decision.key,
                need=need,
                halted=(decision.run_id, decision.key) in halted,
            )
            points.append((order, point))
        state.settle(decision)
    return points, states


def _subtrees(report: IncidentReport) -> dict[str, set[str]]:
    """Workflow id -> the workflow ids of its subtree (itself included)."""
    parent = {run.workflow_id: run.parent_workflow_id for run in report.runs}
    members: dict[str, set[str]] = defaultdict(set)
    for workflow_id in parent:
        ancestor: str | None = workflow_id
        while ancestor is not None and workflow_id not in members[ancestor]:
            members[ancestor].add(workflow_id)
            ancestor = parent.get(ancestor)
    return members


def _with_savings(
    report: IncidentReport, points: list[tuple[int, DispatchPoint]]
) -> list[DispatchPoint]:
    """Each dispatch with the spend of its run's subtree from it on (activity commits)."""
    subtree = _subtrees(report)
    commits = [
        (order, d)
        for order, d in enumerate(report.decisions)
        if d.kind == "commit" and d.dispatch == "activity"
    ]
    suffixes: dict[str, tuple[list[int], list[dict[str, float]]]] = {}
    result = []
    for order, point in points:
        if point.workflow_id not in suffixes:
            members = subtree.get(point.workflow_id, {point.workflow_id})
            mine = [(o, d) for o, d in commits if d.workflow_id in members]
            suffixes[point.workflow_id] = ([o for o, _ in mine], _suffix_sums(mine))
        orders, sums = suffixes[point.workflow_id]
        saved = sums[bisect.bisect_left(orders, order)]
        result.append(point.model_copy(update={"saved": saved}))
    return result


def _suffix_sums(commits: Sequence[tuple[int, DecisionRecord]]) -> list[dict[str, float]]:
    """``sums[i]``: spend of ``commits[i:]``; one more entry (nothing) at the end."""
    sums = [dict.fromkeys(_SAVED, 0.0)]
    for _, decision in reversed(commits):
        last = sums[-1]
        sums.append({m: last[m] + decision.amounts.get(m, 0.0) for m in _SAVED})
    sums.reverse()
    return sums


def incident_trace(report: IncidentReport, policy: Policy) -> TreeTrace:
    """The incident tree's dispatches in order, with what each limit compares at each.

    Args:
        report: The incident's report (:func:`temporal_governor.review.review`).
        policy: The policy its runs were governed by (for the estimates).

    Returns:
        The trace, with each dispatch's spend to the end of its run's subtree.

    """
    points, _ = _walk(report, policy)
    return TreeTrace(
        root_workflow_id=report.root_workflow_id,
        dispatches=_with_savings(report, points),
        runs=run_traces(report, policy),
    )


def run_traces(report: IncidentReport, policy: Policy) -> list[RunTrace]:
    """Each run of a report with the most each metric reached at its dispatches and end.

    Args:
        report: A report of normal runs (several trees may be reviewed together).
        policy: The policy the runs were governed by.

    Returns:
        One trace per run that made a decision.

    """
    _, states = _walk(report, policy)
    ids = {run.run_id: run.workflow_id for run in report.runs}
    return [
        RunTrace(workflow_id=ids.get(run_id, ""), run_id=run_id, agent=s.agent, peak=s.peak)
        for run_id, s in states.items()
        if s.peak
    ]


def dimensions_of(policy: Policy, agents: Iterable[str]) -> list[Dimension]:
    """The limits a suggestion may write for these workflow types, with their ceilings.

    Per-task quotas of the agent entry (``agents.<name>.quotas.<field>``) and its
    ``loop_detection`` ``max_iterations`` and ``max_depth``. A workflow type without an
    entry, or whose entry inherits ``defaults.quotas``, gets no quota dimension (writing
    one would drop the inherited quotas); without an entry, no loop dimension either.

    Args:
        policy: The policy.
        agents: Workflow types.

    Returns:
        The dimensions, per agent in :data:`~._suggest.METRICS` order.

    """
    dimensions: list[Dimension] = []
    for agent in sorted(set(agents)):
        entry = policy.agent_for(agent)
        if entry is None:
            continue
        name, agent_policy = entry
        if "quotas" in agent_policy.model_fields_set:
            specs = agent_policy.quotas.per_task()
            for resource in _RESOURCES:
                dimensions.append(_quota(policy, agent, name, resource, specs.get(resource)))
        loop = agent_policy.loop_detection
        if loop.action == "terminate":
            for metric, current in (("iterations", loop.max_iterations), ("depth", loop.max_depth)):
                path = ("agents", name, "loop_detection", f"max_{metric}")
                dimensions.append(Dimension(agent=agent, metric=metric, path=path, current=current))
    return dimensions


def _quota(
    policy: Policy, agent: str, name: str, resource: str, spec: LimitSpec | None
) -> Dimension:
    """The dimension of one per-task quota, written so that it halts once merged.

    A limit that would resolve to ``terminate`` as the policy model resolves it (the
    quota's own ``on_breach``, else ``defaults.on_breach``) keeps its spelling: a bare
    number, or the ``limit`` of a mapping. Any other (an alert limit, or a new field
    under ``defaults.on_breach: alert``) is written as ``{limit: X, on_breach: terminate}``.
    """
    path = ("agents", name, "quotas", _FIELD_OF[resource])
    integer = resource != "cost_usd"
    written = spec if spec is not None else LimitSpec(limit=0)  # a new field: a bare number
    terminate = policy.on_breach_of(written) == "terminate"
    mapping = spec is not None and bool(spec.model_fields_set - {"limit"})
    return Dimension(
        agent=agent,
        metric=resource,
        path=(*path, "limit") if mapping or not terminate else path,
        current=float(spec.limit) if spec is not None and terminate else None,
        integer=integer,
        also={} if terminate else {"on_breach": "terminate"},
    )


def suggest_from_reports(
    incident: IncidentReport,
    normal: Sequence[IncidentReport],
    policy: Policy,
    margin: float = DEFAULT_MARGIN,
) -> Suggestion:
    """The tightest limits that halt a replayed incident earliest and pass the normal runs.

    Args:
        incident: The incident tree's report (:func:`temporal_governor.review.review`).
        normal: Reports of normal runs (one per tree, or several trees in one).
        policy: The policy the runs were governed by; suggestions only tighten it.
        margin: Suggested limits are at least this fraction over the largest normal run.

    Returns:
        The suggestion (:func:`~._suggest.suggest_limits`).

    Raises:
        VerifierUnavailable: The ``z3-solver`` package (extra ``verify``) is missing.

    """
    runs = [run for report in normal for run in run_traces(report, policy)]
    dimensions = dimensions_of(policy, {run.agent for run in incident.runs})
    return suggest_limits(incident_trace(incident, policy), runs, dimensions, margin)
