"""Rendering of an incident report: a rich terminal view and a self-contained HTML page.

Both renderers take an :class:`~temporal_governor.report.IncidentReport` (as rebuilt by
``temporal-governor replay``) and show the same things: the run tree with each subtree's
spend, every breach with the limit, scope, observed spend against the ceiling, what consumed
the budget and what was decided just before, spend per agent, tool, tenant and depth, a
timeline of decisions, and any run whose replay failed (non-determinism).

The HTML page has no scripts, fonts, images or links of its own; its chart is inline SVG. The
same report always renders to the same bytes.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import get_args

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

_CSS = """
:root { --fg: #1d232a; --muted: #65707c; --line: #d8dee4; --bad: #c62828; --bad-bg: #fdecea;
  --ok: #2e7d32; --warn: #b26a00; --accent: #1565c0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  margin: 0 auto; padding: 24px 32px 48px; max-width: 1200px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 10px; border-bottom: 1px solid var(--line);
  padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 8px; color: var(--bad); }
h4 { font-size: 13px; margin: 16px 0 6px; }
code, .mono, td.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12.5px; }
.muted { color: var(--muted); }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv th { background: none; border: none; padding: 2px 12px 2px 0; color: var(--muted);
  font-weight: normal; }
table.kv td { border: none; padding: 2px 0; }
.spend-tables { display: flex; flex-wrap: wrap; gap: 24px; }
.spend-tables h3 { color: var(--fg); }
ul.tree, ul.tree ul { list-style: none; margin: 0; padding-left: 22px; }
ul.tree { padding-left: 0; }
ul.tree li { position: relative; padding: 2px 0; }
ul.tree ul li::before { content: ""; position: absolute; left: -14px; top: 0; height: 13px;
  width: 10px; border-left: 1px solid var(--line); border-bottom: 1px solid var(--line); }
.agent { font-weight: 600; }
.status { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px;
  background: #eef1f4; }
.status-completed { color: var(--ok); }
.status-failed, .status-breached { color: #fff; background: var(--bad); }
.status-running { color: var(--accent); }
li.breached > .run, tr.breached td { color: var(--bad); }
.breach { border: 2px solid var(--bad); border-radius: 6px; padding: 12px 16px; margin: 12px 0;
  background: #fffafa; }
.breach .msg { font-weight: 600; color: var(--bad); margin: 0 0 8px; }
.alarm { border: 2px solid var(--bad); background: var(--bad-bg); color: var(--bad);
  padding: 10px 16px; border-radius: 6px; }
.k-reserve { color: #00838f; } .k-commit { color: var(--ok); } .k-release { color: var(--muted); }
.k-warn { color: var(--warn); font-weight: 600; } .k-alert { color: #8e24aa; font-weight: 600; }
.k-overage { color: var(--bad); font-weight: 600; }
.k-refuse { color: var(--bad); font-weight: 700; }
.k-breach { color: #fff; background: var(--bad); font-weight: 700; }
.k-control { color: #1565c0; font-weight: 600; }
.k-control_rejected { color: #8e24aa; font-weight: 700; }
.k-loop { color: var(--bad); font-weight: 700; }
.k-anomaly { color: var(--warn); font-weight: 700; }
.k-throttle, .k-degrade { color: var(--warn); }
svg.chart { width: 100%; max-width: 900px; height: auto; display: block; }
svg.chart text { font: 11px system-ui, sans-serif; fill: var(--muted); }
svg.chart .axis { stroke: #8a949e; stroke-width: 1; }
svg.chart .grid { stroke: #edf0f2; stroke-width: 1; }
svg.chart .spend { fill: none; stroke: var(--accent); stroke-width: 2; }
svg.chart .point { fill: var(--accent); }
svg.chart .ceiling { stroke: var(--bad); stroke-width: 1.5; stroke-dasharray: 6 4; }
svg.chart text.ceiling-label, svg.chart text.breach-label { fill: var(--bad); font-weight: 600; }
svg.chart .breach-line { stroke: var(--bad); stroke-width: 1.5; stroke-dasharray: 2 3; }
svg.chart .breach-mark { fill: var(--bad); }
svg.chart text.axis-title { fill: var(--fg); }
"""


def _e(text: object) -> str:
    """Escape text for HTML content and attribute values."""
    return html.escape(str(text), quote=True)


_Cell = str | tuple[str, str]
"""A table cell: its text, or its text and a CSS class."""


def _html_table(
    head: Sequence[str],
    rows: Iterable[Sequence[_Cell]],
    *,
    numeric: Iterable[int] = (),
    row_classes: Sequence[str] | None = None,
    css: str = "",
) -> str:
    right = set(numeric)
    out = [f'<table class="{_e(css)}">' if css else "<table>", "<thead><tr>"]
    for i, title in enumerate(head):
        out.append(f'<th class="n">{_e(title)}</th>' if i in right else f"<th>{_e(title)}</th>")
    out.append("</tr></thead><tbody>")
    for r, row in enumerate(rows):
        cls = row_classes[r] if row_classes is not None and r < len(row_classes) else ""
        out.append(f'<tr class="{_e(cls)}">' if cls else "<tr>")
        for i, cell in enumerate(row):
            text, extra = (cell, "") if isinstance(cell, str) else cell
            classes = " ".join(c for c in ("n" if i in right else "", extra) if c)
            attr = f' class="{_e(classes)}"' if classes else ""
            out.append(f"<td{attr}>{_e(text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _html_kv(pairs: Iterable[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


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
    title = f"Incident report: {report.root_workflow_id}"
    body = [
        "<header>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">{_e(_summary_line(report))}</p>',
        "</header>",
        _html_summary(report),
    ]
    if report.nondeterminism:
        body.append(_html_nondeterminism(report.nondeterminism))
    body += [
        '<section id="tree"><h2>Run tree</h2>',
        _html_tree(report.runs),
        "</section>",
    ]
    if report.breaches:
        body.append(f'<section id="breaches"><h2>Breaches ({len(report.breaches)})</h2>')
        for number, chain in enumerate(report.breaches, start=1):
            body.append(_html_breach(number, chain, units))
        body.append("</section>")
    body += [
        '<section id="chart"><h2>Cumulative spend</h2>',
        _html_chart(report),
        "</section>",
        '<section id="timeline"><h2>Timeline</h2>',
        _html_timeline(report.decisions, units),
        "</section>",
        '<section id="spend"><h2>Spend</h2><div class="spend-tables">',
    ]
    for (heading, group), rows in _spend_groups(report):
        body.append(f"<div><h3>{_e(heading)}</h3>")
        body.append(_html_rows(group, rows) if rows else '<p class="muted">no spend recorded</p>')
        body.append("</div>")
    body.append("</div></section>")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def _summary_line(report: IncidentReport) -> str:
    return (
        f"{_plural(len(report.runs), 'run')} · {_plural(len(report.decisions), 'decision')} · "
        f"{_plural(len(report.breaches), 'breach', 'breaches')}"
    )


def _html_summary(report: IncidentReport) -> str:
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
    return f'<section id="summary"><h2>Summary</h2>{_html_kv(pairs)}</section>'


def _html_nondeterminism(lines: Sequence[str]) -> str:
    items = "".join(f"<li><code>{_e(line)}</code></li>" for line in lines)
    return (
        '<section id="nondeterminism" class="alarm"><h2>Non-determinism</h2>'
        "<p>Replay failed for these runs (the workflow code changed since they ran); "
        f"their decisions may be incomplete:</p><ul>{items}</ul></section>"
    )


def _html_tree(runs: Sequence[RunNode]) -> str:
    if not runs:
        return '<p class="muted">no runs</p>'
    roots, children = _children(runs)
    index = {id(run): i for i, run in enumerate(runs)}
    seen: set[int] = set()

    def item(run: RunNode) -> str:
        seen.add(index[id(run)])
        cls = ' class="breached"' if run.status == "breached" else ""
        label = (
            f'<span class="run"><span class="agent">{_e(run.agent)}</span> '
            f"<code>{_e(run.workflow_id)}</code> "
            f'<span class="status status-{_e(run.status)}">{_e(run.status)}</span> '
            f'<span class="mono">{_e(_spend(run.spend))}</span>'
        )
        if run.replay_error:
            label += ' <span class="status status-failed">replay failed</span>'
        label += "</span>"
        kids = [c for c in children.get(index[id(run)], []) if index[id(c)] not in seen]
        nested = "<ul>" + "".join(item(kid) for kid in kids) + "</ul>" if kids else ""
        return f"<li{cls}>{label}{nested}</li>"

    return '<ul class="tree">' + "".join(item(root) for root in roots) + "</ul>"


def _html_rows(group: str, rows: Sequence[SpendRow]) -> str:
    return _html_table(
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


def _html_decisions(
    decisions: Sequence[DecisionRecord], units: _Units, *, event_ids: bool = False
) -> str:
    head = ["time", "run", "kind", "target"]
    if event_ids:
        head = ["event", *head, "limit @ scope", "amounts or observed / ceiling"]
    else:
        head.append("amounts")
    rows: list[list[_Cell]] = []
    for d in decisions:
        row: list[_Cell] = [
            (_clock(d.time), "mono"),
            (_run_label(d.agent, d.workflow_id), "mono"),
            (d.kind, f"k-{d.kind}"),
            d.target,
        ]
        if event_ids:
            row = [str(d.event_id), *row, _limit_scope(d)]
        row.append(units.values(d))
        rows.append(row)
    numeric = (0, len(head) - 1) if event_ids else (len(head) - 1,)
    return _html_table(head, rows, numeric=numeric)


def _html_breach(number: int, chain: CausalChain, units: _Units) -> str:
    parts = [
        f'<article class="breach" id="breach-{number}">',
        f"<h3>Breach {number}: {_e(chain.breach.limit)}</h3>",
        f'<p class="msg">{_e(chain.breach.message())}</p>',
        _html_kv(_breach_facts(chain, units)),
    ]
    if chain.consumers:
        parts.append("<h4>What consumed the budget</h4>")
        parts.append(_html_rows("agent / tool", chain.consumers))
    if chain.last_decisions:
        parts.append("<h4>Last decisions before the breach</h4>")
        parts.append(_html_decisions(chain.last_decisions, units))
    parts.append("</article>")
    return "".join(parts)


def _html_timeline(decisions: Sequence[DecisionRecord], units: _Units) -> str:
    if not decisions:
        return '<p class="muted">no decisions recorded</p>'
    shown, omitted = _timeline(decisions)
    note = ""
    if omitted:
        note = (
            f'<p class="muted">{_e(_plural(omitted, "routine decision"))} omitted; showing '
            "every warn, alert, overage, refuse and breach and the last "
            f"{_TIMELINE_OTHERS} others.</p>"
        )
    return note + _html_decisions(shown, units, event_ids=True)


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


def _html_chart(report: IncidentReport) -> str:
    series = report.series
    if series is None or not series.points:
        note = "No spend recorded."
        if series is not None and series.ceiling is not None:
            note += (
                f" Ceiling {series.limit or series.resource}: "
                f"{_quantity(series.resource, series.ceiling)}."
            )
        return f'<p class="muted">{_e(note)}</p>'
    return _svg_chart(series, report.breaches[0] if report.breaches else None)


def _svg_chart(series: SpendSeries, breach: CausalChain | None) -> str:
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
    out = [
        f'<p class="muted">{_e(summary)}.</p>',
        f'<svg class="chart" viewBox="0 0 {_f(_W)} {_f(_H)}" role="img" '
        f'aria-label="{_e(summary)}">',
        f"<title>{_e(summary)}</title>",
    ]
    for value in y_ticks:
        out.append(
            f'<line class="grid" x1="{_f(_LEFT)}" x2="{_f(_W - _RIGHT)}" '
            f'y1="{_f(y(value))}" y2="{_f(y(value))}"/>'
        )
        out.append(
            f'<text x="{_f(_LEFT - 8)}" y="{_f(y(value) + 4)}" text-anchor="end">'
            f"{_e(_quantity(resource, value))}</text>"
        )
    for value in x_ticks:
        at = x(value / per_second)
        out.append(
            f'<line class="axis" x1="{_f(at)}" x2="{_f(at)}" '
            f'y1="{_f(bottom)}" y2="{_f(bottom + 5)}"/>'
        )
        out.append(
            f'<text x="{_f(at)}" y="{_f(bottom + 18)}" text-anchor="middle">'
            f"{_e(_num(round(value, 6)))}</text>"
        )
    out += [
        f'<line class="axis" x1="{_f(_LEFT)}" x2="{_f(_W - _RIGHT)}" '
        f'y1="{_f(bottom)}" y2="{_f(bottom)}"/>',
        f'<line class="axis" x1="{_f(_LEFT)}" x2="{_f(_LEFT)}" y1="{_f(_TOP)}" y2="{_f(bottom)}"/>',
        f'<text class="axis-title" x="{_f(_LEFT + plot_w / 2)}" y="{_f(_H - 10)}" '
        f'text-anchor="middle">{_e(f"workflow time since first commit ({unit})")}</text>',
        f'<text class="axis-title" x="16" y="{_f(_TOP + plot_h / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 16 {_f(_TOP + plot_h / 2)})">'
        f"{_e(f'cumulative {label}')}</text>",
    ]
    if series.ceiling is not None:
        ceiling_y = y(series.ceiling)
        text = f"{series.limit or 'ceiling'} = {_quantity(resource, series.ceiling)}"
        out += [
            f'<line class="ceiling" x1="{_f(_LEFT)}" x2="{_f(_W - _RIGHT)}" '
            f'y1="{_f(ceiling_y)}" y2="{_f(ceiling_y)}"><title>{_e(text)}</title></line>',
            f'<text class="ceiling-label" x="{_f(_LEFT + 6)}" y="{_f(ceiling_y - 6)}">'
            f"{_e(text)}</text>",
        ]
    if breach is not None and breach_at is not None:
        at = x(breach_at)
        left = at < _LEFT + plot_w / 2
        tip = f"breach at {_clock(breach.decision.time)}: {breach.breach.message()}"
        out += [
            f'<line class="breach-line" x1="{_f(at)}" x2="{_f(at)}" '
            f'y1="{_f(_TOP)}" y2="{_f(bottom)}"><title>{_e(tip)}</title></line>',
            f'<path class="breach-mark" d="M {_f(at - 6)} {_f(_TOP - 10)} '
            f'L {_f(at + 6)} {_f(_TOP - 10)} L {_f(at)} {_f(_TOP)} Z">'
            f"<title>{_e(tip)}</title></path>",
            f'<text class="breach-label" x="{_f(at + 9 if left else at - 9)}" '
            f'y="{_f(_TOP - 2)}" text-anchor="{"start" if left else "end"}">breach</text>',
        ]
    vertices = " ".join(
        f"{_f(x(t))},{_f(y(p.cumulative))}" for t, p in zip(times, series.points, strict=True)
    )
    out.append(f'<polyline class="spend" points="{vertices}"/>')
    for t, point in zip(times, series.points, strict=True):
        where = f"{point.workflow_id} {point.target}".strip()
        tip = (
            f"+{_num(round(t, 3))} s ({_clock(point.time)}) {where}: "
            f"cumulative {_quantity(resource, point.cumulative)}"
            + ("" if resource == "cost_usd" else f" {label}")
        )
        out.append(
            f'<circle class="point" cx="{_f(x(t))}" cy="{_f(y(point.cumulative))}" r="3.5">'
            f"<title>{_e(tip)}</title></circle>"
        )
    out.append("</svg>")
    return "\n".join(out)


__all__ = ["render_html", "render_terminal"]
