"""The control commands of the CLI (kill, resume, backpressure, override, status) on a dev server."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from conftest import CONTROL_KEY_ID, eventually
from control_workflows import CONTROL_ACTIVITIES, CONTROL_WORKFLOWS, Loop, Looper
from temporal_governor import Policy
from temporal_governor.cli import EXIT_BAD_INPUT, EXIT_UNREACHABLE
from temporal_governor.cli import main as cli
from temporal_governor.control import CONTROL_QUERY

POLICY_YAML = """
agents: { Looper: { quotas: { max_tokens_per_task: 10000 } } }
tools: { step: { estimate: { tokens: 50 } } }
"""


async def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    """Run the CLI in a thread: its commands call asyncio.run, pytest's loop is running."""
    environment = {"COLUMNS": "200", **(env or {})}
    return await asyncio.to_thread(CliRunner().invoke, cli, args, env=environment)


def flat(result: Result) -> str:
    """The output (stdout and stderr) with whitespace runs squeezed: immune to rich's wrapping."""
    return " ".join(result.output.split())


def address_of(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


def policy_file(tmp_path: Path) -> tuple[Policy, str]:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_YAML)
    return Policy.from_yaml(path), str(path)


async def control_state(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    try:
        return await handle.query(CONTROL_QUERY)  # type: ignore[no-any-return]
    except Exception:
        return {}  # not started yet


async def test_kill_status_resume(governed, env, tmp_path) -> None:
    policy, path = policy_file(tmp_path)
    common = ["--policy", path, "--address", address_of(env), "--issuer", "oncall@test"]
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Looper.run, Loop(steps=3, seconds=0.2))
        await eventually(lambda: _has_state(handle))

        killed = await invoke(["kill", "--run", handle.id, "--reason", "too hot", *common])
        assert killed.exit_code == 0, killed.output
        assert f"kill (pause) sent to run {handle.id}" in flat(killed)
        assert f"signed with key {CONTROL_KEY_ID}" in flat(killed)
        await eventually(lambda: _in_state(handle, "paused"))

        status = await invoke(["status", handle.id, "--address", address_of(env)])
        assert status.exit_code == 0, status.output
        text = flat(status)
        assert f"{handle.id} (run {handle.result_run_id}): paused" in text
        assert "paused by oncall@test" in text and "(too hot)" in text
        assert "budget committed:" in text
        row = next(line for line in status.output.splitlines() if " kill " in line)
        assert "✓" in row and "oncall@test" in row and "too hot" in row and "paused" in row

        resumed = await invoke(["resume", "--run", handle.id, "--reason", "ok", *common])
        assert resumed.exit_code == 0, resumed.output
        assert f"resume sent to run {handle.id}" in flat(resumed)
        assert await handle.result() == 30

        final = await invoke(["status", handle.id, "--address", address_of(env), "--json"])
        assert final.exit_code == 0, final.output
        audit = json.loads(final.output)["control"]["audit"]
        assert [(r["signal"], r["accepted"], r["outcome"]) for r in audit][1] == (
            "governor.resume",
            True,
            "resumed",
        )
        assert audit[1]["reason"] == "ok" and audit[1]["issuer"] == "oncall@test"


async def _has_state(handle: WorkflowHandle[Any, Any]) -> bool:
    return bool(await control_state(handle))


async def _in_state(handle: WorkflowHandle[Any, Any], state: str) -> bool:
    return (await control_state(handle)).get("state") == state


async def test_bad_targets_missing_keys_and_unknown_workflow(env, tmp_path) -> None:
    _, path = policy_file(tmp_path)
    address = ["--address", address_of(env)]

    none = await invoke(["kill", "--policy", path, *address])
    assert none.exit_code == EXIT_BAD_INPUT
    assert "no target given" in flat(none) and "exactly one of --run, --tree" in flat(none)

    two = await invoke(["kill", "--run", "wf-1", "--tenant", "acme", "--policy", path, *address])
    assert two.exit_code == EXIT_BAD_INPUT
    assert "several targets given (--run, --tenant)" in flat(two)

    no_keys = await invoke(
        ["resume", "--run", "wf-1", "--policy", path, *address],
        env={"TEMPORAL_GOVERNOR_KEYS": ""},
    )
    assert no_keys.exit_code == EXIT_BAD_INPUT, no_keys.output
    assert "no control key to sign with" in flat(no_keys)
    assert "$TEMPORAL_GOVERNOR_KEYS" in flat(no_keys)
    assert "Traceback" not in no_keys.output

    missing = await invoke(["status", f"no-such-{uuid.uuid4()}", *address])
    assert missing.exit_code == EXIT_UNREACHABLE, missing.output
    assert "error:" in flat(missing) and "Traceback" not in missing.output

    nowhere = await invoke(["kill", "--run", f"no-such-{uuid.uuid4()}", "--policy", path, *address])
    assert nowhere.exit_code == EXIT_UNREACHABLE, nowhere.output
    assert "not delivered to no-such-" in flat(nowhere)


async def test_override_shows_in_status(governed, env, tmp_path) -> None:
    policy, path = policy_file(tmp_path)
    common = ["--policy", path, "--address", address_of(env)]
    async with governed(policy, CONTROL_WORKFLOWS, CONTROL_ACTIVITIES) as g:
        handle = await g.start(Looper.run, Loop(steps=10, seconds=0.2))
        await eventually(lambda: _has_state(handle))
        args = ["--limit", "max_tokens_per_task", "--value", "5000", "--for", "10m"]
        result = await invoke(["override", "--run", handle.id, *args, "--reason", "big", *common])
        assert result.exit_code == 0, result.output
        text = flat(result)
        assert f"override max_tokens_per_task = 5000 for 600 s sent to run {handle.id}" in text

        await eventually(lambda: _overridden(handle))
        status = await invoke(["status", handle.id, "--address", address_of(env), "--json"])
        assert status.exit_code == 0, status.output
        [override] = json.loads(status.output)["control"]["overrides"]
        assert override["limit"] == "max_tokens_per_task"
        assert (override["before"], override["value"]) == (10000, 5000)
        assert override["reason"] == "big"

        table = await invoke(["status", handle.id, "--address", address_of(env)])
        assert "override max_tokens_per_task: 10000 -> 5000 until" in flat(table)
        assert await handle.result() == 100


async def _overridden(handle: WorkflowHandle[Any, Any]) -> bool:
    return bool((await control_state(handle)).get("overrides"))
