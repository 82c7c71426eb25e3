"""The CLI as a real process against a dev server: every command that talks to a server
exits with its documented code, time after time, without finalizing the interpreter (the
SDK's native threads could crash it there), and connects the way the `temporal` CLI does
(environment variables and profile files)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import CONTROL_KEY_ID, eventually
from temporal_governor import Policy, attribution
from temporal_governor.cli import main as cli_main
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS, Spender, Steps, Waiter

CLI = Path(sys.executable).parent / "temporal-governor"
ROOT = Path(__file__).resolve().parents[1]
RUNS = 2
"""How many times each command runs. The abort at exit was seen about 4 times in 56 runs
of a CLI that finalized the interpreter; every run here also checks that the process left
without finalizing (``FINALIZED``), which catches the cause at every run, not 7% of them."""
FINALIZED = "temporal-governor-test: interpreter finalized"
"""Printed by an exit handler of every CLI process the tests start, if exit handlers run."""


@pytest.fixture(scope="module")
def finalization_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ``sitecustomize`` makes a process print FINALIZED if it finalizes."""
    folder = tmp_path_factory.mktemp("probe")
    (folder / "sitecustomize.py").write_text(
        "import atexit, os\n"
        f"atexit.register(lambda: os.write(2, {(FINALIZED + chr(10)).encode()!r}))\n"
    )
    # the control: a process that does finalize must print it, or the probe checks nothing
    control = subprocess.run(
        [sys.executable, "-c", "pass"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(folder)},
        timeout=60,
    )
    assert FINALIZED in control.stderr, f"the probe did not load: {control.stderr[-500:]}"
    return folder


def address_of(env) -> str:  # type: ignore[no-untyped-def]
    return env.client.service_client.config.target_host


async def cli(
    *args: str, env: dict[str, str] | None = None, probe: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed `temporal-governor` program; with ``probe``, under that folder's
    ``sitecustomize`` (see ``finalization_probe``)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    environment.update(
        {"TEMPORAL_GOVERNOR_KEYS": os.environ["TEMPORAL_GOVERNOR_KEYS"], "COLUMNS": "200"}
    )
    if probe is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(probe), environment.get("PYTHONPATH")])
        )
    environment.update(env or {})
    return await asyncio.to_thread(
        subprocess.run,
        [str(CLI), *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=120,
    )


async def test_every_server_command_exits_with_its_documented_code_every_time(
    governed, env, tmp_path, finalization_probe: Path
) -> None:
    ledger_id = f"ledger-{uuid.uuid4().hex[:8]}"
    data = {
        "shared": {"ledger_id": ledger_id},
        "tenants": {"acme": {"quotas": {"max_tokens": 100000}}},
        "control": {"signing_key": CONTROL_KEY_ID},
        "visibility": {"search_attributes": True},
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    policy = Policy.from_yaml(path)
    address = ["--address", address_of(env)]
    async with governed(policy, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        with attribution(tenant="acme"):
            done = await g.run(Spender.run, Steps(tokens=[10, 20]), id=f"cli-done-{uuid.uuid4()}")
            waiting = await g.start(Waiter.run, id=f"cli-wait-{uuid.uuid4()}")
        assert done == 2

        async def started() -> bool:
            return (await waiting.describe()).status is not None

        await eventually(started)

        async def visible() -> bool:  # visibility is eventually consistent
            query = "GovernorTenant = 'acme'"
            return len([w async for w in g.client.list_workflows(query)]) >= 2

        await eventually(visible, timeout=30)
        send = ["--policy", str(path), *address, "--issuer", "cli-test"]
        commands: dict[str, tuple[list[str], int]] = {
            "status": (["status", waiting.id, *address], 0),
            "list": (["list", "--tenant", "acme", *address], 0),
            "budget": (["budget", "--ledger-id", ledger_id, *address], 0),
            "kill": (["kill", "--run", waiting.id, "--reason", "test", *send], 0),
            "resume": (["resume", "--run", waiting.id, "--reason", "test", *send], 0),
            "backpressure": (
                ["backpressure", "--run", waiting.id, "--retry-after-ms", "10", *send],
                0,
            ),
            "override": (
                [
                    "override",
                    "--run",
                    waiting.id,
                    "--limit",
                    "max_tokens_per_task",
                    "--value",
                    "10",
                    "--for",
                    "1s",
                    *send,
                ],
                0,
            ),
            "status of a missing run": (["status", f"missing-{uuid.uuid4()}", *address], 3),
        }
        gate = asyncio.Semaphore(3)

        async def one(name: str, args: list[str]) -> tuple[str, int, str]:
            async with gate:
                done_ = await cli(*args, probe=finalization_probe)
            return name, done_.returncode, done_.stderr

        results = await asyncio.gather(
            *(one(name, args) for name, (args, _) in commands.items() for _ in range(RUNS))
        )
        await waiting.terminate()
    for name, code, stderr in results:
        expected = commands[name][1]
        assert code == expected, f"{name}: exit {code} (expected {expected}): {stderr[-500:]}"
        assert "Fatal Python error" not in stderr and "Traceback" not in stderr, stderr
        assert FINALIZED not in stderr, f"{name}: the process finalized the interpreter"
    assert len(results) == RUNS * len(commands)


async def test_the_cli_connects_through_environment_variables_and_profiles(
    governed, env, tmp_path
) -> None:
    p = Policy.from_dict({})
    async with governed(p, ALL_WORKFLOWS, ALL_ACTIVITIES) as g:
        handle = await g.start(Waiter.run, id=f"cli-env-{uuid.uuid4()}")
        host = address_of(env)
        config = tmp_path / "temporal.toml"
        config.write_text(
            f'[profile.default]\naddress = "127.0.0.1:1"\n\n'
            f'[profile.staging]\naddress = "{host}"\nnamespace = "default"\n'
        )
        bad_file = tmp_path / "bad.toml"
        bad_file.write_text("[profile.default\naddress = ")
        (
            by_env,
            by_profile,
            default_profile,
            flag_wins,
            wrong_namespace,
            broken,
        ) = await asyncio.gather(
            cli("status", handle.id, env={"TEMPORAL_ADDRESS": host}),
            cli(
                "status",
                handle.id,
                env={"TEMPORAL_CONFIG_FILE": str(config), "TEMPORAL_PROFILE": "staging"},
            ),
            cli("status", handle.id, env={"TEMPORAL_CONFIG_FILE": str(config)}),
            cli(
                "status",
                handle.id,
                "--address",
                host,
                env={"TEMPORAL_CONFIG_FILE": str(config)},
            ),
            cli(
                "status",
                handle.id,
                env={"TEMPORAL_ADDRESS": host, "TEMPORAL_NAMESPACE": "nope"},
            ),
            cli("status", handle.id, env={"TEMPORAL_CONFIG_FILE": str(bad_file)}),
        )
        await handle.terminate()
    assert by_env.returncode == 0, by_env.stderr
    assert handle.id in by_env.stdout
    assert by_profile.returncode == 0, by_profile.stderr
    assert default_profile.returncode == 3 and "127.0.0.1:1" in default_profile.stderr
    assert flag_wins.returncode == 0, flag_wins.stderr
    assert wrong_namespace.returncode == 3, wrong_namespace.stderr
    assert broken.returncode == 2 and "environment configuration" in broken.stderr
    for done in (default_profile, wrong_namespace, broken):
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("command", [["budget", "--help"], ["replay", "--help"]])
def test_help_examples_render_as_examples(command: list[str]) -> None:
    # help is click's rendering alone: no server, no process needed
    shown = CliRunner(env={"COLUMNS": "200"}).invoke(cli_main, command)
    assert shown.exit_code == 0, shown.output
    assert "\\b" not in shown.output
    lines = shown.output.splitlines()
    example = lines.index("  Example:")
    assert lines[example + 1].startswith("    temporal-governor ")
    assert lines[example + 2].strip().startswith(("temporal-governor", "--"))
