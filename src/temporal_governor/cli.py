"""The ``temporal-governor`` command line.

Exit codes: 0 success; 1 the replay found non-determinism (the workflow code changed
since the run) or ``list`` found nothing; 2 bad usage or bad input (policy, files,
modules); 3 the Temporal server could not be reached or the workflow was not found.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from temporalio.client import Client
from temporalio.service import RPCError

from .errors import PolicyError
from .interceptors._workflow import STATE_ATTRIBUTE, TENANT_ATTRIBUTE
from .policy import Policy
from .replay import ReviewError, load_histories, review

EXIT_NONDETERMINISM = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3

_ADDRESS = os.environ.get("TEMPORAL_ADDRESS", "localhost:7233")
_NAMESPACE = os.environ.get("TEMPORAL_NAMESPACE", "default")


def _fail(message: str, code: int) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    sys.exit(code)


def workflow_classes(modules: Sequence[str]) -> list[type]:
    """Import modules (or ``module:Class``) and return the workflow classes they define.

    Args:
        modules: Dotted module names, optionally ``:ClassName`` to pick one class.

    Returns:
        The classes decorated with ``@workflow.defn``.

    """
    sys.path.insert(0, os.getcwd())
    found: list[type] = []
    for spec in modules:
        name, _, attribute = spec.partition(":")
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise click.BadParameter(
                f"cannot import {name!r}: {error}", param_hint="--workflows"
            ) from error
        candidates = (
            [getattr(module, attribute, None)] if attribute else list(vars(module).values())
        )
        for candidate in candidates:
            is_workflow = hasattr(candidate, "__temporal_workflow_definition")
            if isinstance(candidate, type) and is_workflow and candidate not in found:
                found.append(candidate)
    if not found:
        raise click.BadParameter(
            f"no @workflow.defn class found in {', '.join(modules)}", param_hint="--workflows"
        )
    return found


def _load_policy(path: str) -> Policy:
    try:
        return Policy.from_yaml(Path(path))
    except PolicyError as error:
        _fail(str(error), EXIT_BAD_INPUT)
        raise  # pragma: no cover - _fail exits


async def _connect(address: str, namespace: str) -> Client:
    try:
        return await Client.connect(address, namespace=namespace)
    except (RuntimeError, RPCError) as error:
        _fail(
            f"cannot reach Temporal at {address} (namespace {namespace}): {error}", EXIT_UNREACHABLE
        )
        raise  # pragma: no cover


@click.group()
@click.version_option(package_name="temporal-governor")
def main() -> None:
    """Budgets, breach halts and incident review for AI-agent workflows on Temporal."""


@main.command()
@click.argument("workflow_id")
@click.option(
    "--policy",
    "policy_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The policy the runs were governed by.",
)
@click.option(
    "--workflows",
    "modules",
    multiple=True,
    required=True,
    metavar="MODULE[:CLASS]",
    help="Module(s) defining the tree's workflow classes (repeatable).",
)
@click.option("--run-id", default=None, help="The root run (default: the latest run).")
@click.option("--namespace", default=_NAMESPACE, show_default=True)
@click.option(
    "--address",
    default=_ADDRESS,
    show_default=True,
    help="Temporal frontend (env TEMPORAL_ADDRESS).",
)
@click.option(
    "--history",
    "history_files",
    multiple=True,
    type=click.Path(exists=True),
    help="Exported history JSON of a run of the tree, or a folder of them (repeatable); "
    "no server needed.",
)
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), help="Write the report as JSON."
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False),
    help="Write a self-contained HTML report.",
)
@click.option("--quiet", is_flag=True, help="Do not print the terminal report.")
@click.option(
    "--sandbox/--no-sandbox",
    default=False,
    show_default=True,
    help="Replay inside the workflow sandbox (slower; determinism is checked either way).",
)
def replay(
    workflow_id: str,
    policy_path: str,
    modules: tuple[str, ...],
    run_id: str | None,
    namespace: str,
    address: str,
    history_files: tuple[str, ...],
    json_out: str | None,
    html_out: str | None,
    quiet: bool,
    sandbox: bool,
) -> None:
    r"""Replay a run's tree with the governor and report every decision and the breach.

    \b
    Example:
      temporal-governor replay demo-runaway --policy examples/governance.yaml \\
          --workflows examples.agents --html report.html
      temporal-governor replay demo-runaway --policy governance.yaml \\
          --workflows examples.agents --history root.json --history child.json
    """
    policy = _load_policy(policy_path)
    classes = workflow_classes(modules)
    console = Console(stderr=True)

    async def run() -> Any:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
            disable=quiet,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int | None) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            if history_files:
                files = [
                    found
                    for given in map(Path, history_files)
                    for found in (sorted(given.glob("*.json")) if given.is_dir() else [given])
                ]
                histories = load_histories(files, workflow_id)
                return await review(
                    workflow_id,
                    policy=policy,
                    workflows=classes,
                    histories=histories,
                    progress=progress,
                    sandboxed=sandbox,
                )
            client = await _connect(address, namespace)
            return await review(
                workflow_id,
                policy=policy,
                workflows=classes,
                client=client,
                run_id=run_id,
                progress=progress,
                sandboxed=sandbox,
            )

    try:
        report = asyncio.run(run())
    except ReviewError as error:
        _fail(str(error), EXIT_BAD_INPUT)
    except RPCError as error:
        _fail(f"{workflow_id}: {error}", EXIT_UNREACHABLE)
    from .render import render_html, render_terminal

    if not quiet:
        render_terminal(report, Console())
    if json_out:
        Path(json_out).write_text(report.model_dump_json(indent=2))
        console.print(f"JSON report written to {json_out}")
    if html_out:
        Path(html_out).write_text(render_html(report))
        console.print(f"HTML report written to {html_out}")
    if report.nondeterminism:
        sys.exit(EXIT_NONDETERMINISM)


@main.command(name="list")
@click.option("--tenant", default=None, help="Only runs of this tenant.")
@click.option(
    "--state",
    type=click.Choice(["running", "completed", "failed", "breached"]),
    default=None,
    help="Only runs in this governor state.",
)
@click.option("--agent", default=None, help="Only runs of this workflow type.")
@click.option("--limit", default=50, show_default=True, help="At most this many runs.")
@click.option("--namespace", default=_NAMESPACE, show_default=True)
@click.option("--address", default=_ADDRESS, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def list_runs(
    tenant: str | None,
    state: str | None,
    agent: str | None,
    limit: int,
    namespace: str,
    address: str,
    as_json: bool,
) -> None:
    r"""List governed runs through Temporal visibility (needs the search attributes).

    \b
    Example:
      temporal-governor list --tenant acme --state breached
    """
    clauses = ["GovernorState IS NOT NULL"]
    if tenant:
        clauses.append(f"GovernorTenant = {_quote(tenant)}")
    if state:
        clauses.append(f"GovernorState = {_quote(state)}")
    if agent:
        clauses.append(f"WorkflowType = {_quote(agent)}")
    query = " AND ".join(clauses)

    async def run() -> list[dict[str, Any]]:
        client = await _connect(address, namespace)
        rows: list[dict[str, Any]] = []
        async for execution in client.list_workflows(query, limit=limit):
            memo = await execution.memo()
            summary = memo.get("governor", {}) if isinstance(memo, dict) else {}
            attributes = execution.typed_search_attributes
            rows.append(
                {
                    "workflow_id": execution.id,
                    "run_id": execution.run_id,
                    "agent": execution.workflow_type,
                    "status": execution.status.name.lower() if execution.status else "",
                    "tenant": attributes.get(TENANT_ATTRIBUTE) or "",
                    "state": attributes.get(STATE_ATTRIBUTE) or "",
                    "started": execution.start_time.isoformat(),
                    "spent": summary.get("spent", {}),
                    "breach": summary.get("breach"),
                }
            )
        return rows

    try:
        rows = asyncio.run(run())
    except RPCError as error:
        _fail(f"listing failed ({query}): {error}", EXIT_UNREACHABLE)
    if as_json:
        import json

        for row in rows:
            click.echo(json.dumps(row))
    else:
        table = Table(title=f"governed runs: {query}")
        for column in ("workflow id", "agent", "tenant", "state", "tokens", "cost", "started"):
            table.add_column(column)
        for row in rows:
            spent = row["spent"]
            table.add_row(
                row["workflow_id"],
                row["agent"],
                row["tenant"],
                row["state"],
                f"{spent.get('tokens', 0):,.0f}",
                f"${spent.get('cost_usd', 0):.4f}",
                row["started"],
            )
        Console().print(table)
    if not rows:
        sys.exit(1)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@main.command()
@click.option("--tenant", default=None, help="Show this tenant's scopes (and its owners').")
@click.option("--scope", "scope_prefix", default=None, help="Show scopes starting with this.")
@click.option(
    "--ledger-id",
    default=None,
    help="The ledger's workflow id (default: from --policy, else temporal-governor-ledger).",
)
@click.option(
    "--policy",
    "policy_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Read the ledger id from this policy.",
)
@click.option("--namespace", default=_NAMESPACE, show_default=True)
@click.option("--address", default=_ADDRESS, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the ledger state as JSON.")
def budget(
    tenant: str | None,
    scope_prefix: str | None,
    ledger_id: str | None,
    policy_path: str | None,
    namespace: str,
    address: str,
    as_json: bool,
) -> None:
    r"""Show the shared ledger: committed and reserved spend per scope, window and ceiling.

    \b
    Example:
      temporal-governor budget --tenant acme
      temporal-governor budget --scope tool: --json
    """
    if ledger_id is None:
        ledger_id = (
            _load_policy(policy_path).shared.ledger_id
            if policy_path
            else "temporal-governor-ledger"
        )
    if tenant is not None and scope_prefix is not None:
        raise click.UsageError("give --tenant or --scope, not both")

    async def run() -> dict[str, Any]:
        client = await _connect(address, namespace)
        state: dict[str, Any] = await client.get_workflow_handle(ledger_id).query("state", "")
        return state

    try:
        state = asyncio.run(run())
    except RPCError as error:
        _fail(f"ledger {ledger_id}: {error}", EXIT_UNREACHABLE)
    counters = [
        c
        for c in state["counters"]
        if (
            tenant is None
            or c["scope"] in (f"tenant:{tenant}",)
            or c["scope"].startswith(f"owner:{tenant}/")
        )
        and (scope_prefix is None or c["scope"].startswith(scope_prefix))
    ]
    if as_json:
        import json

        click.echo(json.dumps({**state, "counters": counters}, indent=2))
        return
    table = Table(title=f"ledger {ledger_id}" + (f": tenant {tenant}" if tenant else ""))
    for column in (
        "scope",
        "resource",
        "window",
        "committed",
        "reserved",
        "ceiling",
        "left",
        "limit",
    ):
        table.add_column(
            column,
            justify="right" if column in ("committed", "reserved", "ceiling", "left") else "left",
        )
    for c in sorted(counters, key=lambda c: (c["scope"], c["resource"], c["window_s"] or 0)):
        ceiling = c.get("ceiling")
        left = ceiling - c["committed"] - c["reserved"] if ceiling is not None else None
        table.add_row(
            c["scope"],
            c["resource"],
            "total" if c["window_s"] is None else f"{c['window_s']:g} s",
            f"{c['committed']:,.4g}",
            f"{c['reserved']:,.4g}",
            "" if ceiling is None else f"{ceiling:,.4g}",
            "" if left is None else f"{left:,.4g}",
            c.get("limit", ""),
        )
    Console().print(table)
    Console().print(f"open reservations: {state['open_reservations']}")
    if not counters:
        sys.exit(1)
