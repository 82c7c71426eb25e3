"""`temporal-governor top`: the frame's arithmetic, the live loop, and a real fleet on a dev server."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from rich.console import Console
from temporalio.client import WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from conftest import CONTROL_KEY_ID, eventually
from control_workflows import CONTROL_ACTIVITIES, CONTROL_WORKFLOWS, Loop, Looper
from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.cli import EXIT_BAD_INPUT, EXIT_UNREACHABLE
from temporal_governor.cli import main as cli
from temporal_governor.top import (
    BurnTracker,
    Frame,
    LedgerTotals,
    RateLimiter,
    RunCounts,
    TopOptions,
    counter_rows,
    format_burn,
    format_pct,
    gather_frame,
    render_frame,
    run_live,
    runs_from_counts,
)
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS, Spender, Steps

WORKFLOWS = [*ALL_WORKFLOWS, *CONTROL_WORKFLOWS]
ACTIVITIES = [*ALL_ACTIVITIES, *CONTROL_ACTIVITIES]


def counter(scope: str, resource: str, **fields: Any) -> dict[str, Any]:
    window = fields.get("window_s")
    return {
        "id": f"{scope}|{resource}|{'total' if window is None else f'{window:g}s'}",
        "scope": scope,
        "resource": resource,
        "window_s": None,
        "window_start": None,
        "committed": 0.0,
        "reserved": 0.0,
        "ceiling": None,
        "limit": "",
        **fields,
    }


# -- the arithmetic ------------------------------------------------------------------------


def test_counter_rows_percent_used_left_tenant_filter_and_ended_windows() -> None:
    now = 1_000_000.0 * 60 + 30  # 30 s into a minute
    counters = [
        counter("tenant:acme", "tokens", committed=250, reserved=50, ceiling=1000),
        counter("owner:acme/bob", "cost_usd", committed=0.5, ceiling=2.0),
        counter("tenant:acme2", "tokens", committed=1, ceiling=10),
        counter("tenant:acme", "concurrency", reserved=3, ceiling=4),
        counter("global", "tokens", committed=7),
        # the ledger's clock stood still: this minute window ended 90 s ago
        counter("tenant:acme", "tokens", window_s=60.0, window_start=now - 30 - 120, committed=99),
    ]
    rows = {(r.scope, r.resource, r.window_s): r for r in counter_rows(counters, now)}
    acme = rows[("tenant:acme", "tokens", None)]
    assert (acme.kind, acme.tenant, acme.owner) == ("tenant", "acme", None)
    assert acme.used_pct == 25.0 and acme.left == 700
    bob = rows[("owner:acme/bob", "cost_usd", None)]
    assert (bob.kind, bob.tenant, bob.owner, bob.used_pct) == ("owner", "acme", "bob", 25.0)
    assert rows[("tenant:acme", "concurrency", None)].used_pct == 75.0  # slots held
    assert rows[("global", "tokens", None)].used_pct is None  # no ceiling
    rolled = rows[("tenant:acme", "tokens", 60.0)]
    assert (rolled.committed, rolled.window_start) == (0.0, now - 30)

    only = counter_rows(counters, now, tenants=["acme"])
    assert {r.scope for r in only} == {"tenant:acme", "owner:acme/bob"}  # not acme2, not global


def test_first_frame_burn_reads_the_minute_window_else_dash() -> None:
    now = 1_000_000.0 * 60 + 30
    counters = [
        counter("tenant:a", "tokens", committed=900, ceiling=10_000),
        counter("tenant:a", "tokens", window_s=60.0, window_start=now - 30, committed=600),
        counter("tenant:b", "tokens", committed=500, ceiling=1000),
        counter("tenant:b", "concurrency", reserved=1, ceiling=2),
    ]
    rows = counter_rows(counters, now)
    BurnTracker().observe(rows, now)
    by = {(r.scope, r.resource, r.window_s): r for r in rows}
    for window in (None, 60.0):  # the scope's rate, on each of its counters
        row = by[("tenant:a", "tokens", window)]
        assert (row.burn_per_min, row.burn_basis) == (1200.0, "window")  # 600 in 30 s
    b = by[("tenant:b", "tokens", None)]
    assert (b.burn_per_min, b.burn_basis) == (None, None)
    assert format_burn("tokens", b.burn_per_min) == "—"
    assert by[("tenant:b", "concurrency", None)].burn_per_min is None
    assert format_burn("cost_usd", 0.25) == "$0.2500/min" and format_pct(12.345) == "12.3%"


def test_burn_measured_between_frames_follows_window_restarts() -> None:
    tracker = BurnTracker()
    t0 = 6_000_000.0  # a minute boundary

    def frame(now: float, total: float, window_start: float, in_window: float) -> dict:
        counters = [
            counter("tenant:a", "tokens", committed=total),
            counter(
                "tenant:w", "tokens", window_s=60.0, window_start=window_start, committed=in_window
            ),
        ]
        rows = counter_rows(counters, now)
        tracker.observe(rows, now)
        return {r.scope: r for r in rows}

    first = frame(t0 + 10, 1000, t0, 100)
    assert first["tenant:a"].burn_basis is None
    assert first["tenant:w"].burn_basis == "window"  # 100 in 10 s
    assert first["tenant:w"].burn_per_min == pytest.approx(600)
    second = frame(t0 + 40, 1300, t0, 400)
    assert second["tenant:a"].burn_basis == "frames"
    assert second["tenant:a"].burn_per_min == pytest.approx(300 / 30 * 60)
    assert second["tenant:w"].burn_per_min == pytest.approx(300 / 30 * 60)
    # the window restarted at t0 + 60: what the new one holds was committed since
    third = frame(t0 + 70, 1450, t0 + 60, 50)
    assert third["tenant:w"].burn_per_min == pytest.approx((300 + 50) / 60 * 60)
    assert third["tenant:a"].burn_per_min == pytest.approx(450 / 60 * 60)
    # frames older than a minute drop out of the average: nothing was committed in the last one
    fourth = frame(t0 + 130, 1450, t0 + 120, 0)
    assert fourth["tenant:a"].burn_per_min == 0.0
    fifth = frame(t0 + 140, 1510, t0 + 120, 60)
    assert fifth["tenant:a"].burn_per_min == pytest.approx(60 / 70 * 60)  # since t0 + 70

    totals = LedgerTotals(found=True, committed={"tokens": 10.0})
    tracker.observe_totals(totals, t0)
    assert totals.burn_per_min == {"tokens": None}
    totals = LedgerTotals(found=True, committed={"tokens": 70.0})
    tracker.observe_totals(totals, t0 + 30)
    assert totals.burn_per_min == {"tokens": pytest.approx(120.0)}


def test_runs_from_counts_splits_statuses_into_governor_states() -> None:
    row = runs_from_counts(
        "acme",
        {
            "Running": 5,
            "Completed": 7,
            "Failed": 6,
            "Terminated": 1,
            "TimedOut": 1,
            "ContinuedAsNew": 9,
        },
        paused=2,
        breached=3,
        killed=1,
    )
    assert row.model_dump() == {
        "tenant": "acme",
        "running": 3,
        "paused": 2,
        "completed": 7,
        "failed": 2,
        "breached": 3,
        "killed": 1,
        "ended_otherwise": 2,
    }
    assert row.total == 20  # continued-as-new runs are counted through their next run
    total = RunCounts(tenant="*", running=5, completed=9, breached=3)
    other = total.minus([row], "(other)")
    assert (other.running, other.completed, other.breached, other.paused) == (2, 2, 0, 0)


async def test_rate_limiter_paces_calls() -> None:
    limiter = RateLimiter(20.0, burst=2)
    began = time.monotonic()
    for _ in range(6):  # 2 at once, then one every 50 ms
        await limiter.acquire()
    assert time.monotonic() - began >= 0.18


def _frame(n: int) -> Frame:
    return Frame(
        at="2026-01-01T00:00:00Z",
        namespace="default",
        ledger_id="ledger",
        ledger=LedgerTotals(found=True, committed={"tokens": float(n)}),
        runs_total=RunCounts(tenant="*", running=n),
    )


async def test_live_loop_keeps_the_last_frame_when_one_fails() -> None:
    calls = 0

    async def gather(client: Any, options: TopOptions, burn: BurnTracker, **_: Any) -> Frame:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RPCError("resource exhausted", RPCStatusCode.RESOURCE_EXHAUSTED, b"")
        return _frame(calls)

    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    shown = await run_live(
        None,  # type: ignore[arg-type]
        TopOptions(),
        console,
        interval_s=0.01,
        frames=3,
        gather=gather,
    )
    assert shown == 3
    text = out.getvalue()
    assert text.count("temporal-governor top") == 3  # one frame after the other, not a terminal
    assert "error: resource exhausted (retrying)" in text
    assert "committed 1 tokens" in text and "committed 3 tokens" in text

    async def broken(*_: Any, **__: Any) -> Frame:
        raise RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b"")

    with pytest.raises(RPCError):  # no frame at all: the command fails (exit 3)
        await run_live(None, TopOptions(), console, frames=2, gather=broken)  # type: ignore[arg-type]


# -- a fleet on the dev server ------------------------------------------------------------------


async def invoke(args: list[str]) -> Result:
    """Run the CLI in a thread: its commands call asyncio.run, pytest's loop is running."""
    return await asyncio.to_thread(CliRunner().invoke, cli, args, env={"COLUMNS": "320"})


def address_of(env: Any) -> str:
    return env.client.service_client.config.target_host


def write_policy(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cells(output: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    for line in output.splitlines():
        parts = [p.strip() for p in line.split("│")]
        if len(parts) > 2 and parts[1] == first:
            return parts[1:-1]
    raise AssertionError(f"no row {first!r} in:\n{output}")


def counter_row(output: str, scope: str, window: str) -> list[str]:
    for line in output.splitlines():
        parts = [p.strip() for p in line.split("│")]
        if len(parts) > 3 and parts[1] == scope and parts[2] == "tokens" and parts[3] == window:
            return parts[1:-1]
    raise AssertionError(f"no counter row {scope} tokens {window} in:\n{output}")


def _seconds_until_early_in_a_minute(now: float, room: float = 30.0) -> float:
    """How long to wait until at least ``room`` seconds of the current minute are left."""
    left = 60.0 - now % 60.0
    return 0.0 if left >= room else left + 0.1


async def test_top_once_shows_a_running_fleet(governed, env, tmp_path) -> None:
    tag = uuid.uuid4().hex[:6]
    a, b, c, d = (f"{name}-{tag}" for name in ("acme", "globex", "initech", "umbrella"))
    ledger_id = f"ledger-{tag}"
    path = write_policy(
        tmp_path,
        {
            "shared": {"ledger_id": ledger_id},
            "tenants": {
                a: {
                    "quotas": {"max_tokens": 1000, "max_tokens_per_minute": 100_000},
                    "per_owner": {"max_tokens": 500},
                },
                b: {"quotas": {"max_tokens": 2000}},
                c: {"quotas": {"max_tokens": 300}},
            },
            "tools": {"spend": {"estimate": {"tokens": 100}}},
            "control": {"signing_key": CONTROL_KEY_ID},
            "visibility": {"search_attributes": True},
        },
    )
    policy = Policy.from_yaml(path)
    address = ["--address", address_of(env)]
    async with governed(policy, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant=b):
            assert await g.run(Spender.run, Steps(tokens=[100, 100, 100])) == 3
        breached_id = f"breach-{tag}"
        with attribution(tenant=c), pytest.raises(WorkflowFailureError) as failure:
            await g.run(Spender.run, Steps(tokens=[100] * 5), id=breached_id)
        breach = BreachDetails.from_error(failure.value)
        assert breach is not None and breach.limit == f"tenants.{c}.quotas.max_tokens"
        with attribution(tenant=d):
            looper = await g.start(Looper.run, Loop(steps=500, seconds=0.1), id=f"paused-{tag}")
            doomed = await g.start(Looper.run, Loop(steps=500, seconds=0.1), id=f"killed-{tag}")
        try:
            await eventually(lambda: _is(g, looper.id, "running"), timeout=30)
            await eventually(lambda: _is(g, doomed.id, "running"), timeout=30)
            terminate = await invoke(
                ["kill", "--run", doomed.id, "--mode", "terminate", "--policy", str(path),
                 "--issuer", "oncall@test", "--reason", "stop it", *address]
            )  # fmt: skip
            assert terminate.exit_code == 0, terminate.output
            await eventually(lambda: _is(g, doomed.id, "killed", "Failed"), timeout=30)
            kill = await invoke(
                ["kill", "--tenant", d, "--policy", str(path), "--task-queue", g.task_queue,
                 "--issuer", "oncall@test", "--reason", "runaway loop", *address]
            )  # fmt: skip
            assert kill.exit_code == 0, kill.output
            await eventually(lambda: _is(g, looper.id, "paused"), timeout=30)
            await eventually(lambda: _is(g, breached_id, "breached", "Failed"), timeout=30)
            # tenant a spends last, early in a clock minute, so that its per-minute window
            # (aligned on the minute) is still the current one when top reads it
            await asyncio.sleep(_seconds_until_early_in_a_minute(time.time()))
            with attribution(tenant=a, owner="alice"):
                assert await g.run(Spender.run, Steps(tokens=[100, 100])) == 2
            await eventually(lambda: _completed(g, a, 1), timeout=30)
            await eventually(lambda: _completed(g, b, 1), timeout=30)

            ledger = await g.client.get_workflow_handle(ledger_id).query("state", "")
            committed = {
                (x["scope"], x["window_s"]): x["committed"] for x in ledger["counters"]
                if x["resource"] == "tokens"
            }  # fmt: skip
            assert committed[(f"tenant:{a}", None)] == 200
            assert committed[(f"owner:{a}/alice", None)] == 200
            assert committed[(f"tenant:{b}", None)] == 300
            assert committed[(f"tenant:{c}", None)] == 300

            top = ["top", "--once", "--ledger-id", ledger_id, *address]
            for tenant in (a, b, c, d):
                top += ["--tenant", tenant]
            table = await invoke(top)
            assert table.exit_code == 0, table.output
            as_json = await invoke([*top, "--json"])
            assert as_json.exit_code == 0, as_json.output
            # five tenants: the ledger is read in one query and filtered, to the same counters
            wider = await invoke([*top, "--tenant", f"nobody-{tag}", "--json"])
            assert wider.exit_code == 0, wider.output
        finally:
            await looper.terminate()

    out = table.output
    # counters: committed, ceiling and % used per tenant and owner
    assert counter_row(out, f"tenant:{a}", "total")[3:7] == ["200", "0", "1,000", "20.0%"]
    assert counter_row(out, f"owner:{a}/alice", "total")[3:7] == ["200", "0", "500", "40.0%"]
    assert counter_row(out, f"tenant:{b}", "total")[3:7] == ["300", "0", "2,000", "15.0%"]
    assert counter_row(out, f"tenant:{c}", "total")[3:7] == ["300", "0", "300", "100.0%"]
    assert counter_row(out, f"tenant:{b}", "total")[8] == "—"  # no per-minute window: no rate yet
    assert counter_row(out, f"tenant:{a}", "total")[8].endswith("/min (1m window)")
    # runs by state: running, paused, completed, failed, breached, killed, ended otherwise, total
    assert cells(out, a)[1:] == ["0", "0", "1", "0", "0", "0", "0", "1"]
    assert cells(out, b)[1:] == ["0", "0", "1", "0", "0", "0", "0", "1"]
    assert cells(out, c)[1:] == ["0", "0", "0", "0", "1", "0", "0", "1"]
    assert cells(out, d)[1:] == ["0", "1", "0", "0", "0", "1", "0", "2"]
    assert cells(out, "all shown")[1:] == ["0", "1", "2", "0", "1", "1", "0", "5"]
    # the breach and the controls
    halted = next(line for line in out.splitlines() if breached_id in line)
    assert "breached" in halted and "300" in halted and breach.limit in halted
    killed = next(line for line in out.splitlines() if doomed.id in line)
    assert "killed" in killed and "stop it" in killed
    paused = next(line for line in out.splitlines() if looper.id in line)
    assert "paused" in paused and "oncall@test" in paused and "runaway loop" in paused
    fleet = next(line for line in out.splitlines() if f"tenant:{d}" in line)
    assert "kill (pause), in force" in fleet and "oncall@test" in fleet

    frame = json.loads(as_json.output)
    rows = {(r["scope"], r["resource"], r["window_s"]): r for r in frame["counters"]}
    for scope, used, ceiling, pct in (
        (f"tenant:{a}", 200, 1000, 20.0),
        (f"owner:{a}/alice", 200, 500, 40.0),
        (f"tenant:{b}", 300, 2000, 15.0),
        (f"tenant:{c}", 300, 300, 100.0),
    ):
        row = rows[(scope, "tokens", None)]
        assert (row["committed"], row["ceiling"], row["used_pct"]) == (used, ceiling, pct)
    assert {r["scope"] for r in frame["counters"]} == {
        f"tenant:{a}", f"owner:{a}/alice", f"tenant:{b}", f"tenant:{c}"
    }  # fmt: skip
    assert rows[(f"tenant:{b}", "tokens", None)]["burn_basis"] is None
    minute = rows[(f"tenant:{a}", "tokens", 60.0)]
    total = rows[(f"tenant:{a}", "tokens", None)]
    at = _epoch(frame["at"])
    assert total["burn_basis"] == "window"
    assert total["burn_per_min"] == pytest.approx(
        minute["committed"] / max(at - minute["window_start"], 1.0) * 60
    )
    runs = {r["tenant"]: r for r in frame["runs"]}
    assert runs[a]["completed"] == runs[b]["completed"] == 1
    assert runs[c]["breached"] == 1 and runs[d]["paused"] == runs[d]["killed"] == 1
    assert frame["runs_total"] == {
        "tenant": "*", "running": 0, "paused": 1, "completed": 2, "failed": 0,
        "breached": 1, "killed": 1, "ended_otherwise": 0,
    }  # fmt: skip
    halted_runs = {r["workflow_id"]: r for r in frame["halted"]}
    assert set(halted_runs) == {breached_id, doomed.id}
    assert halted_runs[doomed.id]["state"] == "killed"
    assert [r["workflow_id"] for r in frame["halted"]] == [doomed.id, breached_id]  # newest first
    halted_run = halted_runs[breached_id]
    assert (halted_run["workflow_id"], halted_run["state"], halted_run["tenant"]) == (
        breached_id,
        "breached",
        c,
    )
    assert halted_run["spent"]["tokens"] == 300 and breach.limit in halted_run["breach"]
    [paused_run] = frame["paused"]
    assert (paused_run["workflow_id"], paused_run["paused_by"], paused_run["reason"]) == (
        looper.id,
        "oncall@test",
        "runaway loop",
    )
    [control] = [x for x in frame["controls"] if x["scope"] == f"tenant:{d}"]
    assert (control["action"], control["mode"], control["in_force"]) == ("kill", "pause", True)
    # the table and the JSON show the same frame
    for (scope, resource, window), row in rows.items():
        if resource == "tokens" and window is None:
            assert counter_row(out, scope, "total")[6] == format_pct(row["used_pct"])
    assert frame["warnings"] == []
    wide = json.loads(wider.output)
    assert {(r["id"], r["committed"], r["ceiling"]) for r in wide["counters"]} == {
        (r["id"], r["committed"], r["ceiling"]) for r in frame["counters"]
    }
    assert {r["tenant"]: r for r in wide["runs"]}[f"nobody-{tag}"]["completed"] == 0


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def _is(g: Any, workflow_id: str, state: str, status: str = "Running") -> bool:
    """Visibility shows the run in this governor state and execution status (as `top` counts)."""
    query = (
        f"WorkflowId = '{workflow_id}' AND GovernorState = '{state}' "
        f"AND ExecutionStatus = '{status}'"
    )
    return (await g.client.count_workflows(query)).count == 1


async def test_live_frames_measure_burn_between_frames(governed, env, tmp_path) -> None:
    tag = uuid.uuid4().hex[:6]
    tenant, ledger_id = f"burner-{tag}", f"ledger-{tag}"

    policy = Policy.from_dict(
        {
            "shared": {"ledger_id": ledger_id, "leases": False},
            "tenants": {tenant: {"quotas": {"max_tokens": 100_000}}},
            "tools": {"spend": {"estimate": {"tokens": 100}}},
            "visibility": {"search_attributes": True},
        }
    )
    options = TopOptions(ledger_id=ledger_id, tenants=(tenant,))
    async with governed(policy, WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant=tenant):
            assert await g.run(Spender.run, Steps(tokens=[100])) == 1
        burn = BurnTracker()
        first = await gather_frame(g.client, options, burn)
        [row] = first.counters
        assert (row.committed, row.burn_per_min, row.burn_basis) == (100, None, None)
        with attribution(tenant=tenant):
            assert await g.run(Spender.run, Steps(tokens=[100, 200])) == 2
        second = await gather_frame(g.client, options, burn)
        [row] = second.counters
        minutes = (second.at - first.at).total_seconds() / 60
        assert row.committed == 400 and row.burn_basis == "frames"
        assert row.burn_per_min == pytest.approx(300 / minutes, rel=1e-4)  # `at` is to the µs
        assert second.ledger.burn_per_min["tokens"] == pytest.approx(300 / minutes, rel=1e-4)
        assert "/min" in format_burn("tokens", row.burn_per_min)
        Console(file=io.StringIO()).print(render_frame(second, 1.0))  # renders

        await eventually(lambda: _completed(g, tenant, 2), timeout=30)
        live = await invoke(
            ["top", "--frames", "2", "--interval", "0.3", "--tenant", tenant,
             "--ledger-id", ledger_id, "--address", address_of(env)]
        )  # fmt: skip
    assert live.exit_code == 0, live.output
    assert live.output.count("temporal-governor top") == 2  # not a terminal: frame after frame
    assert cells(live.output, tenant)[1:] == ["0", "0", "2", "0", "0", "0", "0", "2"]


async def _completed(g: Any, tenant: str, n: int) -> bool:
    query = (
        f"GovernorTenant = '{tenant}' AND GovernorState = 'completed' "
        "AND ExecutionStatus = 'Completed'"
    )
    return (await g.client.count_workflows(query)).count == n


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_top_errors_are_one_line_with_the_cli_exit_codes(env) -> None:
    nowhere = await invoke(["top", "--once", "--address", f"127.0.0.1:{closed_port()}"])
    assert nowhere.exit_code == EXIT_UNREACHABLE, nowhere.output
    assert nowhere.output.startswith("error: cannot reach Temporal at 127.0.0.1:")
    assert len(nowhere.output.strip().splitlines()) == 1 and "Traceback" not in nowhere.output

    for args in (
        ["--once", "--address", "localhost:abc"],
        ["--json", "--address", address_of(env)],
        ["--once", "--frames", "2", "--address", address_of(env)],
        ["--once", "--interval", "0", "--address", address_of(env)],
    ):
        bad = await invoke(["top", *args])
        assert bad.exit_code == EXIT_BAD_INPUT, (args, bad.output)
        assert len(bad.output.strip().splitlines()) == 1 and bad.output.startswith("error:")

    # no ledger (no shared quota used yet) is no failure: a warning in the frame
    missing = await invoke(
        ["top", "--once", "--json", "--tenant", f"nobody-{uuid.uuid4().hex[:6]}",
         "--ledger-id", f"no-ledger-{uuid.uuid4().hex[:6]}", "--address", address_of(env)]
    )  # fmt: skip
    assert missing.exit_code == 0, missing.output
    frame = json.loads(missing.output)
    assert frame["ledger"]["found"] is False and frame["counters"] == []
    assert "not running" in frame["warnings"][0]
    assert frame["runs_total"]["paused"] == 0 and frame["halted"] == []


def test_help_says_how_the_burn_rate_is_found() -> None:
    result = CliRunner().invoke(cli, ["top", "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Burn rate: committed per minute" in text
    assert "per-minute window" in text and "—" in text
    assert "--once" in text and "--json" in text and "Examples:" in text
