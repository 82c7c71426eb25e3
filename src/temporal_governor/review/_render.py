"""Rendering of an incident report: a rich terminal view and a self-contained HTML page.

Both renderers take an :class:`~temporal_governor.report.IncidentReport` (as rebuilt by
``temporal-governor replay``) and show the same things: the run tree with each subtree's
spend, every breach with the limit, scope, observed spend against the ceiling, what consumed
the budget and what was decided just before, spend per agent, tool, tenant and depth, a
timeline of decisions, and any run whose replay failed (non-determinism).

The HTML page is rendered from the package's jinja2 templates (``templates/report.html``,
``chart.svg``, ``report.css``), which escape every value they insert. It has no scripts,
fonts, images or links of its own; its chart is inline SVG. The same report always renders
to the same bytes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import get_args

import jinja2
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..core.accounting import RESOURCES, EventKind
from ..core.decisions import DecisionRecord
from ..policy import PER_TASK_LIMITS
from ._report import CausalChain, IncidentReport, RunNode, SpendRow, SpendSeries

_TIMELINE_ALL = 60
"""Timelines up to this many decisions are shown whole."""
_TIMELINE_OTHERS = 30
"""Beyond that: every governance decision, and this many of the latest others."""
_GOVERNANCE_KINDS = frozenset(get_args(EventKind)) - {"reserve", "commit", "release", "wait"}
"""Decision kinds shown in full in reports (the dispatch bookkeeping ones are summarised)."""
_SHORT_ID = 24
"""Workflow ids longer than this are shortened in tables."""

_RESOURCE_LABELS = {
    "tokens": "tokens",
    "cost_usd": "cost",
    "tool_calls": "tool calls",
    "subtasks": "subtasks",
    "child_workflows": "child workflows",
    "wall_time_s": "wall time",
    "depth": "depth",
}

_KIND_STYLES = {
    "reserve": "cyan",
    "commit": "green",
    "release": "dim",
    "warn": "yellow",
    "alert": "magenta",
    "overage": "red",
    "refuse": "bold red",
    "breach": "bold white on red",
    "control": "bold blue",
    "control_rejected": "bold magenta",
    "loop": "bold red",
    "anomaly": "bold yellow",
    "throttle": "yellow",
    "degrade": "yellow",
}

_STATUS_STYLES = {
    "completed": "green",
    "breached": "bold red",
    "failed": "red",
    "running": "cyan",
    "cancelled": "yellow",
    "terminated": "yellow",
    "timed_out": "yellow",
    "continued_as_new": "blue",
}


# -- formatting ---------------------------------------------------------------------------


def _num(value: float) -> str:
    """A number with thousands separators; decimals only when it has some."""
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.4f}".rstrip("0").rstrip(".")


def _cost(value: float) -> str:
    """US dollars as ``$1,234.5678``."""
    return f"-${-value:,.4f}" if value < 0 else f"${value:,.4f}"


def _quantity(resource: str, value: float) -> str:
    """A value in its resource's unit."""
    if resource == "cost_usd":
        return _cost(value)
    if resource == "wall_time_s":
        return f"{_num(value)} s"
    return _num(value)


def _amounts(amounts: dict[str, float]) -> str:
    """Resource amounts, known resources first, e.g. ``1,200 tokens, $0.0120``."""
    order = [r for r in RESOURCES if r in amounts] + sorted(
        r for r in amounts if r not in RESOURCES
    )
    parts = []
    for resource in order:
        value = amounts[resource]
        if resource == "cost_usd":
            parts.append(_cost(value))
        else:
            parts.append(_counted(value, _RESOURCE_LABELS.get(resource, resource)))
    return ", ".join(parts)


def _counted(value: float, label: str) -> str:
    """``1 tool call``, ``2 tool calls``."""
    return f"{_num(value)} {label[:-1] if value == 1 and label.endswith('s') else label}"


def _spend(spend: dict[str, float]) -> str:
    """Tokens, cost and tool calls of a spend mapping."""
    return (
        f"{_counted(spend.get('tokens', 0.0), 'tokens')} · {_cost(spend.get('cost_usd', 0.0))} · "
        f"{_counted(spend.get('tool_calls', 0.0), 'tool calls')}"
    )


def _clock(time: datetime) -> str:
    """Workflow time of day as ``HH:MM:SS.mmm``."""
    return f"{time:%H:%M:%S}.{time.microsecond // 1000:03d}"


def _stamp(time: datetime) -> str:
    """Workflow date and time as ``YYYY-MM-DD HH:MM:SS.mmm TZ``."""
    zone = f" {time:%Z}" if time.tzinfo is not None else ""
    return f"{time:%Y-%m-%d} {_clock(time)}{zone}"


def _short(workflow_id: str) -> str:
    """A workflow id short enough for a table column."""
    if len(workflow_id) <= _SHORT_ID:
        return workflow_id
    head = (_SHORT_ID - 1) // 2
    return f"{workflow_id[:head]}…{workflow_id[-(_SHORT_ID - 1 - head) :]}"


def _run_label(agent: str, workflow_id: str) -> str:
    """``agent/short-workflow-id``."""
    return f"{agent}/{_short(workflow_id)}"


def _limit_scope(decision: DecisionRecord) -> str:
    """``limit @ scope`` of a governance decision, empty for the others."""
    if not decision.limit:
        return decision.scope
    return f"{decision.limit} @ {decision.scope}" if decision.scope else decision.limit


def _plural(count: int, word: str, plural: str = "") -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {plural or word + 's'}"


class _Units:
    """Knows which resource a limit governs, so observed and ceiling print in its unit."""

    def __init__(self, report: IncidentReport) -> None:
        self._by_scope: dict[tuple[str, str], str] = {}
        for chain in report.breaches:
            if chain.breach.resource:
                self._by_scope[(chain.breach.limit, chain.breach.scope)] = chain.breach.resource
        series = report.series
        if series is not None and series.limit:
            self._by_scope.setdefault((series.limit, series.scope), series.resource)

    def resource(self, limit: str, scope: str) -> str:
        """The resource of a limit, or ``""`` when it cannot be told."""
        known = self._by_scope.get((limit, scope)) or PER_TASK_LIMITS.get(limit)
        if known:
            return known
        return "cost_usd" if "cost" in limit else ""

    def values(self, decision: DecisionRecord) -> str:
        """Amounts of a dispatch decision, observed / ceiling of a governance one."""
        if decision.kind in _GOVERNANCE_KINDS or decision.limit:
            resource = self.resource(decision.limit, decision.scope)
            return (
                f"{_quantity(resource, decision.observed)} / "
                f"{_quantity(resource, decision.ceiling)}"
            )
        return _amounts(decision.amounts)


def _timeline(decisions: Sequence[DecisionRecord]) -> tuple[list[DecisionRecord], int]:
    """The decisions worth a timeline row, in order, and how many were left out."""
    if len(decisions) <= _TIMELINE_ALL:
        return list(decisions), 0
    others = [i for i, d in enumerate(decisions) if d.kind not in _GOVERNANCE_KINDS]
    keep = set(others[-_TIMELINE_OTHERS:])
    shown = [d for i, d in enumerate(decisions) if d.kind in _GOVERNANCE_KINDS or i in keep]
    return shown, len(decisions) - len(shown)


def _children(runs: Sequence[RunNode]) -> tuple[list[RunNode], dict[int, list[RunNode]]]:
    """The tree's roots, and each run's children keyed by the run's position in ``runs``."""
    by_run = {(run.workflow_id, run.run_id): i for i, run in enumerate(runs)}
    latest = {run.workflow_id: i for i, run in enumerate(runs)}
    roots: list[RunNode] = []
    children: dict[int, list[RunNode]] = {}
    for i, run in enumerate(runs):
        parent: int | None = None
        if run.parent_workflow_id is not None:
            parent = by_run.get((run.parent_workflow_id, run.parent_run_id or ""))
            if parent is None:
                parent = latest.get(run.parent_workflow_id)
        if parent is None or parent == i:
            roots.append(run)
        else:
            children.setdefault(parent, []).append(run)
    return roots, children


def _chain_text(chain: CausalChain) -> str:
    """Where the breach happened, root first: ``planner/wf-1 → executor/wf-2``."""
    links = [f"{link.agent}/{link.workflow_id}" for link in chain.breach.chain]
    if not links:
        links = [f"{chain.decision.agent}/{chain.decision.workflow_id}"]
    return " → ".join(links)


def _breach_facts(chain: CausalChain, units: _Units) -> list[tuple[str, str]]:
    """Label / value pairs describing one breach."""
    breach = chain.breach
    resource = breach.resource or units.resource(breach.limit, breach.scope)
    decision = chain.decision
    facts = [
        ("limit", breach.limit),
        ("resource", breach.resource or "unknown"),
        ("scope", breach.scope),
        ("observed", _quantity(resource, breach.observed)),
        ("ceiling", _quantity(resource, breach.ceiling)),
        ("committed", _quantity(resource, breach.committed)),
        ("overage", _quantity(resource, breach.overage)),
    ]
    if breach.dispatch:
        facts.append(("refused", breach.dispatch))
    facts += [
        ("tenant", breach.tenant),
        ("chain", _chain_text(chain)),
        (
            "when",
            f"{_stamp(decision.time)} (event {decision.event_id}, "
            f"{decision.agent}/{decision.workflow_id}, run {decision.run_id})",
        ),
    ]
    if breach.spent:
        facts.append(("run spent", _amounts(breach.spent)))
    return facts


# -- terminal -----------------------------------------------------------------------------


def render_terminal(report: IncidentReport, console: Console | None = None) -> None:
    """Print an incident report to a terminal.

    Prints a header, any replay failures, the run tree with each subtree's spend, a panel
    per breach (limit, observed against ceiling, consumers, last decisions), spend tables per
    agent, tool, tenant and depth, and a timeline of decisions.

    Args:
        report: The report to show.
        console: Where to print; a new stdout console when ``None``.

    """
    out = console if console is not None else Console()
    units = _Units(report)
    out.print(_header(report))
    if report.nondeterminism:
        out.print(_nondeterminism_panel(report.nondeterminism))
    out.print(Rule("Run tree", align="left"))
    out.print(_run_tree(report.runs))
    for number, chain in enumerate(report.breaches, start=1):
        out.print(_breach_panel(number, chain, units))
    out.print(Rule("Spend", align="left"))
    for title, rows in _spend_groups(report):
        out.print(_spend_table(title, rows))
    out.print(Rule("Timeline", align="left"))
    out.print(_timeline_table(report.decisions, units))


def _header(report: IncidentReport) -> Panel:
    title = Text.assemble(
        ("Incident report  ", "bold"),
        (report.root_workflow_id, "bold cyan"),
        ("  run ", "dim"),
        (report.root_run_id, "cyan"),
    )
    facts = Text.assemble(
        ("source ", "dim"),
        report.source,
        ("  ·  ", "dim"),
        _plural(len(report.runs), "run"),
        ("  ·  ", "dim"),
        _plural(len(report.decisions), "decision"),
        ("  ·  ", "dim"),
        (
            _plural(len(report.breaches), "breach", "breaches"),
            "bold red" if report.breaches else "green",
        ),
    )
    if report.decisions:
        facts.append("\n")
        facts.append("workflow time ", style="dim")
        facts.append(f"{_stamp(report.decisions[0].time)} → {_stamp(report.decisions[-1].time)}")
    return Panel(Group(title, facts), border_style="red" if report.breaches else "blue")


def _nondeterminism_panel(lines: Sequence[str]) -> Panel:
    body = Text()
    body.append(
        "Replay failed for these runs (the workflow code changed since they ran); "
        "their decisions may be incomplete:\n",
        style="red",
    )
    for line in lines:
        body.append(f"• {line}\n", style="bold red")
    body.rstrip()
    return Panel(body, title="Non-determinism", title_align="left", border_style="red")


def _tree_label(run: RunNode) -> Text:
    breached = run.status == "breached"
    label = Text(style="red" if breached else "")
    label.append(run.agent, style="bold red" if breached else "bold")
    label.append(" ")
    label.append(run.workflow_id, style="red" if breached else "cyan")
    label.append("  ")
    label.append(run.status, style=_STATUS_STYLES.get(run.status, "yellow"))
    label.append("  ")
    label.append(_spend(run.spend), style="red" if breached else "")
    if run.replay_error:
        label.append("  replay failed", style="bold red")
    return label


def _run_tree(runs: Sequence[RunNode]) -> RenderableType:
    if not runs:
        return Text("no runs", style="dim")
    roots, children = _children(runs)
    index = {id(run): i for i, run in enumerate(runs)}
    forest: list[Tree] = []
    for root in roots:
        tree = Tree(_tree_label(root), guide_style="dim")
        stack: list[tuple[Tree, RunNode]] = [(tree, root)]
        seen = {index[id(root)]}
        while stack:
            node, run = stack.pop()
            for child in children.get(index[id(run)], []):
                position = index[id(child)]
                if position in seen:
                    continue
                seen.add(position)
                stack.append((node.add(_tree_label(child)), child))
        forest.append(tree)
    return Group(*forest)


def _decision_table(
    decisions: Sequence[DecisionRecord], units: _Units, *, title: str = "", event_ids: bool = False
) -> Table:
    table = Table(title=title or None, title_justify="left", expand=False, header_style="bold")
    if event_ids:
        table.add_column("event", justify="right", no_wrap=True)
    table.add_column("time", no_wrap=True)
    table.add_column("run", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("target", overflow="fold")
    if event_ids:
        table.add_column("limit @ scope", overflow="fold")
    table.add_column("amounts or observed / ceiling" if event_ids else "amounts", overflow="fold")
    for decision in decisions:
        style = _KIND_STYLES.get(decision.kind, "")
        row: list[RenderableType] = []
        if event_ids:
            row.append(Text(str(decision.event_id)))
        row += [
            Text(_clock(decision.time)),
            Text(_run_label(decision.agent, decision.workflow_id)),
            Text(decision.kind, style=style),
            Text(decision.target),
        ]
        if event_ids:
            row.append(Text(_limit_scope(decision)))
        row.append(Text(units.values(decision)))
        table.add_row(*row)
    return table


def _rows_table(title: str, group: str, rows: Sequence[SpendRow]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column(group, overflow="fold")
    table.add_column("dispatches", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("cost", justify="right")
    table.add_column("tool calls", justify="right")
    for row in rows:
        table.add_row(
            Text(row.group),
            Text(_num(row.dispatches)),
            Text(_num(row.tokens)),
            Text(_cost(row.cost_usd)),
            Text(_num(row.tool_calls)),
        )
    return table


def _breach_panel(number: int, chain: CausalChain, units: _Units) -> Panel:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    for label, value in _breach_facts(chain, units):
        style = "bold red" if label in ("observed", "ceiling") else ""
        facts.add_row(Text(label), Text(value, style=style))
    parts: list[RenderableType] = [Text(chain.breach.message(), style="bold red"), Text(), facts]
    if chain.consumers:
        parts.append(Text())
        parts.append(_rows_table("What consumed the budget", "agent / tool", chain.consumers))
    if chain.last_decisions:
        parts.append(Text())
        parts.append(
            _decision_table(chain.last_decisions, units, title="Last decisions before the breach")
        )
    return Panel(
        Group(*parts),
        title=Text(f"Breach {number}: {chain.breach.limit}", style="bold red"),
        title_align="left",
        border_style="red",
    )


def _spend_groups(report: IncidentReport) -> list[tuple[tuple[str, str], list[SpendRow]]]:
    return [
        (("Spend per agent", "agent"), report.spend_by_agent),
        (("Spend per tool", "tool"), report.spend_by_tool),
        (("Spend per tenant", "tenant"), report.spend_by_tenant),
        (("Spend per depth", "depth"), report.spend_by_depth),
    ]


def _spend_table(title: tuple[str, str], rows: list[SpendRow]) -> RenderableType:
    if not rows:
        return Text(f"{title[0]}: no spend recorded", style="dim")
    return _rows_table(title[0], title[1], rows)


def _timeline_table(decisions: Sequence[DecisionRecord], units: _Units) -> RenderableType:
    if not decisions:
        return Text("no decisions recorded", style="dim")
    shown, omitted = _timeline(decisions)
    table = _decision_table(shown, units, event_ids=True)
    if not omitted:
        return table
    note = Text(
        f"{_plural(omitted, 'routine decision')} omitted; showing every warn, alert, overage, "
        f"refuse and breach and the last {_TIMELINE_OTHERS} others.",
        style="dim",
    )
    return Group(note, table)


# -- HTML ---------------------------------------------------------------------------------
#
# The page is the template ``templates/report.html`` (with ``chart.svg`` and ``report.css``);
# the functions below only gather what it shows, as text already formatted. The templates
# escape every value they insert (autoescape), so report text never becomes markup.

_TEMPLATE = "report.html"


@functools.cache
def _templates() -> jinja2.Environment:
    """The environment of the report's templates (they ship in the package)."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader(__name__.rpartition(".")[0], "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    environment.filters["coord"] = _f
    return environment


@dataclass(frozen=True)
class _Cell:
    """A table cell: its text and CSS classes."""

    text: str
    css: str = ""


@dataclass(frozen=True)
class _Grid:
    """A table: header cells and rows of cells."""

    head: list[_Cell]
    rows: list[list[_Cell]]


@dataclass(frozen=True)
class _TreeItem:
    """A run of the tree, with the runs it started."""

    run: RunNode
    spend: str
    children: list[_TreeItem]


@dataclass(frozen=True)
class _BreachView:
    """A breach's section."""

    number: int
    limit: str
    message: str
    facts: list[tuple[str, str]]
    consumers: _Grid | None
    last_decisions: _Grid | None


@dataclass(frozen=True)
class _Tick:
    """An axis tick: where it is (an SVG coordinate) and its label."""

    at: float
    label: str


@dataclass(frozen=True)
class _ChartPoint:
    """A point of the spend line, with its tooltip."""

    x: float
    y: float
    tip: str


@dataclass(frozen=True)
class _Mark:
    """The ceiling (``at`` is its y) or the first breach (``at`` is its x), with its text."""

    at: float
    text: str


@dataclass(frozen=True)
class _Chart:
    """The cumulative spend chart, in SVG coordinates."""

    summary: str
    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    y_ticks: list[_Tick]
    x_ticks: list[_Tick]
    x_title: str
    y_title: str
    ceiling: _Mark | None
    breach: _Mark | None
    breach_label_left: bool
    points: list[_ChartPoint]


def render_html(report: IncidentReport) -> str:
    """Render an incident report as one self-contained HTML5 document.

    The page holds a summary, the run tree, a section per breach, a chart of cumulative
    spend against the ceiling (inline SVG), the timeline of decisions and spend tables. It
    loads nothing from anywhere: styles are inline and there are no scripts, fonts, images
    or links. Every text taken from the report is escaped, and the same report always gives
    the same document.

    Args:
        report: The report to render.

    Returns:
        The HTML document.

    """
    units = _Units(report)
    shown, omitted = _timeline(report.decisions)
    series = report.series
    template = _templates().get_template(_TEMPLATE)
    return template.render(
        title=f"Incident report: {report.root_workflow_id}",
        summary_line=_summary_line(report),
        summary=_summary_pairs(report),
        nondeterminism=report.nondeterminism,
        tree=_tree_items(report.runs),
        breaches=[
            _breach_view(number, chain, units)
            for number, chain in enumerate(report.breaches, start=1)
        ],
        chart=(
            _chart(series, report.breaches[0] if report.breaches else None)
            if series is not None and series.points
            else None
        ),
        chart_note=_no_chart_note(series),
        timeline=_decision_grid(shown, units, event_ids=True) if shown else None,
        omitted=_plural(omitted, "routine decision") if omitted else "",
        timeline_others=_TIMELINE_OTHERS,
        spend=[
            (heading, _spend_grid(group, rows) if rows else None)
            for (heading, group), rows in _spend_groups(report)
        ],
    )


def _summary_line(report: IncidentReport) -> str:
    return (
        f"{_plural(len(report.runs), 'run')} · {_plural(len(report.decisions), 'decision')} · "
        f"{_plural(len(report.breaches), 'breach', 'breaches')}"
    )


def _summary_pairs(report: IncidentReport) -> list[tuple[str, str]]:
    pairs = [
        ("root workflow", report.root_workflow_id),
        ("root run", report.root_run_id),
        ("source", report.source),
        ("runs", _num(len(report.runs))),
        ("decisions", _num(len(report.decisions))),
        ("breaches", _num(len(report.breaches))),
    ]
    total: dict[str, float] = {}
    for row in report.spend_by_agent:
        total["tokens"] = total.get("tokens", 0.0) + row.tokens
        total["cost_usd"] = total.get("cost_usd", 0.0) + row.cost_usd
        total["tool_calls"] = total.get("tool_calls", 0.0) + row.tool_calls
    pairs.append(("total spend", _spend(total)))
    if report.decisions:
        pairs.append(
            (
                "workflow time",
                f"{_stamp(report.decisions[0].time)} → {_stamp(report.decisions[-1].time)}",
            )
        )
    for chain in report.breaches:
        pairs.append(("breach", chain.breach.message()))
    return pairs


def _tree_items(runs: Sequence[RunNode]) -> list[_TreeItem]:
    """The run tree, each run once (a run already shown is not shown again)."""
    roots, children = _children(runs)
    index = {id(run): i for i, run in enumerate(runs)}
    seen: set[int] = set()

    def item(run: RunNode) -> _TreeItem:
        seen.add(index[id(run)])
        kids = [c for c in children.get(index[id(run)], []) if index[id(c)] not in seen]
        return _TreeItem(run=run, spend=_spend(run.spend), children=[item(kid) for kid in kids])

    return [item(root) for root in roots]


def _grid(
    head: Sequence[str], rows: Iterable[Sequence[str | _Cell]], *, numeric: Iterable[int] = ()
) -> _Grid:
    """A table whose ``numeric`` columns are right-aligned."""
    right = set(numeric)

    def cell(i: int, value: str | _Cell) -> _Cell:
        text, extra = (value, "") if isinstance(value, str) else (value.text, value.css)
        return _Cell(text, " ".join(c for c in ("n" if i in right else "", extra) if c))

    return _Grid(
        head=[cell(i, title) for i, title in enumerate(head)],
        rows=[[cell(i, value) for i, value in enumerate(row)] for row in rows],
    )


def _spend_grid(group: str, rows: Sequence[SpendRow]) -> _Grid:
    return _grid(
        [group, "dispatches", "tokens", "cost", "tool calls"],
        [
            [
                row.group,
                _num(row.dispatches),
                _num(row.tokens),
                _cost(row.cost_usd),
                _num(row.tool_calls),
            ]
            for row in rows
        ],
        numeric=(1, 2, 3, 4),
    )


def _decision_grid(
    decisions: Sequence[DecisionRecord], units: _Units, *, event_ids: bool = False
) -> _Grid:
    head = ["time", "run", "kind", "target"]
    if event_ids:
        head = ["event", *head, "limit @ scope", "amounts or observed / ceiling"]
    else:
        head.append("amounts")
    rows: list[list[str | _Cell]] = []
    for d in decisions:
        row: list[str | _Cell] = [
            _Cell(_clock(d.time), "mono"),
            _Cell(_run_label(d.agent, d.workflow_id), "mono"),
            _Cell(d.kind, f"k-{d.kind}"),
            d.target,
        ]
        if event_ids:
            row = [str(d.event_id), *row, _limit_scope(d)]
        row.append(units.values(d))
        rows.append(row)
    numeric = (0, len(head) - 1) if event_ids else (len(head) - 1,)
    return _grid(head, rows, numeric=numeric)


def _breach_view(number: int, chain: CausalChain, units: _Units) -> _BreachView:
    return _BreachView(
        number=number,
        limit=chain.breach.limit,
        message=chain.breach.message(),
        facts=_breach_facts(chain, units),
        consumers=_spend_grid("agent / tool", chain.consumers) if chain.consumers else None,
        last_decisions=(
            _decision_grid(chain.last_decisions, units) if chain.last_decisions else None
        ),
    )


# -- the chart ----------------------------------------------------------------------------

_W, _H = 900.0, 360.0
_LEFT, _RIGHT, _TOP, _BOTTOM = 84.0, 24.0, 28.0, 52.0


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if not math.isfinite(top) or top <= 0:
        top = 1.0
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw - 1e-12)
    steps = max(1, math.ceil(top / step - 1e-9))
    return [i * step for i in range(steps + 1)]


def _time_unit(span: float) -> tuple[str, float]:
    """A unit for a span of seconds, and how many of it make a second."""
    if span < 2:
        return "ms", 1000.0
    if span < 180:
        return "s", 1.0
    if span < 7200:
        return "min", 1 / 60
    return "h", 1 / 3600


def _f(value: float) -> str:
    """An SVG coordinate."""
    return f"{value:.1f}"


def _no_chart_note(series: SpendSeries | None) -> str:
    """What the chart section says when there is nothing to draw."""
    note = "No spend recorded."
    if series is not None and series.ceiling is not None:
        note += (
            f" Ceiling {series.limit or series.resource}: "
            f"{_quantity(series.resource, series.ceiling)}."
        )
    return note


def _chart(series: SpendSeries, breach: CausalChain | None) -> _Chart:
    resource = series.resource
    start = series.points[0].time
    times = [(p.time - start).total_seconds() for p in series.points]
    breach_at = None
    if breach is not None:
        breach_at = max(0.0, (breach.decision.time - start).total_seconds())
    span = max([*times, breach_at or 0.0])
    if span <= 0:
        span = 1.0
    unit, per_second = _time_unit(span)
    x_top = span * 1.04
    x_ticks = [v for v in _nice_ticks(span * per_second) if v <= x_top * per_second]
    y_data = max([p.cumulative for p in series.points] + [series.ceiling or 0.0])
    y_ticks = _nice_ticks(y_data * 1.05 if y_data > 0 else 1.0)
    y_top = y_ticks[-1]
    plot_w = _W - _LEFT - _RIGHT
    plot_h = _H - _TOP - _BOTTOM
    bottom = _TOP + plot_h

    def x(seconds: float) -> float:
        return _LEFT + plot_w * seconds / x_top

    def y(value: float) -> float:
        return bottom - plot_h * value / y_top

    label = _RESOURCE_LABELS.get(resource, resource)
    summary = f"Cumulative {label} over workflow time"
    if series.ceiling is not None:
        summary += f" against {series.limit or 'the ceiling'} {_quantity(resource, series.ceiling)}"
    if series.scope:
        summary += f" ({series.scope})"
    ceiling = None
    if series.ceiling is not None:
        ceiling = _Mark(
            at=y(series.ceiling),
            text=f"{series.limit or 'ceiling'} = {_quantity(resource, series.ceiling)}",
        )
    mark = None
    if breach is not None and breach_at is not None:
        mark = _Mark(
            at=x(breach_at),
            text=f"breach at {_clock(breach.decision.time)}: {breach.breach.message()}",
        )
    points = []
    for t, point in zip(times, series.points, strict=True):
        where = f"{point.workflow_id} {point.target}".strip()
        tip = (
            f"+{_num(round(t, 3))} s ({_clock(point.time)}) {where}: "
            f"cumulative {_quantity(resource, point.cumulative)}"
            + ("" if resource == "cost_usd" else f" {label}")
        )
        points.append(_ChartPoint(x=x(t), y=y(point.cumulative), tip=tip))
    return _Chart(
        summary=summary,
        width=_W,
        height=_H,
        left=_LEFT,
        right=_W - _RIGHT,
        top=_TOP,
        bottom=bottom,
        y_ticks=[_Tick(y(value), _quantity(resource, value)) for value in y_ticks],
        x_ticks=[_Tick(x(value / per_second), _num(round(value, 6))) for value in x_ticks],
        x_title=f"workflow time since first commit ({unit})",
        y_title=f"cumulative {label}",
        ceiling=ceiling,
        breach=mark,
        breach_label_left=mark is not None and mark.at < _LEFT + plot_w / 2,
        points=points,
    )


__all__ = ["render_html", "render_terminal"]
