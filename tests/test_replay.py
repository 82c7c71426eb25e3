"""Incident review: replaying a breached tree rebuilds the decisions the live run made."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from examples.agents import Executor, Planner

from conftest import RUNAWAY_POLICY
from temporal_governor.cli import main as cli
from temporal_governor.review import IncidentReport, load_histories, review
from workflows import ChangedPlanner

POLICY = RUNAWAY_POLICY
WORKFLOWS = [Planner, Executor]
# `runaway` (conftest.py): the session's one runaway planner tree under POLICY, halted


async def test_report_names_the_limit_agent_and_events_the_live_run_recorded(runaway) -> None:
    report = await review(
        runaway["id"], policy=POLICY, workflows=WORKFLOWS, client=runaway["client"]
    )
    assert report.nondeterminism == []
    assert report.root_workflow_id == runaway["id"]
    assert [r.agent for r in report.runs].count("planner") == 1
    assert len(report.runs) > 2 and all(r.tenant == "acme" for r in report.runs)
    assert report.runs[0].status == "breached"
    [chain] = report.breaches
    live_breach = runaway["breach"]
    assert chain.breach.limit == live_breach.limit == "max_tokens_per_task"
    assert chain.breach.observed == live_breach.observed
    assert chain.decision.workflow_id == live_breach.chain[-1].workflow_id
    assert chain.decision.agent == "planner"
    # every decision the live root run reported is rebuilt identically, in order
    live_events = [(e.seq, e.kind, e.key, e.amounts) for e in runaway["live"].recent_events]
    rebuilt = [
        (d.seq, d.kind, d.key, d.amounts)
        for d in report.decisions
        if d.run_id == report.root_run_id
    ]
    assert rebuilt[-len(live_events) :] == live_events
    # the consumers of the exceeded budget add up to what was committed against it
    consumed = sum(row.tokens for row in chain.consumers)
    assert consumed == pytest.approx(live_breach.committed)
    assert {row.group.split(" / ")[0] for row in chain.consumers} == {"planner", "executor"}
    assert report.series is not None and report.series.ceiling == 20_000
    assert report.series.points[-1].cumulative == pytest.approx(live_breach.committed)
    assert sum(row.tokens for row in report.spend_by_agent) == pytest.approx(live_breach.committed)


async def test_report_from_exported_history_files_equals_the_live_one(runaway) -> None:
    live = await review(runaway["id"], policy=POLICY, workflows=WORKFLOWS, client=runaway["client"])
    from_files = await review(
        runaway["id"],
        policy=POLICY,
        workflows=WORKFLOWS,
        histories=load_histories(runaway["files"], runaway["id"]),
    )
    assert from_files.model_dump(exclude={"source"}) == live.model_dump(exclude={"source"})
    assert from_files.source == "files"


async def test_changed_workflow_code_is_reported_as_nondeterminism(runaway) -> None:
    report = await review(
        runaway["id"], policy=POLICY, workflows=[ChangedPlanner, Executor], client=runaway["client"]
    )
    assert len(report.nondeterminism) == 1
    assert "planner" in report.nondeterminism[0]
    assert report.runs[0].replay_error


def test_cli_writes_json_and_html_reports(runaway, tmp_path: Path, env) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY.model_dump_json(by_alias=True, exclude_none=True))
    out_json, out_html = tmp_path / "report.json", tmp_path / "report.html"
    args = [
        "replay",
        runaway["id"],
        "--policy",
        str(policy_file),
        "--workflows",
        "examples.agents",
        "--json",
        str(out_json),
        "--html",
        str(out_html),
    ]
    args += [arg for f in runaway["files"] for arg in ("--history", str(f))]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "max_tokens_per_task" in result.output
    report = IncidentReport.model_validate_json(out_json.read_text())
    assert report.breaches[0].breach.limit == "max_tokens_per_task"
    html = out_html.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "<svg" in html


def test_cli_exit_codes_for_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agnets: {}\n")
    result = CliRunner().invoke(
        cli, ["replay", "x", "--policy", str(bad), "--workflows", "examples.agents"]
    )
    assert result.exit_code == 2 and "agnets" in result.output
    good = tmp_path / "good.yaml"
    good.write_text("{}\n")
    result = CliRunner().invoke(
        cli, ["replay", "x", "--policy", str(good), "--workflows", "no_such_module"]
    )
    assert result.exit_code == 2 and "no_such_module" in result.output


def test_list_by_search_attribute(runaway, env) -> None:
    address = env.client.service_client.config.target_host
    for _ in range(50):  # visibility is eventually consistent
        result = CliRunner().invoke(
            cli, ["list", "--tenant", "acme", "--state", "breached", "--address", address, "--json"]
        )
        if result.exit_code == 0:
            break
        time.sleep(0.2)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert runaway["id"] in {row["workflow_id"] for row in rows}
    assert all(row["tenant"] == "acme" and row["state"] == "breached" for row in rows)
    root = next(row for row in rows if row["workflow_id"] == runaway["id"])
    assert root["spent"]["tokens"] == pytest.approx(runaway["breach"].committed)
    other = CliRunner().invoke(cli, ["list", "--tenant", "globex", "--address", address, "--json"])
    assert runaway["id"] not in other.output


async def test_register_search_attributes_is_idempotent(env) -> None:
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    from temporal_governor import register_search_attributes

    await register_search_attributes(env.client)
    await register_search_attributes(env.client)  # already there: no error
    listed = await env.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=env.client.namespace), retry=True
    )
    assert {"GovernorTenant", "GovernorState"} <= set(listed.custom_attributes)
