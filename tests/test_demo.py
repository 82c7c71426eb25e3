"""The main demo, as `make demo` runs it (here on the session's dev server): it succeeds
and its output holds only its own lines (no SDK log lines, no tracebacks)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = re.compile(r"WARN|ERROR|Traceback|^\d{4}-\d\d-\d\dT|temporalio|sdk_core")


async def test_the_demo_succeeds_and_prints_only_its_own_lines(env) -> None:
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
    outputs = []
    for command in sorted(commands, key=lambda c: ("--bundle " not in c, "verify-bundle" in c)):
        keys, _, command = command.rpartition(" .venv/bin/")
        assignment = dict([keys.split("=", 1)]) if keys else {}
        argv = [sys.executable, "-m", "temporal_governor.cli", *command.split()[1:]]
        ran = await asyncio.to_thread(
            subprocess.run,
            argv,
            cwd=ROOT,
            env={**environment, **assignment},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, (command, ran.stdout[-2000:], ran.stderr[-2000:])
        outputs.append(ran.stdout + ran.stderr)
    suggestion, bundle, verified = (
        next(o for o in outputs if "max_tokens_per_task" in o and "would halt" in o),
        next(o for o in outputs if "bundle written" in o),
        next(o for o in outputs if o.startswith("verified")),
    )
    assert "agents:" in suggestion and bundle and "chained decisions" in verified
