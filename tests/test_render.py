"""Rendering an incident report to a terminal and to a self-contained HTML page."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from rich.console import Console

from temporal_governor.core.decisions import DecisionRecord
from temporal_governor.errors import BreachDetails, ChainLink
from temporal_governor.review import IncidentReport, render_html, render_terminal
from temporal_governor.review._report import CausalChain, RunNode, SpendPoint, SpendRow, SpendSeries

T0 = datetime(2025, 3, 14, 9, 30, 0, tzinfo=UTC)
ROOT_ID = "incident-42"
EXEC_1 = "incident-42-executor-1"
EXEC_2 = "incident-42-executor-2"
SCOPE = f"run planner/{ROOT_ID}"
RUN_IDS = {ROOT_ID: "run-root", EXEC_1: "run-e1", EXEC_2: "run-e2"}
AGENTS = {ROOT_ID: "planner", EXEC_1: "executor", EXEC_2: "executor"}
DEPTHS = {ROOT_ID: 0, EXEC_1: 1, EXEC_2: 1}


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def decision(
    seq: int, kind: str, ms: int, workflow_id: str = ROOT_ID, **fields: Any
) -> DecisionRecord:
    return DecisionRecord.model_validate(
        {
            "seq": seq,
            "kind": kind,
            "event_id": 4 + 6 * seq,
            "time": at(ms),
            "workflow_id": workflow_id,
            "run_id": RUN_IDS.get(workflow_id, "run-x"),
            "agent": AGENTS.get(workflow_id, "planner"),
            "depth": DEPTHS.get(workflow_id, 0),
            "tenant": "acme",
            **fields,
        }
    )


def llm(
    seq: int, kind: str, ms: int, workflow_id: str, tokens: float, cost: float
) -> DecisionRecord:
    return decision(
        seq,
        kind,
        ms,
        workflow_id,
        dispatch="activity",
        target="call_llm",
        key=f"activity:{seq}:call_llm",
        amounts={"tokens": tokens, "cost_usd": cost, "tool_calls": 1.0},
    )


def governance(seq: int, kind: str, ms: int, workflow_id: str, observed: float) -> DecisionRecord:
    return decision(
        seq,
        kind,
        ms,
        workflow_id,
        dispatch="activity",
        target="call_llm",
        limit="max_tokens_per_task",
        scope=SCOPE,
        observed=observed,
        ceiling=10_000.0,
    )


def build_decisions() -> list[DecisionRecord]:
    return [
        decision(1, "reserve", 0, dispatch="child", target="executor", amounts={"tokens": 4000.0}),
        llm(1, "reserve", 120, EXEC_1, 1500, 0.015),
        llm(2, "commit", 980, EXEC_1, 1234, 0.01234),
        llm(3, "release", 981, EXEC_1, 266, 0.00266),
        llm(4, "reserve", 1_050, EXEC_1, 1500, 0.015),
        llm(5, "commit", 2_310, EXEC_1, 1890, 0.0189),
        decision(
            2, "reserve", 2_400, dispatch="child", target="executor", amounts={"tokens": 4000.0}
        ),
        llm(1, "reserve", 2_500, EXEC_2, 1500, 0.015),
        llm(2, "commit", 3_700, EXEC_2, 1_480, 0.0148),
        governance(3, "warn", 3_701, EXEC_2, 8_100.0),
        decision(
            3,
            "commit",
            3_900,
            EXEC_1,
            dispatch="activity",
            target="vector_search",
            amounts={"tool_calls": 1.0, "cost_usd": 0.0005},
        ),
        llm(4, "reserve", 4_000, EXEC_2, 1500, 0.015),
        llm(5, "commit", 5_200, EXEC_2, 2_020, 0.0202),
        governance(6, "overage", 5_201, EXEC_2, 10_120.0),
        llm(6, "commit", 5_600, EXEC_1, 990, 0.0099),
        llm(7, "commit", 6_100, EXEC_1, 1_110, 0.0111),
        llm(8, "commit", 6_700, EXEC_2, 1_076, 0.01076),
        governance(9, "refuse", 7_000, EXEC_2, 10_450.0),
        governance(10, "breach", 7_000, EXEC_2, 10_450.0),
        decision(
            3, "release", 7_100, dispatch="child", target="executor", amounts={"tokens": 500.0}
        ),
    ]


SERIES_POINTS = [
    (980, EXEC_1, 1_234),
    (2_310, EXEC_1, 3_124),
    (3_700, EXEC_2, 4_604),
    (4_100, EXEC_1, 5_300),
    (5_200, EXEC_2, 7_320),
    (5_600, EXEC_1, 8_310),
    (6_100, EXEC_1, 9_420),
    (6_400, EXEC_2, 9_650),
    (6_700, EXEC_2, 9_900),
    (6_900, EXEC_1, 10_120),
]


def build_report(**update: Any) -> IncidentReport:
    decisions = build_decisions()
    breach_decision = decisions[-2]
    details = BreachDetails(
        limit="max_tokens_per_task",
        resource="tokens",
        scope=SCOPE,
        observed=10_450.0,
        ceiling=10_000.0,
        committed=10_120.0,
        overage=120.0,
        dispatch="activity call_llm",
        chain=[
            ChainLink(workflow_id=ROOT_ID, run_id="run-root", agent="planner"),
            ChainLink(workflow_id=EXEC_2, run_id="run-e2", agent="executor"),
        ],
        tenant="acme",
        spent={"tokens": 4_576.0, "cost_usd": 0.04576, "tool_calls": 3.0},
    )
    consumers = [
        SpendRow(
            group="executor / call_llm", tokens=9_800.0, cost_usd=0.098, tool_calls=7, dispatches=7
        ),
        SpendRow(
            group="executor / vector_search",
            tokens=0.0,
            cost_usd=0.0005,
            tool_calls=1,
            dispatches=1,
        ),
    ]
    report = IncidentReport(
        root_workflow_id=ROOT_ID,
        root_run_id="run-root",
        source="server localhost:7233/default",
        runs=[
            RunNode(
                workflow_id=ROOT_ID,
                run_id="run-root",
                agent="planner",
                tenant="acme",
                owner="ops@acme",
                status="breached",
                spend={"tokens": 10_800.0, "cost_usd": 0.1085, "tool_calls": 8.0},
                history_events=87,
            ),
            RunNode(
                workflow_id=EXEC_1,
                run_id="run-e1",
                agent="executor",
                parent_workflow_id=ROOT_ID,
                parent_run_id="run-root",
                depth=1,
                tenant="acme",
                status="completed",
                spend={"tokens": 5_224.0, "cost_usd": 0.05274, "tool_calls": 5.0},
                own_spend={"tokens": 5_224.0, "cost_usd": 0.05274, "tool_calls": 5.0},
                history_events=41,
            ),
            RunNode(
                workflow_id=EXEC_2,
                run_id="run-e2",
                agent="executor",
                parent_workflow_id=ROOT_ID,
                parent_run_id="run-root",
                depth=1,
                tenant="acme",
                status="breached",
                spend={"tokens": 4_576.0, "cost_usd": 0.04576, "tool_calls": 3.0},
                own_spend={"tokens": 4_576.0, "cost_usd": 0.04576, "tool_calls": 3.0},
                history_events=38,
            ),
        ],
        decisions=decisions,
        breaches=[
            CausalChain(
                breach=details,
                decision=breach_decision,
                consumers=consumers,
                contributing=[d for d in decisions if d.kind == "commit"],
                last_decisions=decisions[-8:-2],
            )
        ],
        spend_by_agent=[
            SpendRow(group="executor", tokens=9_800.0, cost_usd=0.0985, tool_calls=8, dispatches=8)
        ],
        spend_by_tool=consumers,
        spend_by_tenant=[
            SpendRow(group="acme", tokens=9_800.0, cost_usd=0.0985, tool_calls=8, dispatches=8)
        ],
        spend_by_depth=[
            SpendRow(group="1", tokens=9_800.0, cost_usd=0.0985, tool_calls=8, dispatches=8)
        ],
        series=SpendSeries(
            resource="tokens",
            ceiling=10_000.0,
            limit="max_tokens_per_task",
            scope=SCOPE,
            points=[
                SpendPoint(time=at(ms), cumulative=value, workflow_id=wid, target="call_llm")
                for ms, wid, value in SERIES_POINTS
            ],
        ),
    )
    return report.model_copy(update=update) if update else report


def terminal_text(report: IncidentReport) -> str:
    console = Console(record=True, width=160)
    render_terminal(report, console)
    return console.export_text()


VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
    "track", "wbr",
}  # fmt: skip


class StrictChecker(HTMLParser):
    """Fails on a non-void element closed out of order, a void one closed, or one left open."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert tag not in VOID, f"void element closed: </{tag}>"
        assert self.stack, f"</{tag}> closes nothing"
        assert self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1]}> (open: {self.stack})"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, css: str | None = None) -> list[dict[str, str | None]]:
        return [
            attrs
            for name, attrs in self.elements
            if name == tag and (css is None or css in (attrs.get("class") or "").split())
        ]


def check_html(document: str) -> StrictChecker:
    checker = StrictChecker()
    checker.feed(document)
    checker.close()
    assert not checker.stack, f"left open: {checker.stack}"
    assert checker.doctype.lower() == "doctype html"
    return checker


# -- terminal -----------------------------------------------------------------------------


def test_terminal_states_the_breach_with_formatted_numbers() -> None:
    text = terminal_text(build_report())
    assert "max_tokens_per_task" in text
    assert "10,450" in text
    assert "10,000" in text
    assert "10,120" in text  # committed
    assert SCOPE in text
    assert f"planner/{ROOT_ID} → executor/{EXEC_2}" in text


def test_terminal_shows_tree_consumers_and_spend_tables() -> None:
    text = terminal_text(build_report())
    for expected in (
        "planner",
        "executor",
        EXEC_1,
        EXEC_2,
        "breached",
        "completed",
        "executor / call_llm",
        "vector_search",
        "Spend per agent",
        "Spend per tool",
        "Spend per tenant",
        "Spend per depth",
        "$0.0985",
        "9,800",
    ):
        assert expected in text, expected


def test_terminal_header_counts_runs_and_decisions() -> None:
    text = terminal_text(build_report())
    assert ROOT_ID in text and "run-root" in text
    assert "server localhost:7233/default" in text
    assert "3 runs" in text
    assert "20 decisions" in text
    assert "1 breach" in text


def test_terminal_timeline_has_workflow_times_and_kinds() -> None:
    text = terminal_text(build_report())
    assert "09:30:07.000" in text  # the breach
    assert "09:30:00.981" in text  # a release
    for kind in ("reserve", "commit", "release", "warn", "overage", "refuse", "breach"):
        assert kind in text
    assert "omitted" not in text
    assert "10,450 / 10,000" in text


def test_terminal_lists_nondeterminism_only_when_present() -> None:
    assert "Non-determinism" not in terminal_text(build_report())
    line = f"executor/{EXEC_1} (run run-e1): Nondeterminism error: activity call_llm vs search"
    text = terminal_text(build_report(nondeterminism=[line]))
    assert "Non-determinism" in text
    assert "Nondeterminism error: activity call_llm vs search" in text


def test_terminal_prints_report_text_literally() -> None:
    report = build_report()
    runs = [report.runs[0].model_copy(update={"workflow_id": "[bold red]x[/bold red]"})]
    text = terminal_text(report.model_copy(update={"runs": runs}))
    assert "[bold red]x[/bold red]" in text


def test_long_timeline_keeps_governance_decisions_and_says_how_many_were_left_out() -> None:
    routine = [llm(i, "commit", 100 * i, EXEC_1, 100, 0.001) for i in range(1, 101)]
    warn = governance(101, "warn", 5_050, EXEC_1, 8_000.0)
    decisions = sorted([*routine, warn], key=lambda d: d.time)
    report = build_report(decisions=decisions, breaches=[], series=None)
    text = terminal_text(report)
    assert "70 routine decisions omitted" in text
    assert "8,000 / 10,000" in text  # the warn survives
    assert "09:30:10.000" in text  # the last commit
    assert not re.search(r"09:30:00\.100(?!\d)", text.split("Timeline")[-1])  # the first does not
    document = render_html(report)
    assert "70 routine decisions omitted" in document
    assert document.count('<td class="k-commit">') == 30


# -- HTML ---------------------------------------------------------------------------------


def test_html_is_well_formed_and_self_contained() -> None:
    document = render_html(build_report())
    checker = check_html(document)
    assert checker.find("style")
    assert not checker.find("script")
    assert not checker.find("link")
    assert not checker.find("img")
    assert "http://" not in document and "https://" not in document
    assert "src=" not in document
    assert "@import" not in document and "url(" not in document
    for _, attrs in checker.elements:
        assert "src" not in attrs and "href" not in attrs


def test_html_has_summary_tree_breach_timeline_and_spend() -> None:
    document = render_html(build_report())
    checker = check_html(document)
    text = " ".join(checker.text)
    assert f"Incident report: {ROOT_ID}" in text
    assert "Breach 1: max_tokens_per_task" in text
    assert "10,450" in text and "10,000" in text
    assert f"planner/{ROOT_ID} → executor/{EXEC_2}" in text
    assert "executor / call_llm" in text
    assert "$0.0985" in text
    assert "09:30:07.000" in text
    tree = checker.find("ul", "tree")
    assert len(tree) == 1
    breached = checker.find("li", "breached")
    assert len(breached) == 2  # the planner and the second executor
    assert len(checker.find("article", "breach")) == 1


def test_html_chart_draws_every_point_the_ceiling_and_the_breach() -> None:
    document = render_html(build_report())
    checker = check_html(document)
    assert len(checker.find("svg")) == 1
    [line] = checker.find("polyline", "spend")
    points = (line["points"] or "").split()
    assert len(points) == len(SERIES_POINTS)
    xs = [float(p.split(",")[0]) for p in points]
    ys = [float(p.split(",")[1]) for p in points]
    assert xs == sorted(xs)
    assert ys == sorted(ys, reverse=True)  # cumulative spend rises (SVG y grows downwards)
    [ceiling] = checker.find("line", "ceiling")
    assert ceiling["y1"] == ceiling["y2"]
    assert ys[-1] < float(ceiling["y1"] or 0) < ys[-2]  # between the 10,120 and 9,900 points
    assert "max_tokens_per_task = 10,000" in document
    assert len(checker.find("circle", "point")) == len(SERIES_POINTS)
    assert document.count("<title>") >= len(SERIES_POINTS) + 1
    assert checker.find("line", "breach-line")
    assert "workflow time since first commit (s)" in document


def test_html_escapes_report_text() -> None:
    evil = 'evil<script>alert("x")</script>'
    report = build_report()
    runs = [
        run.model_copy(update={"workflow_id": evil}) if run.workflow_id == EXEC_1 else run
        for run in report.runs
    ]
    decisions = [
        d.model_copy(update={"workflow_id": evil, "target": "<b>tool</b>"})
        if d.workflow_id == EXEC_1
        else d
        for d in report.decisions
    ]
    document = render_html(
        report.model_copy(
            update={"runs": runs, "decisions": decisions, "nondeterminism": [f"{evil} changed"]}
        )
    )
    checker = check_html(document)
    assert "<script>" not in document
    assert "<b>" not in document
    assert "&lt;script&gt;" in document
    assert not checker.find("script") and not checker.find("b")
    assert f"{evil} changed" in " ".join(checker.text)


def test_html_escapes_report_text_inside_attributes() -> None:
    # a run's status and a decision's kind become CSS classes: quoting must hold there too
    breakout = 'x" onmouseover="alert(1)'
    report = build_report()
    runs = [run.model_copy(update={"status": breakout}) for run in report.runs]
    decisions = [d.model_copy(update={"kind": breakout}) for d in report.decisions]
    document = render_html(report.model_copy(update={"runs": runs, "decisions": decisions}))
    checker = check_html(document)
    assert all("onmouseover" not in attrs for _, attrs in checker.elements)
    classes = [attrs.get("class") or "" for _, attrs in checker.elements]
    assert f"status status-{breakout}" in classes
    assert f"k-{breakout}" in classes


def test_report_without_breaches_or_series_renders() -> None:
    report = build_report(breaches=[], series=None, runs=build_report().runs[1:2])
    text = terminal_text(report)
    assert "0 breaches" in text
    assert "Breach 1" not in text
    document = render_html(report)
    checker = check_html(document)
    assert not checker.find("svg")
    assert "No spend recorded" in document
    assert not checker.find("article", "breach")


def test_series_without_points_says_no_spend() -> None:
    series = SpendSeries(resource="cost_usd", ceiling=0.05, limit="max_cost_usd_per_task")
    document = render_html(build_report(breaches=[], series=series))
    check_html(document)
    assert "No spend recorded" in document
    assert "$0.0500" in document
    assert "<svg" not in document


def test_empty_report_renders() -> None:
    report = IncidentReport(
        root_workflow_id="w", root_run_id="r", source="files", runs=[], decisions=[]
    )
    assert "no decisions recorded" in terminal_text(report)
    check_html(render_html(report))


def test_single_point_cost_series_renders() -> None:
    series = SpendSeries(
        resource="cost_usd",
        ceiling=0.02,
        limit="max_cost_usd_per_task",
        points=[SpendPoint(time=T0, cumulative=0.0125, workflow_id=EXEC_1, target="call_llm")],
    )
    document = render_html(build_report(breaches=[], series=series))
    checker = check_html(document)
    [line] = checker.find("polyline", "spend")
    assert len((line["points"] or "").split()) == 1
    assert "max_cost_usd_per_task = $0.0200" in document
    assert "$0.0125" in document


@pytest.mark.parametrize("render", ["html", "terminal"])
def test_rendering_is_deterministic(render: str) -> None:
    if render == "html":
        assert render_html(build_report()) == render_html(build_report())
    else:
        assert terminal_text(build_report()) == terminal_text(build_report())


def test_html_has_no_current_time() -> None:
    document = render_html(build_report())
    years = set(re.findall(r"\b20\d\d-\d\d-\d\d", document))
    assert years == {"2025-03-14"}
