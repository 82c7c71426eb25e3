"""The demo: a normal planner request completes; a runaway planner is halted; an operator
pauses a request, an unsigned resume is refused, a signed one lets it finish.

Run it with `make demo` (which starts the embedded dev server and sets TEMPORAL_ADDRESS).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.agents import Executor, Planner, PlanRequest, call_llm, vector_search
from temporal_governor import BreachDetails, GovernorPlugin, Policy, attribution
from temporal_governor.control import CONTROL_QUERY, ControlClient, ControlTarget
from temporal_governor.review import fetch_tree, render_html, review
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot

POLICY = Path(__file__).with_name("governance.yaml")
OUT = Path(__file__).resolve().parent.parent / "out"


async def snapshot(handle: WorkflowHandle[Any, Any]) -> BudgetSnapshot:
    return BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))


async def watch(handle: WorkflowHandle[Any, Any], ceiling: float) -> None:
    """Print the planner's token spend while it runs."""
    last = -1.0
    while True:
        try:
            snap = await snapshot(handle)
        except Exception:
            await asyncio.sleep(0.2)
            continue
        tokens = snap.committed.get("tokens", 0.0)
        if tokens != last:
            bar = "#" * int(30 * min(tokens, ceiling) / ceiling)
            print(
                f"  {snap.agent:<8} tokens {tokens:>8,.0f} / {ceiling:,.0f} [{bar:<30}] "
                f"subtasks {snap.committed.get('subtasks', 0):.0f}",
                flush=True,
            )
            last = tokens
        await asyncio.sleep(0.3)


async def tree_spend(client: Client, task_queue: str, root_id: str) -> list[BudgetSnapshot]:
    snaps = []
    async for wf in client.list_workflows(f'TaskQueue="{task_queue}"'):
        if wf.id == root_id or wf.id.startswith(root_id + "/"):
            snaps.append(await snapshot(client.get_workflow_handle(wf.id, run_id=wf.run_id)))
    return snaps


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), line.format(*["-" * w for w in widths])]
    out += [line.format(*r) for r in rows]
    return "\n".join(out)


async def run_request(
    client: Client, task_queue: str, request: PlanRequest, run_id: str, ceiling: float
) -> tuple[BreachDetails | None, list[BudgetSnapshot]]:
    with attribution(tenant="acme", owner="alice@acme"):
        handle = await client.start_workflow(Planner.run, request, id=run_id, task_queue=task_queue)
    watcher = asyncio.create_task(watch(handle, ceiling))
    breach = None
    try:
        result = await handle.result()
        print(f"  completed after {result.rounds} round(s) with {len(result.answers)} answers")
    except WorkflowFailureError as failure:
        breach = BreachDetails.from_error(failure)
        print(f"  HALTED: {failure.cause}")
    finally:
        watcher.cancel()
    return breach, await tree_spend(client, task_queue, run_id)


def summary(title: str, breach: BreachDetails | None, snaps: list[BudgetSnapshot]) -> None:
    root = next(s for s in snaps if s.depth == 0)
    print(f"\n== {title}: {root.workflow_id} (tenant {root.tenant}, owner {root.owner})")
    if breach is not None:
        where = " > ".join(f"{link.agent}/{link.workflow_id}" for link in breach.chain)
        print(
            table(
                [
                    [
                        breach.limit,
                        breach.scope,
                        where,
                        f"{breach.observed:,.0f}",
                        f"{breach.ceiling:,.0f}",
                    ]
                ],
                ["limit hit", "scope", "where in the tree", "observed", "ceiling"],
            )
        )
    per_agent: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for snap in snaps:
        per_agent[snap.agent]["runs"] += 1
        for resource, value in snap.own_spend.items():
            per_agent[snap.agent][resource] += value
    rows = [
        [
            agent,
            f"{s['runs']:.0f}",
            f"{s['tokens']:,.0f}",
            f"${s['cost_usd']:.4f}",
            f"{s['tool_calls']:.0f}",
        ]
        for agent, s in sorted(per_agent.items())
    ]
    print(table(rows, ["agent", "runs", "tokens", "cost", "tool calls"]))
    limits = [limit for limit in root.limits if limit.resource == "tokens"]
    for limit in limits:
        overdraft = max(0.0, limit.committed - limit.ceiling)
        print(
            f"  total {limit.resource} {limit.committed:,.0f} of ceiling {limit.ceiling:,.0f} "
            f"({limit.limit}); overdraft {overdraft:,.0f}"
        )


async def incident_review(client: Client, policy: Policy) -> None:
    """Replay the runaway tree from history, as `temporal-governor replay` does."""
    print("\n-- incident review: replaying demo-runaway's history with the governor")
    histories = await fetch_tree(client, "demo-runaway")
    folder = OUT / "histories"
    write_histories(histories, folder)
    report = await review(
        "demo-runaway", policy=policy, workflows=[Planner, Executor], histories=histories
    )
    [chain] = report.breaches
    print(
        f"  {len(report.runs)} runs, {len(report.decisions)} decisions rebuilt; breach at history "
        f"event {chain.decision.event_id} of {chain.decision.agent}/{chain.decision.workflow_id}"
    )
    print("  consumers of the exceeded budget:")
    for row in chain.consumers:
        print(f"    {row.group:<28} {row.dispatches:>3} dispatches {row.tokens:>9,.0f} tokens")
    (OUT / "report.html").write_text(render_html(report))
    (OUT / "report.json").write_text(report.model_dump_json(indent=2))
    print(f"  full report: {OUT / 'report.html'} (and report.json); histories in {folder}/")
    for normal in NORMAL_RUNS:  # what --suggest compares the incident with
        write_histories(await fetch_tree(client, normal), OUT / "normal" / normal)
    print(
        "  again, offline: .venv/bin/temporal-governor replay demo-runaway "
        "--policy examples/governance.yaml --workflows examples.agents "
        "--history out/histories"
    )
    print("  then (docs/verification.md): tighter limits from this incident, a signed bundle")
    for command in verification_commands():
        print(f"    {command}")


DEMO_KEYS = "demo=demo-secret-change-me"
"""The demo's control-plane key (in production: from your secret store, never in code)."""

NORMAL_RUNS = ("demo-normal", "demo-paused")
"""The requests that finished normally; their histories go to ``out/normal/<id>/``."""


def write_histories(histories: list[WorkflowHistory], folder: Path) -> None:
    """Write a tree's histories to ``folder`` (emptied first), one JSON file per run."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    for i, history in enumerate(histories):
        (folder / f"{i:03d}-{history.workflow_id.replace('/', '_')}.json").write_text(
            history.to_json()
        )


def verification_commands() -> list[str]:
    """The verification commands of docs/verification.md, on the demo's histories."""
    cli = ".venv/bin/temporal-governor"
    keys = f"TEMPORAL_GOVERNOR_KEYS={DEMO_KEYS}"  # a bundle is signed with a control key
    common = "--workflows examples.agents"
    normals = " ".join(f"--normal out/normal/{normal}" for normal in NORMAL_RUNS)
    return [
        f"{cli} verify examples/governance.yaml --suggest {common} "
        f"--incident out/histories {normals}",
        f"{keys} {cli} replay demo-runaway --policy examples/governance.yaml {common} "
        "--history out/histories --bundle out/incident.zip --quiet",
        f"{keys} {cli} verify-bundle out/incident.zip",
    ]


async def operator_pause(client: Client, policy: Policy, task_queue: str) -> bool:
    """Pause a running request, try an unsigned resume (refused), resume it signed."""
    print("\n-- an operator pauses a request, then resumes it")
    control = ControlClient(client, policy, issuer="oncall@demo")
    with attribution(tenant="acme", owner="bob@acme"):
        handle = await client.start_workflow(
            Planner.run,
            PlanRequest(goal="draft the memo"),
            id="demo-paused",
            task_queue=task_queue,
        )
    while not (await snapshot(handle)).committed:
        await asyncio.sleep(0.05)
    await control.kill(ControlTarget.run(handle.id), reason="checking the prompt")
    status = await handle.query(CONTROL_QUERY)
    while status["state"] != "paused":
        await asyncio.sleep(0.02)
        status = await handle.query(CONTROL_QUERY)
    print(f"  paused by {status['paused_by']}: {status['pause_reason']}")
    unsigned = control.resume_message(ControlTarget.run(handle.id), reason="let me through")
    await handle.signal("governor.resume", unsigned.model_dump(mode="json"))
    await asyncio.sleep(0.3)
    status = await handle.query(CONTROL_QUERY)
    refused = status["audit"][-1]
    print(f"  unsigned resume from {refused['issuer']}: refused ({refused['outcome']})")
    await control.resume(ControlTarget.run(handle.id), reason="prompt is fine")
    result = await handle.result()
    status = await handle.query(CONTROL_QUERY)
    print(
        f"  resumed by {status['audit'][-1]['issuer']}; completed after {result.rounds} round(s);"
        f" audit: {status['accepted']} accepted, {status['rejected']} rejected"
    )
    return status["state"] == "running" and status["rejected"] == 1 and not refused["accepted"]


async def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="  [log] %(message)s")
    workflow.logger.workflow_info_on_message = False
    address = os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233")
    # the control-plane signing key (in production: from your secret store, never in YAML)
    os.environ.setdefault("TEMPORAL_GOVERNOR_KEYS", DEMO_KEYS)
    policy = Policy.from_yaml(POLICY)
    # the SDK core logs at WARN (e.g. a progress query racing a run that just finished);
    # the demo's output is its own lines only, so the core speaks up at ERROR
    quiet = Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )
    client = await Client.connect(address, plugins=[GovernorPlugin(policy)], runtime=quiet)
    task_queue = f"agents-{uuid.uuid4().hex[:8]}"
    quota = policy.quotas_for("planner").max_tokens_per_task
    ceiling = float(quota.limit) if quota else 0.0
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[Planner, Executor],
        activities=[call_llm, vector_search],
    ):
        print("\n-- a normal request: plan, two sub-agents, evaluate")
        normal_breach, normal = await run_request(
            client, task_queue, PlanRequest(goal="summarise Q3"), "demo-normal", ceiling
        )
        print("\n-- a runaway request: the planner is never satisfied and keeps re-planning")
        breach, runaway = await run_request(
            client,
            task_queue,
            PlanRequest(goal="perfect answer", runaway=True),
            "demo-runaway",
            ceiling,
        )
        paused_ok = await operator_pause(client, policy, task_queue)
        summary("normal request", normal_breach, normal)
        summary("runaway request", breach, runaway)
        await incident_review(client, policy)
    root = next(s for s in runaway if s.depth == 0)
    overdraft = max((lim.committed - lim.ceiling for lim in root.limits), default=0.0)
    ok = normal_breach is None and breach is not None and overdraft <= 0 and paused_ok
    print("\ndemo", "OK" if ok else "FAILED", "- overdraft", max(0.0, overdraft))
    return 0 if ok else 1


if __name__ == "__main__":
    code = asyncio.run(main())
    # the Temporal SDK's native threads can crash the interpreter while it finalizes (after
    # every line was written: "Fatal Python error: PyGILState_Release"); leave without
    # finalizing, as the temporal-governor CLI does
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
