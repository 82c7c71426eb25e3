"""Incident review: replay a workflow tree's histories with the governor and rebuild its decisions.

The governor keeps no log of its own: every input to its decisions (headers, results with
usage metadata, failures) is in Temporal's history, and its workflow-side code is
deterministic. Replaying the histories with :class:`temporalio.worker.Replayer` and the
governor installed in review mode (a collecting sink, no telemetry) rebuilds every
decision exactly as it was made. No activity runs and nothing is sent anywhere.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from ..context import HEADER, BudgetContext
from ..core.accounting import RESOURCES
from ..core.decisions import DecisionRecord, RemainingMode
from ..errors import (
    BUDGET_EXCEEDED,
    GOVERNANCE_KILLED,
    RUNAWAY_LOOP,
    BreachDetails,
    GovernorError,
)
from ..interceptors import GovernanceInterceptor
from ..plugin import _share_governor_with_sandbox, governed_data_converter
from ..policy import Policy
from ._report import (
    CausalChain,
    IncidentReport,
    RunNode,
    SpendPoint,
    SpendRow,
    SpendSeries,
)

Progress = Callable[[str, int, int | None], None]
"""``progress(stage, done, total)``: called while fetching and replaying."""

_LAST_DECISIONS = 10
_CLOSE_STATUS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "completed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "failed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "cancelled",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "terminated",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "timed_out",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "continued_as_new",
}


class ReviewError(GovernorError):
    """The histories to review could not be found or read."""


class _Collector:
    """A decision sink that keeps everything, replaying or not (review mode)."""

    takes_remaining: RemainingMode = "never"
    """The report has no use for the remaining budget: the governor spares computing it."""

    def __init__(self) -> None:
        self.decisions: list[DecisionRecord] = []

    def record(self, decision: DecisionRecord, *, replaying: bool) -> None:
        self.decisions.append(decision)

    def remaining(
        self, decision: DecisionRecord, remaining: dict[str, float], *, replaying: bool
    ) -> None:
        return None


def _children(history: WorkflowHistory) -> list[tuple[str, str]]:
    """Child runs started by a run, and the run it continued as, in history order."""
    found: list[tuple[str, str]] = []
    for event in history.events:
        if event.HasField("child_workflow_execution_started_event_attributes"):
            execution = event.child_workflow_execution_started_event_attributes.workflow_execution
            found.append((execution.workflow_id, execution.run_id))
        elif event.HasField("workflow_execution_continued_as_new_event_attributes"):
            attrs = event.workflow_execution_continued_as_new_event_attributes
            found.append((history.workflow_id, attrs.new_execution_run_id))
    return found


async def fetch_tree(
    client: Client,
    workflow_id: str,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> list[WorkflowHistory]:
    """Fetch the history of a run and of every run in its tree (children, continue-as-new).

    Args:
        client: A connected client.
        workflow_id: The root run's workflow id.
        run_id: The root run, or ``None`` for the latest run of that id.
        progress: Called after each history is fetched.

    Returns:
        The histories, parents before children.

    """
    pending: list[tuple[str, str | None]] = [(workflow_id, run_id)]
    seen: set[tuple[str, str | None]] = set()
    histories: list[WorkflowHistory] = []
    while pending:
        target = pending.pop(0)
        if target in seen:
            continue
        seen.add(target)
        history = await client.get_workflow_handle(target[0], run_id=target[1]).fetch_history()
        histories.append(history)
        pending.extend(_children(history))
        if progress:
            progress("fetching histories", len(histories), len(histories) + len(pending))
    return histories


def _started(history: WorkflowHistory) -> Any:
    first = history.events[0] if history.events else None
    if first is None or not first.HasField("workflow_execution_started_event_attributes"):
        raise ReviewError(f"history of {history.workflow_id} does not start with a workflow start")
    return first.workflow_execution_started_event_attributes


def load_histories(paths: Sequence[Path], root_workflow_id: str) -> list[WorkflowHistory]:
    """Read exported history JSON files (``temporal workflow show --output json``).

    The files hold no workflow ids; the root is ``root_workflow_id`` and every other run is
    identified through the child-started events of its parent.

    Args:
        paths: One JSON file per run.
        root_workflow_id: The workflow id of the run that has no parent among the files.

    Returns:
        The histories, with their workflow ids.

    Raises:
        ReviewError: A file is missing or not a history.

    """
    raw: list[tuple[Path, WorkflowHistory]] = []
    for path in paths:
        try:
            text = Path(path).read_text()
            raw.append((Path(path), WorkflowHistory.from_json("?", json.loads(text))))
        except (OSError, ValueError) as error:
            raise ReviewError(f"{path}: not a readable history JSON file ({error})") from error
    ids: dict[str, str] = {}
    continued: dict[str, str] = {}  # new run id -> the run it continued
    for _, history in raw:
        own = _run_id_of(history)
        for workflow_id, run_id in _children(history):
            if workflow_id == history.workflow_id:
                continued[run_id] = own
            else:
                ids[run_id] = workflow_id
    histories: list[WorkflowHistory] = []
    for path, history in raw:
        run_id = _run_id_of(history)
        started = _started(history)
        first = run_id
        while first in continued:
            first = continued[first]
        found = ids.get(first)
        if found is None and started.HasField("parent_workflow_execution"):
            raise ReviewError(f"{path}: a child run whose parent's history is not among the files")
        histories.append(WorkflowHistory(found or root_workflow_id, list(history.events)))
    return histories


async def _each(histories: Iterable[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history


def _status(history: WorkflowHistory) -> str:
    for event in reversed(history.events):
        status = _CLOSE_STATUS.get(event.event_type)
        if status is None:
            continue
        if status == "failed":
            failure = event.workflow_execution_failed_event_attributes.failure
            if failure.application_failure_info.type == GOVERNANCE_KILLED:
                return "killed"
            if failure.application_failure_info.type in (BUDGET_EXCEEDED, RUNAWAY_LOOP):
                return "breached"
        return status
    return "running"


def _failure_breach(history: WorkflowHistory) -> BreachDetails | None:
    for event in reversed(history.events):
        if event.HasField("workflow_execution_failed_event_attributes"):
            failure = event.workflow_execution_failed_event_attributes.failure
            payloads = failure.application_failure_info.details.payloads
            if (
                failure.application_failure_info.type
                in (BUDGET_EXCEEDED, RUNAWAY_LOOP, GOVERNANCE_KILLED)
                and payloads
            ):
                try:
                    return BreachDetails.model_validate_json(payloads[0].data)
                except ValueError:
                    return None
    return None


def _context(started: Any) -> BudgetContext:
    payload = started.header.fields.get(HEADER)
    if payload is None:
        return BudgetContext()
    try:
        return BudgetContext.model_validate_json(payload.data)
    except ValueError:
        return BudgetContext()


def _add(row: dict[str, float], decision: DecisionRecord) -> None:
    for resource, value in decision.amounts.items():
        row[resource] = row.get(resource, 0.0) + value


def _rows(
    commits: Iterable[DecisionRecord], group: Callable[[DecisionRecord], str]
) -> list[SpendRow]:
    totals: dict[str, list[float]] = {}
    for decision in commits:
        key = group(decision)
        row = totals.get(key)
        if row is None:
            row = totals[key] = [0.0, 0.0, 0.0, 0.0]
        amounts = decision.amounts
        row[0] += amounts.get("tokens", 0.0)
        row[1] += amounts.get("cost_usd", 0.0)
        row[2] += amounts.get("tool_calls", 0.0)
        row[3] += 1
    rows = [
        SpendRow(group=key, tokens=t, cost_usd=c, tool_calls=n, dispatches=int(d))
        for key, (t, c, n, d) in totals.items()
    ]
    return sorted(rows, key=lambda row: (-row.tokens, -row.cost_usd, row.group))


def _subtree(runs: list[RunNode], root: str) -> set[str]:
    members = {root}
    changed = True
    while changed:
        changed = False
        for run in runs:
            if run.parent_workflow_id in members and run.workflow_id not in members:
                members.add(run.workflow_id)
                changed = True
    return members


def _scope_owner(scope: str, fallback: str) -> str:
    # scopes of per-task limits are "run <agent>/<workflow id>"
    if scope.startswith("run ") and "/" in scope:
        return scope.split("/", 1)[1]
    return fallback


def build_report(
    histories: Sequence[WorkflowHistory],
    decisions: Sequence[DecisionRecord],
    failures: dict[str, Exception],
    source: str,
) -> IncidentReport:
    """Assemble the report from replayed histories and the decisions they rebuilt.

    Args:
        histories: The tree's histories, root first.
        decisions: Every decision the replay rebuilt.
        failures: Replay failures by run id.
        source: Where the histories came from.

    Returns:
        The report.

    """
    ordered = sorted(decisions, key=lambda d: (d.time, d.depth, d.workflow_id, d.seq))
    by_run: dict[str, list[DecisionRecord]] = defaultdict(list)
    for decision in ordered:
        by_run[decision.run_id].append(decision)
    runs: list[RunNode] = []
    for history in histories:
        started = _started(history)
        context = _context(started)
        run_id = started.original_execution_run_id or started.first_execution_run_id
        commits = [d for d in by_run.get(run_id, []) if d.kind == "commit"]
        spend: dict[str, float] = {}
        own: dict[str, float] = {}
        for decision in commits:
            _add(spend, decision)
            if decision.dispatch == "activity":
                _add(own, decision)
        parent = (
            started.parent_workflow_execution
            if started.HasField("parent_workflow_execution")
            else None
        )
        failure = failures.get(run_id)
        runs.append(
            RunNode(
                workflow_id=history.workflow_id,
                run_id=run_id,
                agent=started.workflow_type.name,
                parent_workflow_id=parent.workflow_id if parent else None,
                parent_run_id=parent.run_id if parent else None,
                depth=context.depth,
                tenant=context.attribution.tenant,
                owner=context.attribution.owner,
                status=_status(history),
                spend=spend,
                own_spend=own,
                history_events=len(history.events),
                replay_error=str(failure) if failure else None,
            )
        )
    root = runs[0]
    activity_commits = [d for d in ordered if d.kind == "commit" and d.dispatch == "activity"]
    failures_by_run = {h.workflow_id: _failure_breach(h) for h in histories}
    breaches: list[CausalChain] = []
    for decision in ordered:
        if decision.kind != "breach":
            continue
        details = failures_by_run.get(decision.workflow_id) or BreachDetails(
            limit=decision.limit,
            resource="",
            scope=decision.scope,
            observed=decision.observed,
            ceiling=decision.ceiling,
        )
        owner = _scope_owner(decision.scope, decision.workflow_id)
        members = _subtree(runs, owner)
        resource = details.resource if details.resource in RESOURCES else "tokens"
        contributing = [
            d
            for d in activity_commits
            if d.workflow_id in members and d.time <= decision.time and d.amounts.get(resource)
        ]
        before = [d for d in ordered if d.time <= decision.time and d is not decision]
        breaches.append(
            CausalChain(
                breach=details,
                decision=decision,
                consumers=_rows(contributing, lambda d: f"{d.agent} / {d.target}"),
                contributing=contributing,
                last_decisions=before[-_LAST_DECISIONS:],
            )
        )
    series = _series(breaches, activity_commits, runs)
    depth_of = {run.workflow_id: run.depth for run in runs}
    return IncidentReport(
        root_workflow_id=root.workflow_id,
        root_run_id=root.run_id,
        source=source,
        runs=runs,
        decisions=ordered,
        breaches=breaches,
        spend_by_agent=_rows(activity_commits, lambda d: d.agent),
        spend_by_tool=_rows(activity_commits, lambda d: d.target),
        spend_by_tenant=_rows(activity_commits, lambda d: d.tenant),
        spend_by_depth=_rows(activity_commits, lambda d: str(depth_of.get(d.workflow_id, d.depth))),
        series=series,
        nondeterminism=[
            f"{run.agent}/{run.workflow_id} (run {run.run_id}): {run.replay_error}"
            for run in runs
            if run.replay_error
        ],
    )


def _series(
    breaches: list[CausalChain], commits: list[DecisionRecord], runs: list[RunNode]
) -> SpendSeries | None:
    if breaches:
        first = breaches[0]
        resource = first.breach.resource if first.breach.resource in RESOURCES else "tokens"
        members = _subtree(runs, _scope_owner(first.breach.scope, first.decision.workflow_id))
        ceiling: float | None = first.breach.ceiling
        limit, scope = first.breach.limit, first.breach.scope
    else:
        resource, ceiling, limit, scope = "tokens", None, "", ""
        members = {run.workflow_id for run in runs}
    points: list[SpendPoint] = []
    total = 0.0
    for decision in commits:
        value = decision.amounts.get(resource, 0.0)
        if decision.workflow_id not in members or not value:
            continue
        total += value
        points.append(
            SpendPoint(
                time=decision.time,
                cumulative=total,
                workflow_id=decision.workflow_id,
                target=decision.target,
            )
        )
    if not points and ceiling is None:
        return None
    return SpendSeries(resource=resource, ceiling=ceiling, limit=limit, scope=scope, points=points)


async def review(
    workflow_id: str,
    *,
    policy: Policy,
    workflows: Sequence[type],
    client: Client | None = None,
    run_id: str | None = None,
    histories: Sequence[WorkflowHistory] | None = None,
    progress: Progress | None = None,
    sandboxed: bool = True,
) -> IncidentReport:
    """Replay a workflow tree with the governor in review mode and report its decisions.

    Give either ``client`` (the tree is fetched from the server) or ``histories`` (e.g.
    from :func:`load_histories`). The policy must be the one the runs were governed by,
    and ``workflows`` the workflow classes; no activity runs. A history that no longer
    replays (the workflow code changed since) is reported in ``nondeterminism``.

    Args:
        workflow_id: The root run's workflow id.
        policy: The policy the runs were governed by.
        workflows: The workflow classes of the tree.
        client: A client to fetch histories with.
        run_id: The root run (default: the latest run of ``workflow_id``).
        histories: Histories to review instead of fetching.
        progress: Called while fetching and replaying.
        sandboxed: Replay inside the workflow sandbox, as workers run the code. ``False``
            replays without it, faster; determinism is still checked command by command.

    Returns:
        The incident report.

    """
    if histories is None:
        if client is None:
            raise ReviewError("give a client to fetch histories with, or the histories")
        histories = await fetch_tree(client, workflow_id, run_id, progress)
        source = f"server {client.service_client.config.target_host}/{client.namespace}"
    else:
        source = "files"
    if not histories:
        raise ReviewError(f"no history found for {workflow_id}")
    collector = _Collector()
    replayer = Replayer(
        workflows=workflows,
        interceptors=[GovernanceInterceptor(policy, sinks=[collector])],
        # usage on failed attempts and children travels in markers only the governed
        # failure converter reads (and takes off before agent code sees the error)
        data_converter=governed_data_converter(client.data_converter if client else None),
        workflow_runner=(
            _share_governor_with_sandbox(None) if sandboxed else UnsandboxedWorkflowRunner()
        ),
    )
    failures: dict[str, Exception] = {}
    done = 0
    async with replayer.workflow_replay_iterator(_each(histories)) as results:
        async for result in results:
            done += 1
            if result.replay_failure is not None:
                failures[_run_id_of(result.history)] = result.replay_failure
            if progress:
                progress("replaying", done, len(histories))
    return build_report(histories, collector.decisions, failures, source)


def _run_id_of(history: WorkflowHistory) -> str:
    started = _started(history)
    return str(started.original_execution_run_id or started.first_execution_run_id)


__all__ = [
    "IncidentReport",
    "ReviewError",
    "build_report",
    "fetch_tree",
    "load_histories",
    "review",
]
