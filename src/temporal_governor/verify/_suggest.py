"""Counterexample-driven tightening: the tightest limits that stop an incident early.

Pure: it takes plain traces (what each dispatch of each run would be compared with, built
by :mod:`._traces` from replayed decision records) and returns typed suggestions. Every
limit ``L_x`` of a modelled dimension ``x`` (an agent's per-task quota or loop threshold)
is a solver variable: its current ceiling, or, changed, the tightest readable number at
least ``peak_x * (1 + margin)`` (``peak_x``: the most any normal run of the agent reached)
and below the current ceiling, so every normal run passes and nothing is loosened. A
dispatch halts when the amount it is compared with exceeds a limit of its agent; Z3's
``Optimize`` minimises the incident's halting dispatch, then the changed fields.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._limits import at
from ._solver import QUERY_TIMEOUT_MS, Smt

DEFAULT_MARGIN = 0.1
"""Suggested limits are at least this fraction above the largest normal run."""

METRICS: tuple[str, ...] = (
    "tokens",
    "cost_usd",
    "tool_calls",
    "subtasks",
    "child_workflows",
    "iterations",
    "depth",
)
"""What a dimension limits, in the order suggestions prefer them when they tie."""

_ABOVE_PEAK = frozenset({"tokens", "cost_usd"})
"""Metrics whose child carve refuses at equality: their limit must exceed the peak."""
_SAVED = ("tokens", "cost_usd", "tool_calls")


class Dimension(BaseModel):
    """One limit the suggestion may tighten: a field of the policy and what it limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str
    """The workflow type whose runs the limit governs."""
    metric: str
    """One of :data:`METRICS`: a per-task resource, ``iterations`` (dispatches of one run,
    ``loop_detection.max_iterations``) or ``depth`` (``loop_detection.max_depth``)."""
    path: tuple[str, ...]
    """The policy field it is written to, as path segments (an agent name may hold dots)."""
    field: str = ""
    """The same field for messages, rendered as ``PolicyError`` renders paths (filled in
    from ``path``): ``agents.a.quotas.max_tokens_per_task``, ``agents['team.exec']...``."""
    current: float | None = None
    """Its terminate ceiling now (``None``: no limit, or one that only alerts)."""
    integer: bool = True
    """Whether the limit counts whole units."""
    also: dict[str, Any] = Field(default_factory=dict)
    """Further keys the patch sets next to it (key -> value), e.g. ``{"on_breach":
    "terminate"}`` beside ``...max_tokens_per_task.limit``."""

    @model_validator(mode="before")
    @classmethod
    def _field_from_path(cls, data: Any) -> Any:
        """Fill ``field`` (for messages) from ``path`` (for the patch) when not given."""
        if isinstance(data, dict) and "field" not in data and data.get("path"):
            return {**data, "field": at(*data["path"])}
        return data


class DispatchPoint(BaseModel):
    """One dispatch of a run and what each of its limits compares at it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    """Position among all dispatches of the tree, from 1."""
    workflow_id: str
    run_id: str
    agent: str
    position: int
    """Position among the run's own dispatches, from 1."""
    label: str
    """``activity <type>`` or ``child <type>``."""
    key: str = ""
    need: dict[str, float] = Field(default_factory=dict)
    """Metric -> the amount a limit on it is compared with (committed + reserved + the
    dispatch's estimate; the dispatch count; the child's depth)."""
    saved: dict[str, float] = Field(default_factory=dict)
    """Spend of the run's subtree from this dispatch on (tokens, cost, tool calls)."""
    halted: bool = False
    """Whether the run was halted at this dispatch."""


class RunTrace(BaseModel):
    """What one run reached on each metric: the most any of its dispatches compared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    run_id: str
    agent: str
    peak: dict[str, float] = Field(default_factory=dict)


class TreeTrace(BaseModel):
    """A workflow tree's dispatches in order, and its runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root_workflow_id: str
    dispatches: list[DispatchPoint] = Field(default_factory=list)
    runs: list[RunTrace] = Field(default_factory=list)


class LimitChange(BaseModel):
    """One field of the patch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    """The field for messages (:attr:`Dimension.field`)."""
    path: tuple[str, ...]
    """The field's path segments, which the patch is built from."""
    agent: str
    metric: str
    current: float | None
    suggested: float
    normal_peak: float
    """The largest value a normal run of the agent reached."""
    also: dict[str, Any] = Field(default_factory=dict)
    """Further keys set next to it (key -> value)."""


class Candidate(BaseModel):
    """One modelled limit: its suggested value and where alone it would stop the incident."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    current: float | None
    suggested: float | None
    """``None``: the margin over the normal runs is not below the current limit."""
    normal_peak: float
    stops_at: int | None = None
    """The incident dispatch (index) it would halt, alone; ``None``: none."""


class Suggestion(BaseModel):
    """The outcome of :func:`suggest_limits`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    incident: str
    """The incident's root workflow id."""
    changes: list[LimitChange] = Field(default_factory=list)
    stop: DispatchPoint | None = None
    """Where the incident would have halted with the changes."""
    halted_at: DispatchPoint | None = None
    """Where it was halted, if it was."""
    saved: dict[str, float] = Field(default_factory=dict)
    """Spend after the stop (of the halted run's subtree): tokens, cost_usd, tool_calls."""
    candidates: list[Candidate] = Field(default_factory=list)
    margin: float = DEFAULT_MARGIN
    normal_runs: int = 0
    unmodelled: list[str] = Field(default_factory=list)
    """Agents of the incident that no dimension covers (no normal run, no policy entry)."""
    reason: str = ""
    """Why nothing is suggested, when nothing is."""
    seconds: float = 0.0
    solver_queries: int = 0

    @property
    def separated(self) -> bool:
        """Whether a patch stops the incident earlier than the current policy."""
        return bool(self.changes)

    def to_yaml(self, policy: str = "the policy") -> str:
        """The patch as YAML, explained in comments above it (the whole text merges as is)."""
        lines = [f"# {line}" for line in self.explain(policy)]
        if self.changes:
            lines.append(yaml.safe_dump(self.patch(), sort_keys=False).rstrip())
        return "\n".join(lines) + "\n"

    def explain(self, policy: str = "the policy") -> list[str]:
        """Where the incident stops, what that saves, and every modelled limit."""
        lines = [
            f"tightening {policy} from incident {self.incident} against {self.normal_runs} "
            f"normal runs (margin {self.margin:.0%})"
        ]
        if self.halted_at is not None:
            lines.append(f"halted now at {_where(self.halted_at)}")
        if self.stop is None:
            lines.append(f"no suggestion: {self.reason}")
        else:
            saved = self.saved
            lines += [
                f"would halt at {_where(self.stop)}",
                f"saving {saved.get('tokens', 0):,.0f} tokens, ${saved.get('cost_usd', 0):,.4f}, "
                f"{saved.get('tool_calls', 0):,.0f} tool calls (spent after it by its run's tree)",
            ]
        lines.append("limit: normal peak -> suggested (current), first incident dispatch it halts")
        lines += [f"  {_candidate(c)}" for c in self.candidates]
        if self.unmodelled:
            lines.append(
                f"not modelled (no normal run or agent entry): {', '.join(self.unmodelled)}"
            )
        lines.append(f"solver: {self.solver_queries} query, {self.seconds:.2f} s")
        return lines

    def patch(self) -> dict[str, Any]:
        """The changed fields as a nested mapping, to merge into the policy's YAML."""
        patch: dict[str, Any] = {}
        for change in self.changes:
            value: float = (
                int(change.suggested) if change.suggested.is_integer() else change.suggested
            )
            _put(patch, change.path, value)
            for key, extra in change.also.items():
                _put(patch, (*change.path[:-1], key), extra)
        return patch


def _where(point: DispatchPoint) -> str:
    return (
        f"dispatch {point.index}: {point.label} ({point.key}), dispatch {point.position} of "
        f"{point.agent}/{point.workflow_id} (run {point.run_id})"
    )


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:,.6g}"


def _candidate(candidate: Candidate) -> str:
    stops = "-" if candidate.stops_at is None else f"dispatch {candidate.stops_at}"
    suggested = "keep" if candidate.suggested is None else _number(candidate.suggested)
    return (
        f"{candidate.field}: {_number(candidate.normal_peak)} -> {suggested} "
        f"({_number(candidate.current)}), {stops}"
    )


def _put(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """Set ``value`` at ``path`` (segments, never split further) in a nested mapping."""
    *parents, leaf = path
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def readable_at_least(value: float, integer: bool) -> float:
    """The smallest number of two significant digits (whole, if ``integer``) >= ``value``.

    Args:
        value: The least acceptable limit.
        integer: Whether the limit counts whole units.

    Returns:
        E.g. 8,079.5 -> 8,100; 4.4 -> 5 (whole) or 4.4; 0.0231 -> 0.024; 0 -> 0.

    """
    if value <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    rounded = math.ceil(value / step - 1e-9) * step
    rounded = round(rounded, max(0, -math.floor(math.log10(step))))
    if rounded < value * (1 - 1e-9):  # below by more than float residue
        rounded += step
    return float(math.ceil(rounded)) if integer else rounded


def floor_of(dimension: Dimension, peak: float, margin: float) -> float:
    """The least readable limit a dimension may get: its normal peak plus the margin."""
    least = readable_at_least(peak * (1 + margin), dimension.integer)
    if dimension.metric in _ABOVE_PEAK and least <= peak:
        bump = 1.0 if dimension.integer else max(peak * 1e-6, 1e-6)
        least = readable_at_least(peak + bump, dimension.integer)
    return least


def normal_peaks(normal: Sequence[RunTrace]) -> dict[tuple[str, str], float]:
    """The largest value each (agent, metric) reached over the normal runs."""
    peaks: dict[tuple[str, str], float] = {}
    for run in normal:
        for metric, value in run.peak.items():
            key = (run.agent, metric)
            peaks[key] = max(peaks.get(key, 0.0), value)
    return peaks


class _Model:
    """The optimisation problem: a limit variable per dimension, the halting dispatch."""

    def __init__(
        self,
        smt: Smt,
        dimensions: Sequence[Dimension],
        floors: Sequence[float | None],
        points: Sequence[DispatchPoint],
    ) -> None:
        self.smt, self.z3 = smt, smt.z3
        self.dimensions, self.floors, self.points = dimensions, floors, points
        self.limits = [smt.amount(f"L{i}", d.integer) for i, d in enumerate(dimensions)]
        self.changed = [self.z3.Bool(f"changed{i}") for i in range(len(dimensions))]
        self.stop = self.z3.Int("stop")

    def bounds(self) -> list[Any]:
        """Each limit: its floor when changed, its current ceiling when not."""
        z3, constraints = self.z3, []
        for limit, changed, dim, floor in zip(
            self.limits, self.changed, self.dimensions, self.floors, strict=True
        ):
            if floor is None:  # the margin is not below the current limit: keep it
                constraints.append(z3.Not(changed))
            else:
                constraints.append(z3.Implies(changed, limit == floor))
            if dim.current is not None:
                constraints.append(z3.Implies(z3.Not(changed), limit == dim.current))
        return constraints

    def halts(self, point: DispatchPoint) -> Any:
        """Whether some limit of the dispatch's agent halts it."""
        if point.halted:
            return True  # whatever halted it (also a limit the model leaves out) still does
        terms: list[Any] = []
        for limit, changed, dim, floor in zip(
            self.limits, self.changed, self.dimensions, self.floors, strict=True
        ):
            need = point.need.get(dim.metric)
            if dim.agent != point.agent or need is None:
                continue
            if dim.current is not None and need > dim.current:
                return True  # halts under the current limit already
            if floor is not None and need > floor:
                terms.append(self.z3.And(changed, need > limit))
        return self.z3.Or(*terms) if terms else False

    def optimizer(self) -> Any:
        """A fresh ``Optimize`` with the bounds and ``stop`` at a dispatch that halts."""
        optimizer = self.z3.Optimize()
        optimizer.set(timeout=QUERY_TIMEOUT_MS)
        optimizer.add(*self.bounds())
        halting = []
        for point in self.points:
            halts = self.halts(point)
            if halts is not False:
                halting.append(self.z3.And(self.stop == point.index, halts))
        optimizer.add(self.z3.Or(*halting) if halting else self.z3.BoolVal(False))
        self.smt.queries += 1
        return optimizer

    def objectives(self, optimizer: Any) -> None:
        """Earliest halt, then fewest changes (preferring earlier metrics)."""
        z3 = self.z3
        optimizer.minimize(self.stop)
        weights = [
            z3.If(changed, 100 + METRICS.index(dim.metric), 0)
            for changed, dim in zip(self.changed, self.dimensions, strict=True)
        ]
        optimizer.minimize(z3.Sum(weights) if weights else z3.IntVal(0))


def suggest_limits(
    incident: TreeTrace,
    normal: Sequence[RunTrace],
    dimensions: Sequence[Dimension],
    margin: float = DEFAULT_MARGIN,
) -> Suggestion:
    """The tightest limits under which every normal run passes and the incident halts earliest.

    Args:
        incident: The incident tree's dispatches.
        normal: The runs of the normal trees (their peaks).
        dimensions: The limits that may change, with their current ceilings.
        margin: Suggested limits are at least this fraction over the largest normal run.

    Returns:
        The changes (only fields that move, never loosened), where the incident would
        halt and the spend after that point; no changes, with ``reason``, when no limit
        stops the incident earlier than the current policy does.

    Raises:
        VerifierUnavailable: The ``z3-solver`` package (extra ``verify``) is missing.

    """
    started = time.perf_counter()
    smt = Smt()
    peaks = normal_peaks(normal)
    usable = [d for d in dimensions if (d.agent, d.metric) in peaks]
    floors = [_floor(d, peaks[(d.agent, d.metric)], margin) for d in usable]
    model = _Model(smt, usable, floors, incident.dispatches)
    optimizer = model.optimizer()
    model.objectives(optimizer)
    found = optimizer.check() == model.z3.sat
    result = _result(model, optimizer.model() if found else None, incident, peaks, floors)
    covered = {d.agent for d in usable}
    return result.model_copy(
        update={
            "margin": margin,
            "normal_runs": len(normal),
            "unmodelled": sorted({p.agent for p in incident.dispatches} - covered),
            "candidates": _candidates(model, peaks),
            "seconds": time.perf_counter() - started,
            "solver_queries": smt.queries,
        }
    )


def _floor(dimension: Dimension, peak: float, margin: float) -> float | None:
    floor = floor_of(dimension, peak, margin)
    if dimension.current is not None and floor >= dimension.current:
        return None
    return floor


def _result(
    model: _Model,
    solution: Any,
    incident: TreeTrace,
    peaks: dict[tuple[str, str], float],
    floors: Sequence[float | None],
) -> Suggestion:
    halted = next((p for p in incident.dispatches if p.halted), None)
    base = Suggestion(incident=incident.root_workflow_id, halted_at=halted)
    if solution is None:
        return base.model_copy(update={"reason": _no_separation(incident, halted)})
    index = solution.eval(model.stop).as_long()
    stop = next(p for p in incident.dispatches if p.index == index)
    changes = [
        LimitChange(
            field=dim.field,
            path=dim.path,
            agent=dim.agent,
            metric=dim.metric,
            current=dim.current,
            suggested=model.smt.number(solution.eval(limit, model_completion=True)),
            normal_peak=peaks[(dim.agent, dim.metric)],
            also=dim.also,
        )
        for dim, limit, changed in zip(model.dimensions, model.limits, model.changed, strict=True)
        if model.z3.is_true(solution.eval(changed, model_completion=True))
    ]
    if not changes:
        reason = (
            f"the current policy already halts the incident at dispatch {stop.index} "
            f"({stop.label} of {stop.agent}/{stop.workflow_id}); no limit above the normal "
            "runs' margin halts it earlier"
        )
        return base.model_copy(update={"reason": reason})
    return base.model_copy(update={"changes": changes, "stop": stop, "saved": _saved(stop)})


def _saved(stop: DispatchPoint) -> dict[str, float]:
    return {metric: stop.saved.get(metric, 0.0) for metric in _SAVED}


def _no_separation(incident: TreeTrace, halted: DispatchPoint | None) -> str:
    if not incident.dispatches:
        return "the incident made no dispatch: nothing to halt"
    return (
        f"no limit separates the incident from the normal runs: on every modelled dimension "
        f"({', '.join(METRICS)}) {incident.root_workflow_id} stays within the normal runs "
        "plus the margin"
        + ("" if halted is None else f", and nothing halts it before dispatch {halted.index}")
    )


def _candidates(model: _Model, peaks: dict[tuple[str, str], float]) -> list[Candidate]:
    """Each dimension alone: its suggested value and the first incident dispatch it halts."""
    return [
        Candidate(
            field=dim.field,
            current=dim.current,
            suggested=floor,
            normal_peak=peaks[(dim.agent, dim.metric)],
            stops_at=None if floor is None else _first_over(model.points, dim, floor),
        )
        for dim, floor in zip(model.dimensions, model.floors, strict=True)
    ]


def _first_over(points: Sequence[DispatchPoint], dim: Dimension, limit: float) -> int | None:
    for point in points:
        need = point.need.get(dim.metric)
        if point.agent == dim.agent and need is not None and need > limit:
            return point.index
    return None
