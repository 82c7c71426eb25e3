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
