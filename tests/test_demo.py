"""The main demo, as `make demo` runs it (here on the session's dev server): it succeeds
and its output holds only its own lines (no SDK log lines, no tracebacks); the
verification commands it prints work on the histories it wrote."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from temporal_governor.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = re.compile(r"WARN|ERROR|Traceback|^\d{4}-\d\d-\d\dT|temporalio|sdk_core")
PROGRAM = ".venv/bin/temporal-governor"


def run_printed(command: str) -> Result:
    """Run a command line the demo printed (`[VAR=value ...] .venv/bin/temporal-governor
    args`) in this process, from the repository's root, as the shell would run it there.

    The CLI as a process (its exit codes, its exit without finalization) is tested in
    test_cli_connect.py; here it is the printed arguments that must work."""
    words = shlex.split(command)
    program = words.index(PROGRAM)
    assignments = dict(word.split("=", 1) for word in words[:program])
    return CliRunner(env=assignments).invoke(cli, words[program + 1 :])


async def test_the_demo_succeeds_and_prints_only_its_own_lines(
    env, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = {**os.environ, "TEMPORAL_ADDRESS": env.client.service_client.config.target_host}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "examples/demo.py"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    assert done.stdout.splitlines()[-1] == "demo OK - overdraft 0.0"
    foreign = [line for line in lines if FOREIGN.search(line)]
    assert not foreign, foreign
    assert any("HALTED: BudgetExceeded" in line for line in lines)
    assert any("unsigned resume from oncall@demo: refused" in line for line in lines)
    # the verification commands the demo prints work on the histories it wrote
    commands = [line.strip() for line in lines if "temporal-governor verify" in line]
    commands += [line.strip() for line in lines if "--bundle out/incident.zip" in line]
    assert len(commands) == 3, lines[-12:]
    monkeypatch.chdir(ROOT)  # the printed paths are relative to the repository
    outputs = []
    for command in sorted(commands, key=lambda c: ("--bundle " not in c, "verify-bundle" in c)):
        ran = await asyncio.to_thread(run_printed, command)
        assert ran.exit_code == 0, (command, ran.output[-3000:], ran.exception)
        outputs.append(ran.output)
    suggestion, bundle, verified = (
        next(o for o in outputs if "max_tokens_per_task" in o and "would halt" in o),
        next(o for o in outputs if "bundle written" in o),
        next(o for o in outputs if o.startswith("verified")),
    )
    assert "agents:" in suggestion and bundle and "chained decisions" in verified
