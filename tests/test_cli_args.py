"""Bad arguments to the CLI: one line on stderr, a documented exit code, never a traceback.

The CLI runs as the real program (a subprocess of the installed ``temporal-governor``
script), so that what is checked is what a shell sees: the exit status and both streams.
Most cases need no server; the ones about namespaces and missing workflows use the dev
server of the session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from temporalio.testing import WorkflowEnvironment

from temporal_governor import cli as cli_module
from temporal_governor.cli import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
)

PROGRAM = Path(sys.executable).parent / "temporal-governor"
ROOT = Path(__file__).resolve().parents[1]


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, module: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a program, with no Temporal settings inherited from the environment."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_GOVERNOR_"))
    }
    environment.update(env or {})
    command = [sys.executable, "-m", "temporal_governor.cli"] if module else [str(PROGRAM)]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=cwd or ROOT,
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Assert the exit code, exactly one ``error:`` line on stderr, no traceback anywhere."""
    assert done.returncode == code, (done.returncode, done.stderr, done.stdout)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cli") / "policy.yaml"
    path.write_text("agents: { planner: { quotas: { max_tokens_per_task: 1000 } } }\n")
    return str(path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An address that accepts TCP connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


# -- addresses and namespaces --------------------------------------------------------------


BAD_ADDRESSES = [
    ("localhost:abc", "the port 'abc' is not a number from 1 to 65535"),
    ("host:99999", "the port '99999' is not a number from 1 to 65535"),
    ("host:0", "the port '0' is not a number from 1 to 65535"),
    ("host:-1", "is not a number from 1 to 65535"),
    ("[::1", "an IPv6 address needs its closing ']'"),
    ("[::zz]:7233", "is not an IPv6 address"),
    ("::1:7233", "an IPv6 address goes in brackets"),
    ("http://localhost:7233", "no scheme is needed"),
    ("localhost", "the port is missing"),
    (":7233", "the host is missing"),
    ("", "the port is missing"),
    ("a b:7233", "is not a host name"),
]
COMMANDS = ["status", "list", "budget", "kill"]


def command_args(command: str, policy: str) -> list[str]:
    return {
        "status": ["status", "wf-1"],
        "list": ["list"],
        "budget": ["budget"],
        "kill": ["kill", "--unsigned", "--run", "wf-1", "--policy", policy],
    }[command]


@pytest.mark.parametrize(("address", "problem"), BAD_ADDRESSES)
def test_a_bad_address_is_one_line_and_exit_2(address: str, problem: str, policy: str) -> None:
    command = COMMANDS[[a for a, _ in BAD_ADDRESSES].index(address) % len(COMMANDS)]
    done = run(*command_args(command, policy), "--address", address)
    one_line(done, EXIT_BAD_INPUT, f"--address {address!r}", problem)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_that_connects_checks_the_address(command: str, policy: str) -> None:
    done = run(*command_args(command, policy), "--address", "localhost:abc")
    one_line(done, EXIT_BAD_INPUT, "--address 'localhost:abc'")


def test_a_bad_address_from_the_environment_is_refused_too() -> None:
    done = run("status", "wf-1", env={"TEMPORAL_ADDRESS": "localhost:abc"})
    one_line(done, EXIT_BAD_INPUT, "--address 'localhost:abc'")


def test_a_closed_port_is_exit_3() -> None:
    address = f"127.0.0.1:{free_port()}"
    one_line(run("status", "wf-1", "--address", address), EXIT_UNREACHABLE, "connection refused")


def test_an_unknown_host_is_exit_3() -> None:
    done = run("list", "--address", "no-such-host.invalid:7233")
    one_line(done, EXIT_UNREACHABLE, "cannot reach Temporal at no-such-host.invalid:7233")


def test_a_server_that_never_answers_is_exit_3_after_the_timeout(silent_server: str) -> None:
    done = run(
        "status",
        "wf-1",
        "--address",
        silent_server,
        env={"TEMPORAL_GOVERNOR_CONNECT_TIMEOUT": "1"},
    )
    one_line(done, EXIT_UNREACHABLE, "no answer within 1 s")


@pytest.mark.parametrize("timeout", ["abc", "0", "-1", "nan", "inf"])
def test_a_bad_connect_timeout_is_exit_2(timeout: str) -> None:
    done = run("status", "wf-1", env={"TEMPORAL_GOVERNOR_CONNECT_TIMEOUT": timeout})
    one_line(done, EXIT_BAD_INPUT, "TEMPORAL_GOVERNOR_CONNECT_TIMEOUT")


@pytest.mark.parametrize("namespace", ["", " ", "two words"])
def test_a_malformed_namespace_is_exit_2(namespace: str) -> None:
    done = run("status", "wf-1", "--namespace", namespace)
    one_line(done, EXIT_BAD_INPUT, "--namespace")


def address_of(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


@pytest.mark.parametrize("command", [["status", "wf-1"], ["list"], ["budget"]])
def test_an_unknown_namespace_is_exit_3(env: WorkflowEnvironment, command: list[str]) -> None:
    namespace = f"no-such-namespace-{uuid.uuid4().hex[:8]}"
    done = run(*command, "--address", address_of(env), "--namespace", namespace)
    one_line(done, EXIT_UNREACHABLE, namespace)


def test_an_unknown_workflow_and_ledger_are_exit_3(env: WorkflowEnvironment) -> None:
    address = address_of(env)
    missing = f"no-such-{uuid.uuid4().hex[:8]}"
    one_line(run("status", missing, "--address", address), EXIT_UNREACHABLE, missing)
    done = run("budget", "--ledger-id", missing, "--address", address)
    one_line(done, EXIT_UNREACHABLE, f"ledger {missing}")


# -- files ---------------------------------------------------------------------------------


def test_missing_and_wrong_kinds_of_files_are_exit_2(tmp_path: Path, policy: str) -> None:
    replay = ["replay", "wf-1", "--workflows", "examples.agents"]
    one_line(run(*replay, "--policy", str(tmp_path / "nope.yaml")), EXIT_BAD_INPUT, "nope.yaml")
    one_line(run(*replay, "--policy", str(tmp_path)), EXIT_BAD_INPUT, "--policy")
    done = run(*replay, "--policy", policy, "--history", str(tmp_path / "nope.json"))
    one_line(done, EXIT_BAD_INPUT, "--history", "nope.json")
    done = run(*replay, "--policy", policy, "--history", str(tmp_path))  # no *.json in it
    one_line(done, EXIT_BAD_INPUT, "no *.json history file")
    out = tmp_path / "no-such-folder" / "report.json"
    done = run(*replay, "--policy", policy, "--history", policy, "--json", str(out))
    one_line(done, EXIT_BAD_INPUT, "--json", "does not exist")
    done = run(*replay, "--policy", policy, "--history", policy, "--html", str(tmp_path))
    one_line(done, EXIT_BAD_INPUT, "--html")
    done = run("budget", "--policy", str(tmp_path / "nope.yaml"))
    one_line(done, EXIT_BAD_INPUT, "nope.yaml")
    done = run("kill", "--run", "wf-1", "--policy", str(tmp_path / "nope.yaml"))
    one_line(done, EXIT_BAD_INPUT, "nope.yaml")


@pytest.mark.parametrize(
    "content",
    ["{bad json", "[]", '{"events": 5}', '{"events": [{}]}', "\x00\x01", ""],
)
def test_a_history_file_that_is_not_history_json_is_exit_2(
    tmp_path: Path, policy: str, content: str
) -> None:
    history = tmp_path / "root.json"
    history.write_text(content)
    done = run(
        "replay",
        "wf-1",
        "--policy",
        policy,
        "--workflows",
        "examples.agents",
        "--history",
        str(history),
    )
    one_line(done, EXIT_BAD_INPUT)


def test_an_invalid_policy_is_one_line_with_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agnets: {}\nagents: { a: { quotas: { max_tokens_per_task: -1 } } }\n")
    line = one_line(run("budget", "--policy", str(bad)), EXIT_BAD_INPUT, "(2 problems)")
    assert "agnets" in line and "agents.a.quotas.max_tokens_per_task" in line


def test_a_policy_alias_bomb_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 30)]
    bomb.write_text("\n".join(lines) + "\n")
    one_line(run("budget", "--policy", str(bomb)), EXIT_BAD_INPUT, "values")


def test_unreadable_keys_files_are_exit_2(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text("{bad json")
    broken = tmp_path / "broken.yaml"
    broken.write_text("control: { keys_file: keys.json }\n")
    one_line(run("resume", "--run", "wf-1", "--policy", str(broken)), EXIT_BAD_INPUT, "keys.json")
    missing = tmp_path / "missing.yaml"
    missing.write_text("control: { keys_file: nope.json }\n")
    one_line(run("resume", "--run", "wf-1", "--policy", str(missing)), EXIT_BAD_INPUT, "nope.json")


# -- options, modules and commands ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["bogus"], "No such command 'bogus'"),
        (["status"], "Missing argument 'WORKFLOW_ID'"),
        (["status", "wf-1", "--bogus"], "--bogus"),
        (["list", "--limit", "0"], "--limit"),
        (["list", "--limit", "many"], "--limit"),
        (["list", "--state", "exploded"], "--state"),
        (["kill", "--policy", "{policy}"], "no target given"),
        (["kill", "--run", "a", "--tenant", "b", "--policy", "{policy}"], "several targets"),
        (["kill", "--run", " ", "--policy", "{policy}"], "--run needs a non-empty value"),
        (["kill", "--run", "a", "--mode", "explode", "--policy", "{policy}"], "--mode"),
        (["override", "--run", "a", "--limit", "max_tokens_per_task", "--value", "nan"], "finite"),
        (["override", "--run", "a", "--limit", "max_tokens_per_task", "--value", "-1"], "--value"),
        (["override", "--run", "a", "--limit", "max_tokens_per_task", "--value", "inf"], "--value"),
        (["override", "--run", "a", "--limit", "nope", "--value", "1"], "--limit"),
        (
            ["override", "--run", "a", "--limit", "max_tokens_per_task", "--value", "1", "--for"],
            "--for",
        ),
        (["backpressure", "--run", "a", "--retry-after-ms", "-5"], "--retry-after-ms"),
        (["backpressure", "--run", "a", "--retry-after-ms", "5", "--duration-ms", "0"], "--dura"),
        (["budget", "--tenant", "a", "--scope", "b"], "give --tenant or --scope, not both"),
        (["replay", "wf-1", "--policy", "{policy}", "--workflows", "no_such_module"], "no_such"),
        (["replay", "wf-1", "--policy", "{policy}", "--workflows", "json"], "no @workflow.defn"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args: list[str], fragment: str, policy: str) -> None:
    needs_policy = args[0] in ("override", "backpressure") and "--policy" not in args
    args = [arg.replace("{policy}", policy) for arg in args]
    if needs_policy:
        args += ["--policy", policy]
    one_line(run(*args), EXIT_BAD_INPUT, fragment)


@pytest.mark.parametrize("duration", ["0", "-5s", "forever", "nan", "inf", "99999d", "1e400"])
def test_a_bad_override_duration_is_exit_2(duration: str, policy: str) -> None:
    done = run(
        "override",
        "--run",
        "a",
        "--limit",
        "max_tokens_per_task",
        "--value",
        "1",
        "--for",
        duration,
        "--policy",
        policy,
    )
    one_line(done, EXIT_BAD_INPUT, "--for")


def test_a_module_that_fails_to_import_is_exit_2(tmp_path: Path, policy: str) -> None:
    (tmp_path / "exploding.py").write_text("raise RuntimeError('boom at import')\n")
    done = run("replay", "wf-1", "--policy", policy, "--workflows", "exploding", cwd=tmp_path)
    one_line(done, EXIT_BAD_INPUT, "cannot import 'exploding'", "boom at import")


def test_python_dash_m_behaves_the_same() -> None:
    done = run("status", "wf-1", "--address", "localhost:abc", module=True)
    one_line(done, EXIT_BAD_INPUT, "--address 'localhost:abc'")


def test_help_documents_the_exit_codes() -> None:
    done = run("--help")
    assert done.returncode == 0 and done.stderr == ""
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "130 "):
        assert f"\n    {code}" in done.stdout, done.stdout
    status = run("status", "--help")
    assert "Exit codes:" in status.stdout and "temporal-governor --help" in status.stdout


# -- what is left: bugs and interruptions (in process, a fault put into our own code) ------


def test_an_unexpected_error_is_one_line_and_exit_4(
    monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    def broken(path: str) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli_module, "_load_policy", broken)
    monkeypatch.delenv("TEMPORAL_GOVERNOR_TRACEBACK", raising=False)
    result = CliRunner().invoke(cli_module.main, ["budget", "--policy", policy])
    assert result.exit_code == EXIT_INTERNAL, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unexpected ZeroDivisionError: a bug")
    assert "TEMPORAL_GOVERNOR_TRACEBACK=1" in lines[0]
    monkeypatch.setenv("TEMPORAL_GOVERNOR_TRACEBACK", "1")
    result = CliRunner().invoke(cli_module.main, ["budget", "--policy", policy])
    assert isinstance(result.exception, ZeroDivisionError)  # the traceback, when asked for


def test_an_interruption_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    def interrupted(path: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_load_policy", interrupted)
    result = CliRunner().invoke(cli_module.main, ["budget", "--policy", policy])
    assert result.exit_code == EXIT_INTERRUPTED
    assert result.stderr.strip() == "error: interrupted"
