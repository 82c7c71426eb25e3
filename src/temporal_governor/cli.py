"""The ``temporal-governor`` command line.

Every error ends the command with one line on stderr (``error: ...``) and one of these exit
codes, never a Python traceback:

====  ==========================================================================================
0     success
1     ``replay`` found non-determinism (the workflow code changed since the run); ``list`` or
      ``budget`` found nothing to show; ``verify`` found findings at or above ``--fail-on``
2     bad usage or bad input: an unknown option, a bad value (``--address localhost:abc``), a
      missing or unreadable file, an invalid policy, a history file that is not history JSON,
      a ``--workflows`` module that does not import, control keys, a control message the CLI
      refuses to send
3     the Temporal server could not be reached or refused the request (connection refused,
      unknown host, no answer within 15 s or ``$TEMPORAL_GOVERNOR_CONNECT_TIMEOUT`` seconds,
      unknown namespace), the workflow or the ledger was not found, or a control message
      reached none of its runs
4     an unexpected error inside the CLI (a bug: set ``TEMPORAL_GOVERNOR_TRACEBACK=1`` to see
      the traceback, and please report it)
130   interrupted (Ctrl-C)
====  ==========================================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import ipaddress
import json
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from temporalio.client import Client, WorkflowHistory, WorkflowQueryFailedError
from temporalio.envconfig import ClientConfigProfile, ClientConnectConfig
from temporalio.service import RPCError

from .control import (
    ControlClient,
    ControlError,
    ControlOutcome,
    ControlTarget,
    Keyring,
    KeyringError,
)
from .control._messages import overridable
from .core.shards import MAX_SHARDS, ShardMap
from .errors import GovernorError, PolicyError, validation_problems
from .names import STATE_ATTRIBUTE, TENANT_ATTRIBUTE
from .policy import MAX_DURATION_S, MAX_NUMBER, MAX_TTL_SECONDS, PER_TASK_LIMITS, Policy, _seconds
from .review import (
    BundleCheck,
    EvidenceError,
    IncidentReport,
    ReviewError,
    fetch_tree,
    load_histories,
    replay_bundle,
    review,
    verify_bundle,
    write_bundle,
)
from .top import (
    Frame,
    RateLimiter,
    TopOptions,
    gather_frame,
    quote,
    read_ledgers,
    render_frame,
    run_live,
)
from .verify import (
    MAX_PROOF_K,
    PROOF_TIMEOUT_S,
    Severity,
    VerifierUnavailable,
    VerifyReport,
    prove_accounting,
    suggest_from_reports,
    verify_policy,
)

EXIT_NOTHING_FOUND = 1
EXIT_NONDETERMINISM = 1
EXIT_FINDINGS = 1
EXIT_NO_SEPARATION = 1
EXIT_BUNDLE_PROBLEMS = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3
EXIT_INTERNAL = 4
EXIT_INTERRUPTED = 130

CONNECT_TIMEOUT_S = 15.0
"""How long the CLI waits for the Temporal server to answer its connection, unless the
environment variable ``TEMPORAL_GOVERNOR_CONNECT_TIMEOUT`` (seconds) says otherwise."""

_EXIT_CODES = """\b
Exit codes:
  0    success
  1    replay found non-determinism; list or budget found nothing; verify found
       findings at or above --fail-on, no limit that separates the incident
       (--suggest) or a property not proved (--prove); verify-bundle found a problem
  2    bad usage or bad input (options, files, policy, histories, modules, keys)
  3    Temporal unreachable or refusing (connection, namespace), workflow or ledger
       not found, or a control message reached none of its runs
  4    unexpected error in the CLI (a bug; TEMPORAL_GOVERNOR_TRACEBACK=1 shows it)
  130  interrupted
Every error is one line on stderr: "error: ..."."""

_ADDRESS: str | None = None
"""``--address`` unless given: the environment configuration's (``TEMPORAL_ADDRESS``, a
profile), else ``localhost:7233``."""
_NAMESPACE: str | None = None
"""``--namespace`` unless given: the environment configuration's, else ``default``."""


_ADDRESS_HELP = (
    "Temporal frontend HOST:PORT [default: from TEMPORAL_ADDRESS or the profile, "
    "else localhost:7233]."
)
_NAMESPACE_HELP = "Namespace [default: from TEMPORAL_NAMESPACE or the profile, else default]."


class CliFailure(click.ClickException):
    """A failed command: one line on stderr and an exit code (see the module docstring).

    Args:
        message: What went wrong; line breaks in it are joined into one line.
        exit_code: The process exit code.

    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(_one_line(message))
        self.code = exit_code


def _one_line(message: str) -> str:
    """A message on one line: its first line, then the others joined with ``; ``."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    head, rest = lines[0], lines[1:]
    return f"{head} {'; '.join(rest)}" if rest else head


def _fail(message: str, code: int) -> NoReturn:
    """End the command: ``error: message`` on one line of stderr, and exit with ``code``."""
    raise CliFailure(message, code)


def _report_failure(message: str, code: int) -> NoReturn:
    click.echo(click.style("error:", fg="red", bold=True) + " " + _one_line(message), err=True)
    sys.exit(code)


_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())
"""click >= 8.2 raises it for a group run without a command (8.1 shows the help itself)."""


class _Cli(click.Group):
    """The command group: every failure becomes one line on stderr and a documented code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; in standalone mode, exit with a documented code.

        Args:
            args: The arguments (default: ``sys.argv[1:]``).
            prog_name: The program name shown in help.
            complete_var: The shell-completion environment variable.
            standalone_mode: Exit the process (``True``) or return / raise (``False``).
            **extra: Passed to the click context.

        Returns:
            Only outside standalone mode: what the command returned.

        """
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except _NO_ARGS_IS_HELP as error:
            error.show()  # no command at all: the help, as click shows it
            sys.exit(EXIT_BAD_INPUT)
        except click.UsageError as error:
            hint = f" (see {error.ctx.command_path} --help)" if error.ctx is not None else ""
            _report_failure(error.format_message() + hint, EXIT_BAD_INPUT)
        except CliFailure as error:
            _report_failure(error.format_message(), error.code)
        except click.ClickException as error:
            _report_failure(error.format_message(), EXIT_BAD_INPUT)
        except (click.Abort, KeyboardInterrupt, EOFError):
            _report_failure("interrupted", EXIT_INTERRUPTED)
        except Exception as error:
            if os.environ.get("TEMPORAL_GOVERNOR_TRACEBACK"):
                raise
            _report_failure(
                f"unexpected {type(error).__name__}: {error} (a bug: set "
                "TEMPORAL_GOVERNOR_TRACEBACK=1 to see where, and please report it)",
                EXIT_INTERNAL,
            )
        sys.exit(result if isinstance(result, int) else 0)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run as the ``temporal-governor`` program, and leave without finalization.

        The Temporal SDK's native threads can crash the interpreter while it finalizes
        (after all output was written), which would turn any exit code into a signal: the
        process flushes its output and leaves with ``os._exit`` instead.

        Args:
            *args: As for :meth:`main`.
            **kwargs: As for :meth:`main`.

        Returns:
            Never: the process exits.

        """
        code: int = 0
        try:
            self.main(*args, **kwargs)
        except SystemExit as leaving:
            if isinstance(leaving.code, int):
                code = leaving.code
            elif leaving.code is not None:
                click.echo(str(leaving.code), err=True)
                code = 1
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to add
                stream.flush()
        os._exit(code)


def workflow_classes(modules: Sequence[str]) -> list[type]:
    """Import modules (or ``module:Class``) and return the workflow classes they define.

    Args:
        modules: Dotted module names, optionally ``:ClassName`` to pick one class.

    Returns:
        The classes decorated with ``@workflow.defn``.

    """
    sys.path.insert(0, os.getcwd())
    found: list[type] = []
    for spec in modules:
        name, _, attribute = spec.partition(":")
        try:
            module = importlib.import_module(name)
        except Exception as error:  # ImportError, or whatever the module raised importing
            raise click.BadParameter(
                f"cannot import {name!r}: {type(error).__name__}: {error}",
                param_hint="--workflows",
            ) from error
        candidates = (
            [getattr(module, attribute, None)] if attribute else list(vars(module).values())
        )
        for candidate in candidates:
            is_workflow = hasattr(candidate, "__temporal_workflow_definition")
            if isinstance(candidate, type) and is_workflow and candidate not in found:
                found.append(candidate)
    if not found:
        raise click.BadParameter(
            f"no @workflow.defn class found in {', '.join(modules)}", param_hint="--workflows"
        )
    return found


def _load_policy(path: str) -> Policy:
    try:
        return Policy.from_yaml(Path(path))
    except PolicyError as error:
        _fail(str(error), EXIT_BAD_INPUT)


_PORT = re.compile(r"[0-9]{1,5}")


def _address_problem(address: str) -> str | None:
    """What is wrong with a ``HOST:PORT`` address, or ``None``."""
    if "://" in address:
        return "no scheme is needed"
    host, colon, port = address.rpartition(":")
    if host.startswith("["):
        if not host.endswith("]"):
            return "an IPv6 address needs its closing ']'"
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
    elif not colon or not host:
        return "the port is missing" if host or not colon else "the host is missing"
    elif ":" in host or address.count("]"):
        return "an IPv6 address goes in brackets"
    elif any(c.isspace() or c in "/?#@[]" for c in host):
        return f"{host!r} is not a host name"
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        return f"the port {port!r} is not a number from 1 to 65535"
    return None


def _check_connection_options(address: str, namespace: str) -> None:
    """Fail (exit 2) on an address that is not ``HOST:PORT`` or an empty namespace."""
    problem = _address_problem(address)
    if problem is not None:
        _fail(
            f"--address {address!r}: {problem} (expected HOST:PORT, such as localhost:7233 "
            "or [::1]:7233)",
            EXIT_BAD_INPUT,
        )
    if not namespace.strip() or any(c.isspace() for c in namespace):
        _fail(f"--namespace {namespace!r}: expected a namespace name", EXIT_BAD_INPUT)


def _connect_timeout() -> float:
    """Seconds to wait for a connection: ``$TEMPORAL_GOVERNOR_CONNECT_TIMEOUT`` or 15."""
    given = os.environ.get("TEMPORAL_GOVERNOR_CONNECT_TIMEOUT", "").strip()
    if not given:
        return CONNECT_TIMEOUT_S
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 3600:  # also NaN
        _fail(
            f"TEMPORAL_GOVERNOR_CONNECT_TIMEOUT={given!r}: expected seconds, more than 0 and "
            "at most 3600",
            EXIT_BAD_INPUT,
        )
    return seconds


def _why(error: BaseException) -> str:
    """The gist of a connection error from the SDK's native client."""
    text = " ".join(str(error).split())
    known = [
        ("Connection refused", "connection refused"),
        ("dns error", "unknown host"),
        ("failed to lookup address", "unknown host"),
        ("timed out", "timed out"),
        ("Connection reset", "connection reset"),
        ("get_system_info", "no Temporal frontend answered there"),
    ]
    for needle, gist in known:
        if needle.lower() in text.lower():
            return gist
    return text if len(text) <= 300 else text[:297] + "..."


async def _connect(address: str | None, namespace: str | None) -> Client:
    """A client of the Temporal frontend, connected the way the ``temporal`` CLI connects.

    The connection comes from Temporal's environment configuration
    (``temporalio.envconfig``): the profile ``$TEMPORAL_PROFILE`` (``default``) of the
    config file ``$TEMPORAL_CONFIG_FILE`` (or the default location), then the
    environment (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``,
    ``TEMPORAL_TLS*``); ``--address`` and ``--namespace`` override it. So Temporal Cloud
    (API key or mTLS) and any TLS cluster work with the settings ``temporal`` uses.

    Bad options or configuration fail with exit code 2; a server that cannot be reached
    (refused, unknown host, no answer within :data:`CONNECT_TIMEOUT_S`) with exit code 3.
    """
    try:
        config: ClientConnectConfig = ClientConfigProfile.load().to_client_connect_config()
    except Exception as error:  # the SDK's config loader raises several kinds
        _fail(f"Temporal environment configuration: {_why(error)}", EXIT_BAD_INPUT)
    # a given option wins even when empty (and is then refused as such, exit 2)
    if address is None:
        address = config.get("target_host") or "localhost:7233"
    if namespace is None:
        namespace = config.get("namespace") or "default"
    config["target_host"], config["namespace"] = address, namespace
    target, name = config["target_host"], config["namespace"]
    _check_connection_options(target, name)
    timeout = _connect_timeout()
    where = f"Temporal at {target} (namespace {name})"
    try:
        return await asyncio.wait_for(Client.connect(**config), timeout)
    except ValueError as error:  # the SDK refused the address or a setting itself
        _fail(f"{where}: {error}", EXIT_BAD_INPUT)
    except TimeoutError:
        _fail(f"cannot reach {where}: no answer within {timeout:g} s", EXIT_UNREACHABLE)
    except (RuntimeError, RPCError, OSError) as error:
        _fail(f"cannot reach {where}: {_why(error)}", EXIT_UNREACHABLE)


def _server_failure(subject: str, error: BaseException) -> NoReturn:
    """Fail (exit 3) for an error the server returned about ``subject``."""
    _fail(f"{subject}: {error}", EXIT_UNREACHABLE)


@click.group(cls=_Cli, epilog=_EXIT_CODES)
@click.version_option(package_name="temporal-governor")
def main() -> None:
    """Budgets, breach halts and incident review for AI-agent workflows on Temporal."""


@main.command()
@click.argument("workflow_id")
@click.option(
    "--policy",
    "policy_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The policy the runs were governed by.",
)
@click.option(
    "--workflows",
    "modules",
    multiple=True,
    required=True,
    metavar="MODULE[:CLASS]",
    help="Module(s) defining the tree's workflow classes (repeatable).",
)
@click.option("--run-id", default=None, help="The root run (default: the latest run).")
@click.option("--namespace", default=_NAMESPACE, help=_NAMESPACE_HELP)
@click.option("--address", default=_ADDRESS, help=_ADDRESS_HELP)
@click.option(
    "--history",
    "history_files",
    multiple=True,
    type=click.Path(exists=True),
    help="Exported history JSON of a run of the tree, or a folder of them (repeatable); "
    "no server needed.",
)
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), help="Write the report as JSON."
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False),
    help="Write a self-contained HTML report.",
)
@click.option(
    "--bundle",
    "bundle_out",
    type=click.Path(dir_okay=False),
    help="Write a signed evidence bundle: one zip of the report, the histories and the "
    "hash-chained decisions, signed with a control key (check it with verify-bundle).",
)
@click.option(
    "--bundle-key",
    default=None,
    metavar="KEY_ID",
    help="The control key to sign the bundle with (default: control.signing_key, else the "
    "first key).",
)
@click.option("--quiet", is_flag=True, help="Do not print the terminal report.")
@click.option(
    "--sandbox/--no-sandbox",
    default=False,
    show_default=True,
    help="Replay inside the workflow sandbox (slower; determinism is checked either way).",
)
def replay(
    workflow_id: str,
    policy_path: str,
    modules: tuple[str, ...],
    run_id: str | None,
    namespace: str | None,
    address: str | None,
    history_files: tuple[str, ...],
    json_out: str | None,
    html_out: str | None,
    bundle_out: str | None,
    bundle_key: str | None,
    quiet: bool,
    sandbox: bool,
) -> None:
    r"""Replay a run's tree with the governor and report every decision and the breach.

    \b
    Example:
      temporal-governor replay demo-runaway --policy examples/governance.yaml \\
          --workflows examples.agents --html report.html
      temporal-governor replay demo-runaway --policy governance.yaml \\
          --workflows examples.agents --history root.json --history child.json
    """
    policy = _load_policy(policy_path)
    classes = workflow_classes(modules)
    for option, out in (("--json", json_out), ("--html", html_out), ("--bundle", bundle_out)):
        if out:
            _check_output(option, out)
    keyring = _bundle_keyring(policy, bundle_key) if bundle_out else None
    histories = _read_histories(history_files, workflow_id) if history_files else None
    tree: list[Any] = list(histories or [])  # what the report is built from, for --bundle
    console = Console(stderr=True)

    async def run() -> Any:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
            disable=quiet,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int | None) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            if histories is not None:
                return await review(
                    workflow_id,
                    policy=policy,
                    workflows=classes,
                    histories=histories,
                    progress=progress,
                    sandboxed=sandbox,
                )
            client = await _connect(address, namespace)
            tree[:] = await fetch_tree(client, workflow_id, run_id, progress)
            report = await review(
                workflow_id,
                policy=policy,
                workflows=classes,
                histories=tree,
                progress=progress,
                sandboxed=sandbox,
            )
            where = f"server {client.service_client.config.target_host}/{client.namespace}"
            return report.model_copy(update={"source": where})

    try:
        report = asyncio.run(run())
    except (ReviewError, KeyringError) as error:
        _fail(str(error), EXIT_BAD_INPUT)
    except RPCError as error:
        _server_failure(f"workflow {workflow_id}", error)
    from .review import render_html, render_terminal

    if not quiet:
        render_terminal(report, Console())
    if json_out:
        _write(json_out, report.model_dump_json(indent=2))
        console.print(f"JSON report written to {json_out}")
    if html_out:
        _write(html_out, render_html(report))
        console.print(f"HTML report written to {html_out}")
    if bundle_out and keyring is not None:
        try:
            write_bundle(report, tree, bundle_out, keyring, bundle_key)
        except (EvidenceError, KeyringError) as error:
            _fail(str(error), EXIT_BAD_INPUT)
        console.print(f"signed evidence bundle written to {bundle_out}")
    if report.nondeterminism:
        sys.exit(EXIT_NONDETERMINISM)


def _read_histories(given: Sequence[str], workflow_id: str, option: str = "--history") -> list[Any]:
    """The histories of files and folders given to ``option``, or a one-line failure (exit 2)."""
    files: list[Path] = []
    for path in map(Path, given):
        found = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not found:
            _fail(f"{option} {str(path)!r}: no *.json history file in this folder", EXIT_BAD_INPUT)
        files += found
    try:
        return load_histories(files, workflow_id)
    except ReviewError as error:
        _fail(str(error), EXIT_BAD_INPUT)
    except Exception as error:  # whatever a malformed history makes the SDK's parser raise
        _fail(f"--history: not history JSON ({type(error).__name__}: {error})", EXIT_BAD_INPUT)


def _bundle_keyring(policy: Policy, key_id: str | None) -> Keyring:
    """The control keys to sign ``--bundle`` with; fails (exit 2) without ``key_id``."""
    keyring = _keyring(policy, signed=True)
    if key_id is not None and key_id not in keyring.keys:
        known = ", ".join(sorted(keyring.keys))
        _fail(f"--bundle-key {key_id!r}: not among the control keys ({known})", EXIT_BAD_INPUT)
    return keyring


def _check_output(option: str, path: str) -> None:
    """Fail (exit 2) before any work if a report could not be written to ``path``."""
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        _fail(f"{option} {path!r}: the folder {str(folder)!r} does not exist", EXIT_BAD_INPUT)
    if target.is_dir():
        _fail(f"{option} {path!r}: is a folder, not a file", EXIT_BAD_INPUT)
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        _fail(f"{option} {path!r}: not writable", EXIT_BAD_INPUT)


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
        _fail(f"cannot write {path!r}: {error.strerror or error}", EXIT_BAD_INPUT)


_FC = TypeVar("_FC", bound=Callable[..., Any])


def _options(*decorators: Callable[[_FC], _FC]) -> Callable[[_FC], _FC]:
    """Apply several click decorators as one, in the order written."""

    def apply(command: _FC) -> _FC:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def _policy_option(help: str, *, required: bool = False) -> Callable[[_FC], _FC]:
    """``--policy PATH`` (an existing file, into ``policy_path``) with this help text."""
    return click.option(
        "--policy",
        "policy_path",
        required=required,
        type=click.Path(exists=True, dir_okay=False),
        help=help,
    )


_ledger_options = _options(
    click.option(
        "--ledger-id",
        default=None,
        help="The ledger's workflow id (default: from --policy, else temporal-governor-ledger).",
    ),
    click.option(
        "--shards",
        type=click.IntRange(1, MAX_SHARDS),
        default=None,
        help="The fleet's shared.shards (default: from --policy, else 1): a sharded fleet's "
        "tenant shards are read with its root ledger.",
    ),
    _policy_option("Read the ledger id and shard count from this policy."),
)
"""``--ledger-id``, ``--shards`` and ``--policy``: which shared ledgers a command reads
(``budget``, ``top``)."""


def _ledgers(ledger_id: str | None, shards: int | None, policy_path: str | None) -> ShardMap:
    """The fleet's ledgers: ``--ledger-id`` / ``--shards``, else the policy's, else defaults."""
    shared = _load_policy(policy_path).shared if policy_path else None
    return ShardMap(
        ledger_id
        if ledger_id is not None
        else shared.ledger_id
        if shared
        else "temporal-governor-ledger",
        shards if shards is not None else shared.shards if shared else 1,
    )


@main.command(name="list")
@click.option("--tenant", default=None, help="Only runs of this tenant.")
@click.option(
    "--state",
    type=click.Choice(["running", "paused", "completed", "failed", "breached", "killed"]),
    default=None,
    help="Only runs in this governor state.",
)
@click.option("--agent", default=None, help="Only runs of this workflow type.")
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="At most this many runs.",
)
@click.option("--namespace", default=_NAMESPACE, help=_NAMESPACE_HELP)
@click.option("--address", default=_ADDRESS, help=_ADDRESS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def list_runs(
    tenant: str | None,
    state: str | None,
    agent: str | None,
    limit: int,
    namespace: str | None,
    address: str | None,
    as_json: bool,
) -> None:
    r"""List governed runs through Temporal visibility (needs the search attributes).

    \b
    Example:
      temporal-governor list --tenant acme --state breached
    """
    clauses = ["GovernorState IS NOT NULL"]
    if tenant:
        clauses.append(f"GovernorTenant = {quote(tenant)}")
    if state:
        clauses.append(f"GovernorState = {quote(state)}")
    if agent:
        clauses.append(f"WorkflowType = {quote(agent)}")
    query = " AND ".join(clauses)

    async def run() -> list[dict[str, Any]]:
        client = await _connect(address, namespace)
        rows: list[dict[str, Any]] = []
        async for execution in client.list_workflows(query, limit=limit):
            memo = await execution.memo()
            summary = memo.get("governor", {}) if isinstance(memo, dict) else {}
            attributes = execution.typed_search_attributes
            rows.append(
                {
                    "workflow_id": execution.id,
                    "run_id": execution.run_id,
                    "agent": execution.workflow_type,
                    "status": execution.status.name.lower() if execution.status else "",
                    "tenant": attributes.get(TENANT_ATTRIBUTE) or "",
                    "state": attributes.get(STATE_ATTRIBUTE) or "",
                    "started": execution.start_time.isoformat(),
                    "spent": summary.get("spent", {}),
                    "breach": summary.get("breach"),
                }
            )
        return rows

    try:
        rows = asyncio.run(run())
    except RPCError as error:
        _server_failure(f"listing failed ({query})", error)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        table = Table(title=f"governed runs: {query}")
        for column in ("workflow id", "agent", "tenant", "state", "tokens", "cost", "started"):
            table.add_column(column)
        for row in rows:
            spent = row["spent"]
            table.add_row(
                row["workflow_id"],
                row["agent"],
                row["tenant"],
                row["state"],
                f"{spent.get('tokens', 0):,.0f}",
                f"${spent.get('cost_usd', 0):.4f}",
                row["started"],
            )
        Console().print(table)
    if not rows:
        sys.exit(EXIT_NOTHING_FOUND)


@main.command()
@click.option("--tenant", default=None, help="Show this tenant's scopes (and its owners').")
@click.option("--scope", "scope_prefix", default=None, help="Show scopes starting with this.")
@_ledger_options
@click.option("--namespace", default=_NAMESPACE, help=_NAMESPACE_HELP)
@click.option("--address", default=_ADDRESS, help=_ADDRESS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the ledger state as JSON.")
def budget(
    tenant: str | None,
    scope_prefix: str | None,
    ledger_id: str | None,
    shards: int | None,
    policy_path: str | None,
    namespace: str | None,
    address: str | None,
    as_json: bool,
) -> None:
    r"""Show the shared ledger: committed and reserved spend per scope, window and ceiling.

    \b
    Example:
      temporal-governor budget --tenant acme
      temporal-governor budget --scope tool: --json
    """
    ledgers = _ledgers(ledger_id, shards, policy_path)
    ledger_id = ledgers.root
    if tenant is not None and scope_prefix is not None:
        raise click.UsageError("give --tenant or --scope, not both")

    async def run() -> dict[str, Any]:
        client = await _connect(address, namespace)
        if not ledgers.sharded:
            state: dict[str, Any] = await client.get_workflow_handle(ledger_id).query("state", "")
            return state
        merged, problems = await read_ledgers(client, ledgers, [tenant] if tenant else [], 10.0)
        if merged is None:
            raise GovernorError("; ".join(problems) or f"ledger {ledger_id}: nothing to read")
        for problem in problems:
            click.echo(f"warning: {problem}", err=True)
        return merged

    try:
        state = asyncio.run(run())
    except GovernorError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except (RPCError, WorkflowQueryFailedError) as error:
        _server_failure(f"ledger {ledger_id}", error)
    counters = [
        c
        for c in state["counters"]
        if (
            tenant is None
            or c["scope"] in (f"tenant:{tenant}",)
            or c["scope"].startswith(f"owner:{tenant}/")
        )
        and (scope_prefix is None or c["scope"].startswith(scope_prefix))
    ]
    if as_json:
        click.echo(json.dumps({**state, "counters": counters}, indent=2))
        return
    table = Table(title=f"ledger {ledger_id}" + (f": tenant {tenant}" if tenant else ""))
    for column in (
        "scope",
        "resource",
        "window",
        "committed",
        "reserved",
        "ceiling",
        "left",
        "limit",
    ):
        table.add_column(
            column,
            justify="right" if column in ("committed", "reserved", "ceiling", "left") else "left",
        )
    for c in sorted(counters, key=lambda c: (c["scope"], c["resource"], c["window_s"] or 0)):
        ceiling = c.get("ceiling")
        left = ceiling - c["committed"] - c["reserved"] if ceiling is not None else None
        table.add_row(
            c["scope"],
            c["resource"],
            "total" if c["window_s"] is None else f"{c['window_s']:g} s",
            f"{c['committed']:,.4g}",
            f"{c['reserved']:,.4g}",
            "" if ceiling is None else f"{ceiling:,.4g}",
            "" if left is None else f"{left:,.4g}",
            c.get("limit", ""),
        )
    Console().print(table)
    Console().print(f"open reservations: {state['open_reservations']}")
    if not counters:
        sys.exit(EXIT_NOTHING_FOUND)


# -- control: kill, resume, backpressure, override, status ------------------------------------

_Send = Callable[[ControlClient, ControlTarget], Awaitable[ControlOutcome]]
_TARGETS: dict[str, Callable[[str], ControlTarget]] = {
    "run": ControlTarget.run,
    "tree": ControlTarget.tree,
    "tenant": ControlTarget.tenant,
    "agent": ControlTarget.agent,
}
_OVERRIDABLE = [name for name in PER_TASK_LIMITS if overridable(name)]


def _examples(*lines: str) -> str:
    """A command's epilog: example invocations, one a line, not re-wrapped by click."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


_sending_options = _options(
    click.option("--run", "target_run", metavar="WORKFLOW_ID", help="Target one run."),
    click.option(
        "--tree", "target_tree", metavar="WORKFLOW_ID", help="Target a run and its descendants."
    ),
    click.option("--tenant", "target_tenant", metavar="NAME", help="Target a tenant's runs."),
    click.option(
        "--agent", "target_agent", metavar="WORKFLOW_TYPE", help="Target a workflow type's runs."
    ),
    _policy_option(
        "The policy (its control section says where the signing keys come from).", required=True
    ),
    click.option("--issuer", default=None, help="Who is sending (default: the OS user)."),
    click.option(
        "--task-queue",
        default=None,
        help="A governed worker's task queue, to start the ledger for --tenant/--agent "
        "if it is not running yet.",
    ),
    click.option("--namespace", default=_NAMESPACE, help=_NAMESPACE_HELP),
    click.option("--address", default=_ADDRESS, help=_ADDRESS_HELP),
)


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """Seconds from ``--for``: a number, or '500ms', '30s', '10m', '2h', '1d'."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = _seconds(value, None, maximum=math.inf)
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is not a duration such as 30s, 10m, 2h or 1d (or seconds)"
            ) from None
    if not seconds > 0:  # also NaN
        raise click.BadParameter(f"{value!r}: the duration must be more than 0")
    if seconds > MAX_DURATION_S:  # also an infinity
        raise click.BadParameter(f"{value!r}: the duration must be at most 3650d")
    return seconds


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Refuse NaN and infinities, which click's float ranges let through."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value!r}: expected a finite number")
    return value


def _target(common: dict[str, Any]) -> ControlTarget:
    """The one target among ``--run``, ``--tree``, ``--tenant`` and ``--agent``."""
    given = [(kind, common.pop(f"target_{kind}")) for kind in _TARGETS]
    given = [(kind, value) for kind, value in given if value is not None]
    if len(given) != 1:
        problem = (
            "no target given"
            if not given
            else "several targets given (" + ", ".join(f"--{kind}" for kind, _ in given) + ")"
        )
        raise click.UsageError(f"{problem}: give exactly one of --run, --tree, --tenant, --agent")
    kind, value = given[0]
    if not value.strip():
        raise click.UsageError(f"--{kind} needs a non-empty value")
    return _TARGETS[kind](value)


def _keyring(policy: Policy, signed: bool) -> Keyring:
    """The policy's control keys; fails (exit 2) if a signed message has no key to use."""
    if not signed:
        return Keyring({})
    try:
        keyring = Keyring.from_policy(policy)
    except KeyringError as error:
        _fail(str(error), EXIT_BAD_INPUT)
    if keyring.signing_key is None:
        where = f"${policy.control.keys_env} (key-id=secret[,key-id=secret...])"
        if policy.control.keys_file:
            where += f" or the file {policy.control.keys_file}"
        _fail(f"no control key to sign with: set {where}", EXIT_BAD_INPUT)
    return keyring


def _send(common: dict[str, Any], label: str, send: _Send, *, signed: bool = True) -> None:
    """Connect, send one control message as ``send`` does, and report what happened."""
    target = _target(common)
    policy = _load_policy(common["policy_path"])
    keyring = _keyring(policy, signed)

    async def run() -> ControlOutcome:
        client = await _connect(common["address"], common["namespace"])
        control = ControlClient(
            client,
            policy,
            keyring=keyring,
            issuer=common["issuer"],
            ledger_task_queue=common["task_queue"],
        )
        return await send(control, target)

    try:
        outcome = asyncio.run(run())
    except (ControlError, KeyringError) as error:
        _fail(str(error), EXIT_BAD_INPUT)
    except ValidationError as error:
        _fail(f"{label}: invalid message: {validation_problems(error)}", EXIT_BAD_INPUT)
    except RPCError as error:
        _server_failure(_describe(target), error)
    _report(label, target, outcome)
    if outcome.failed and not outcome.signalled and not outcome.stored:
        sys.exit(EXIT_UNREACHABLE)


def _describe(target: ControlTarget) -> str:
    return f"{target.kind} {target.value}"


def _report(label: str, target: ControlTarget, outcome: ControlOutcome) -> None:
    """Print who got the message, what failed, the warnings and the key it was signed with."""
    console, errors = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    sent = outcome.signalled
    if target.kind in ("run", "tree"):
        if sent:
            relay = " (its runs relay it down)" if target.kind == "tree" else ""
            console.print(f"{escape(label)} sent to {escape(_describe(target))}{relay}")
            console.print(
                f"[dim]the run checks and audits it: temporal-governor status "
                f"{escape(target.value)}[/]"
            )
    elif sent:
        runs = "run" if len(sent) == 1 else "runs"
        console.print(
            f"{escape(label)} sent to {len(sent)} {runs} of {escape(_describe(target))}: "
            + escape(", ".join(sent))
        )
    else:
        console.print(f"{escape(label)}: no running runs of {escape(_describe(target))}")
    if outcome.stored:
        console.print("stored in the ledger for runs that start later")
    for workflow_id, why in outcome.failed.items():
        errors.print(f"[red]not delivered to {escape(workflow_id)}:[/] {escape(why)}")
    for warning in outcome.warnings:
        errors.print(f"[yellow]warning:[/] {escape(warning)}")
    key_id = outcome.message.key_id
    console.print(f"signed with key {escape(key_id)}" if key_id else "unsigned")


@main.command(
    epilog=_examples(
        'temporal-governor kill --tenant acme --policy governance.yaml --reason "runaway spend"',
    )
)
@_sending_options
@click.option(
    "--mode",
    type=click.Choice(["pause", "terminate"]),
    default="pause",
    show_default=True,
    help="pause: rest until resumed; terminate: fail the runs.",
)
@click.option("--reason", default="", help="Why (kept in the runs' audit trail).")
@click.option(
    "--unsigned",
    is_flag=True,
    help="Send without a signature (needs no key). Runs take an unsigned kill as a pause, "
    "and only if the policy allows unsigned kills.",
)
def kill(mode: str, reason: str, unsigned: bool, **common: Any) -> None:
    """Pause or terminate a run, a tree, a tenant's or an agent type's runs."""
    _send(
        common,
        f"kill ({mode})",
        lambda control, target: control.kill(
            target,
            mode="terminate" if mode == "terminate" else "pause",
            reason=reason,
            sign=not unsigned,
        ),
        signed=not unsigned,
    )


@main.command(
    epilog=_examples(
        'temporal-governor resume --run wf-1 --policy governance.yaml --reason "fixed"',
    )
)
@_sending_options
@click.option("--reason", default="", help="Why (kept in the runs' audit trail).")
def resume(reason: str, **common: Any) -> None:
    """Let paused runs dispatch again (always signed)."""
    _send(common, "resume", lambda control, target: control.resume(target, reason=reason))


@main.command(
    epilog=_examples(
        "temporal-governor backpressure --agent Researcher --policy governance.yaml \\",
        "    --retry-after-ms 2000 --max-concurrency 2 --source provider-x",
    )
)
@_sending_options
@click.option(
    "--retry-after-ms",
    required=True,
    type=click.IntRange(0, 3_600_000),
    help="Least time between two dispatches of a run.",
)
@click.option(
    "--max-concurrency", type=click.IntRange(1, 1_000_000), default=None, help="Most in flight."
)
@click.option(
    "--reduce-batch-to",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Advice to agent code: batch at most this many.",
)
@click.option(
    "--duration-ms",
    type=click.IntRange(1, int(MAX_TTL_SECONDS * 1000)),
    default=60_000,
    show_default=True,
    help="How long it holds (cut to control.max_backpressure).",
)
@click.option("--source", default="", help="Who is overloaded (a tool, a provider...).")
@click.option("--reason", default="", help="Why (kept in the runs' audit trail).")
def backpressure(
    retry_after_ms: int,
    max_concurrency: int | None,
    reduce_batch_to: int | None,
    duration_ms: int,
    source: str,
    reason: str,
    **common: Any,
) -> None:
    """Slow runs down for a while: space their dispatches, cap those in flight."""
    _send(
        common,
        f"backpressure (retry after {retry_after_ms} ms, for {duration_ms} ms)",
        lambda control, target: control.backpressure(
            target,
            retry_after_ms=retry_after_ms,
            max_concurrency=max_concurrency,
            reduce_batch_to=reduce_batch_to,
            duration_ms=duration_ms,
            source=source,
            reason=reason,
        ),
    )


@main.command(
    epilog=_examples(
        "temporal-governor override --run wf-1 --policy governance.yaml \\",
        '    --limit max_tokens_per_task --value 50000 --for 2h --reason "long report"',
    )
)
@_sending_options
@click.option(
    "--limit",
    required=True,
    type=click.Choice(_OVERRIDABLE),
    help="The per-task quota to change.",
)
@click.option(
    "--value",
    required=True,
    type=click.FloatRange(0, MAX_NUMBER),
    callback=_finite,
    help="Its new ceiling.",
)
@click.option(
    "--for",
    "duration_s",
    metavar="DURATION",
    callback=_duration,
    default="1h",
    show_default=True,
    help="How long it holds: seconds or 500ms, 30s, 10m, 2h, 1d (cut to control.max_override).",
)
@click.option("--reason", default="", help="Why (kept in the runs' audit trail).")
def override(limit: str, value: float, duration_s: float, reason: str, **common: Any) -> None:
    """Set a per-task limit of runs for a while (never above its hard ceiling)."""
    _send(
        common,
        f"override {limit} = {value:g} for {duration_s:g} s",
        lambda control, target: control.override(
            target, limit=limit, value=value, duration_s=duration_s, reason=reason
        ),
    )


@main.command(
    epilog=_examples(
        "temporal-governor status wf-1",
        "temporal-governor status wf-1 --json",
    )
)
@click.argument("workflow_id")
@click.option("--namespace", default=_NAMESPACE, help=_NAMESPACE_HELP)
@click.option("--address", default=_ADDRESS, help=_ADDRESS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the control state and budget as JSON.")
def status(workflow_id: str, namespace: str | None, address: str | None, as_json: bool) -> None:
    """Show a run's control state, its audit trail of control messages and its spend."""

    async def run() -> dict[str, Any]:
        client = await _connect(address, namespace)
        control = ControlClient(client, Policy.from_dict({}), keyring=Keyring({}))
        return await control.status(workflow_id)

    try:
        state = asyncio.run(run())
    except WorkflowQueryFailedError as error:
        _fail(f"{workflow_id}: not a governed run? the query failed: {error}", EXIT_BAD_INPUT)
    except RPCError as error:
        _server_failure(f"workflow {workflow_id}", error)
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    console = Console(soft_wrap=True)
    _print_control(state["control"], console)
    _print_budget(state["budget"], console)
    _print_audit(state["control"]["audit"])


def _when(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return value


def _print_control(control: dict[str, Any], console: Console) -> None:
    """The run's state, pause, backpressure and overrides."""
    colour = {"running": "green", "paused": "yellow", "killed": "red"}.get(control["state"], "")
    console.print(
        f"[bold]{escape(control['workflow_id'])}[/] (run {control['run_id']}): "
        f"[{colour}]{control['state']}[/]"
    )
    if control.get("paused_by") is not None:
        console.print(
            f"  paused by {escape(control['paused_by'])} since {_when(control['paused_since'])}"
            f" ({escape(control.get('pause_reason') or 'no reason given')}); "
            f"fails at {_when(control['pause_deadline'])} unless resumed"
        )
    pressure = control.get("backpressure")
    if pressure:
        console.print(f"  backpressure: {_pressure(pressure)}")
    for o in control.get("overrides", []):
        console.print(
            f"  override {o['limit']}: {o['before']:g} -> {o['value']:g} until "
            f"{_when(o['until'])} (hard ceiling {o['hard_ceiling']:g}; by {escape(o['issuer'])}: "
            f"{escape(o['reason'] or '-')})"
        )
    console.print(
        f"  control messages: {control['accepted']} accepted, {control['rejected']} rejected; "
        f"{control['dispatches_refused_while_paused']} dispatches held while paused"
    )


def _pressure(pressure: dict[str, Any]) -> str:
    """The backpressure holding on a run, in one line."""
    caps = [f"retry after {pressure['retry_after_ms']} ms"]
    if pressure.get("max_concurrency") is not None:
        caps.append(f"at most {pressure['max_concurrency']} in flight")
    if pressure.get("reduce_batch_to") is not None:
        caps.append(f"batches of {pressure['reduce_batch_to']}")
    return (
        f"{', '.join(caps)} until {_when(pressure['until'])} "
        f"(from {escape(pressure['source'] or pressure['issuer'])}: "
        f"{escape(pressure['reason'] or '-')})"
    )


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}"


def _print_budget(budget: dict[str, Any], console: Console) -> None:
    """One line: committed spend per resource, and the breach if the run halted."""
    committed = budget.get("committed") or {}
    spent = ", ".join(f"{resource} {_number(v)}" for resource, v in sorted(committed.items()))
    console.print(f"  budget committed: {spent or 'nothing yet'}")
    breach = budget.get("breach")
    if breach:
        console.print(
            f"  [red]halted:[/] {escape(breach['limit'])} "
            f"({escape(breach.get('kill_reason') or breach['scope'])})"
        )


def _print_audit(control_audit: list[dict[str, Any]]) -> None:
    """The audit trail of control messages, oldest first."""
    table = Table(title="control messages")
    for column in ("seq", "time", "signal", "ok", "issuer", "reason", "outcome"):
        table.add_column(column, justify="right" if column == "seq" else "left")
    for record in control_audit:
        table.add_row(
            str(record["seq"]),
            _when(record["time"]),
            record["signal"].removeprefix("governor."),
            "[green]✓[/]" if record["accepted"] else "[red]✗[/]",
            escape(record.get("issuer") or ""),
            escape(record.get("reason") or ""),
            escape(record["outcome"]),
        )
    Console().print(table)


@main.command(
    epilog=_examples(
        "temporal-governor top --policy governance.yaml",
        "temporal-governor top --tenant acme --tenant globex --interval 2",
        "temporal-governor top --once --json | jq .runs_total",
    )
)
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    metavar="NAME",
    help="Only this tenant: its scopes, runs and halts (repeatable).",
)
@_ledger_options
@click.option(
    "--interval",
    type=click.FloatRange(0.2, 3600),
    default=1.0,
    show_default=True,
    callback=_finite,
    help="Seconds between frames.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit (for tests and scripts).")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the frame as JSON.")
@click.option(
    "--frames",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Stop after this many frames (default: run until Ctrl-C).",
)
@click.option(
    "--recent",
    type=click.IntRange(1, 100),
    default=10,
    show_default=True,
    help="How many halted runs, and how many paused runs, to list.",
)
@click.option(
    "--max-tenants",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Tenant rows in the runs table without --tenant (the busiest; the rest add up in "
    "(other)).",
)
@click.option(
    "--visibility-rate",
    type=click.FloatRange(0.1, 1000),
    default=8.0,
    show_default=True,
    callback=_finite,
    help="Most visibility calls a second (servers allow 10 per frontend by default).",
)
@click.option("--namespace", default=_NAMESPACE, help=_NAMESPACE_HELP)
@click.option("--address", default=_ADDRESS, help=_ADDRESS_HELP)
def top(
    tenants: tuple[str, ...],
    ledger_id: str | None,
    shards: int | None,
    policy_path: str | None,
    interval: float,
    once: bool,
    as_json: bool,
    frames: int | None,
    recent: int,
    max_tenants: int,
    visibility_rate: float,
    namespace: str | None,
    address: str | None,
) -> None:
    r"""A live dashboard of the fleet: shared counters, runs by state, halts and controls.

    Every --interval seconds (Ctrl-C quits, exit 0): the shared ledger's counters per tenant
    and owner scope (and global, agent, tool scopes) with committed, reserved, ceiling, %
    used (committed / ceiling; for concurrency, slots held / ceiling) and burn rate;
    governed runs per tenant by state (visibility: GovernorTenant, GovernorState); the runs
    halted most recently (breached, killed) with their memo summaries; runs a kill holds
    paused; fleet-wide kills and resumes kept by the ledger.

    Burn rate: committed per minute (tokens, cost, ...) in each scope. From the second
    frame on it is measured between the frames of the last minute. A first frame (--once)
    reads the scope's per-minute window if the policy has one (what it holds since the
    minute began, per minute), else shows "—".

    Runs need visibility.search_attributes: true in the policy. Each frame makes 2
    visibility calls plus 3 per tenant row (plus 4 without --tenant), at most
    --visibility-rate a second: frames come less often when they need more. Exit 0 even
    when nothing is governed yet.
    """
    if as_json and not once:
        raise click.UsageError("--json needs --once (the live view is for a terminal)")
    if once and frames is not None:
        raise click.UsageError("give --once or --frames, not both")
    if any(not tenant.strip() for tenant in tenants):
        raise click.UsageError("--tenant needs a non-empty value")
    ledgers = _ledgers(ledger_id, shards, policy_path)
    options = TopOptions(
        ledger_id=ledgers.root,
        shards=ledgers.shards,
        tenants=tuple(dict.fromkeys(tenants)),
        recent=recent,
        max_tenants=max_tenants,
    )
    limiter = RateLimiter(visibility_rate)

    async def run() -> Frame | None:
        client = await _connect(address, namespace)
        if once:
            return await gather_frame(client, options, limiter=limiter)
        await run_live(
            client, options, Console(), interval_s=interval, frames=frames, limiter=limiter
        )
        return None

    try:
        frame = asyncio.run(run())
    except KeyboardInterrupt:
        return  # quitting the live view is how it ends
    except RPCError as error:
        _server_failure("top: visibility", error)
    if frame is None:
        return
    if as_json:
        click.echo(frame.model_dump_json(indent=2))
    else:
        Console().print(render_frame(frame))


_SEVERITY_COLOURS = {"error": "red", "warning": "yellow", "info": "cyan"}


@main.command(
    epilog=_examples(
        "temporal-governor verify examples/governance.yaml",
        "temporal-governor verify policy.yaml --fail-on warning --json > findings.json",
        "temporal-governor verify examples/governance.yaml --suggest --workflows examples.agents "
        "--incident out/histories --normal demo-normal",
    )
    + "\n\nExit codes: 0 no finding at or above --fail-on (--suggest: a patch), 1 findings at "
    "or above it (--suggest: no limit stops the incident earlier), 2 bad input (an unreadable "
    "or invalid policy, missing or unreadable histories, histories that no longer replay) or "
    "the solver missing, 3 Temporal unreachable."
)
@click.argument("policy_path", metavar="POLICY", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--fail-on",
    type=click.Choice(["error", "warning", "info"]),
    default="error",
    show_default=True,
    help="Exit 1 when a finding is at least this severe.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_options(
    click.option(
        "--suggest",
        is_flag=True,
        help="Suggest the tightest limits that halt --incident early and pass every --normal run.",
    ),
    click.option(
        "--incident",
        multiple=True,
        metavar="ID|PATH",
        help="With --suggest: the incident's root workflow id, or its tree's history files or "
        "folder (repeatable).",
    ),
    click.option(
        "--incident-run-id", default=None, help="The incident's root run (default: latest)."
    ),
    click.option(
        "--normal",
        multiple=True,
        metavar="ID|PATH",
        help="With --suggest: a normal run's root workflow id, or history files or folders "
        "(repeatable).",
    ),
    click.option(
        "--workflows",
        "modules",
        multiple=True,
        metavar="MODULE[:CLASS]",
        help="With --suggest: module(s) defining the runs' workflow classes (repeatable).",
    ),
    click.option(
        "--margin",
        type=click.FloatRange(0, 10),
        default=0.1,
        show_default=True,
        help="With --suggest: suggested limits are this fraction over the largest normal run.",
    ),
    click.option("--namespace", default=_NAMESPACE, help=_NAMESPACE_HELP),
    click.option("--address", default=_ADDRESS, help=_ADDRESS_HELP),
)
def verify(policy_path: str, fail_on: str, as_json: bool, suggest: bool, **tightening: Any) -> None:
    """Check a policy's limits with the Z3 solver; each finding has a concrete witness.

    Finds dead limits, unreachable child agents, risk tiers and degrade rules that loosen,
    unbounded (alert-only) spend and fleet exposure. With --suggest, replays an incident and
    normal runs and prints the tightest limits (a YAML patch) that would have halted the
    incident earliest while every normal run passes. Needs the extra verify
    (pip install 'temporal-governor[verify]'); see docs/verification.md.
    """
    policy = _load_policy(policy_path)
    if suggest:
        _suggest(policy, policy_path, as_json, **tightening)
        return
    if tightening["incident"] or tightening["normal"]:
        raise click.UsageError("--incident and --normal go with --suggest")
    try:
        report = verify_policy(policy)
    except VerifierUnavailable as error:
        _fail(str(error), EXIT_BAD_INPUT)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        _print_findings(report, Console(soft_wrap=True))
    if report.failing(Severity(fail_on)):
        sys.exit(EXIT_FINDINGS)


@main.command(
    epilog=_examples("temporal-governor prove", "temporal-governor prove --k 4 --json")
    + "\n\nExit codes: 0 every property proved, 1 a counterexample or an unknown result, 2 "
    "the solver missing."
)
@click.option(
    "--k",
    type=click.IntRange(1, MAX_PROOF_K),
    default=3,
    show_default=True,
    help=f"Dispatches interleaved, at most {MAX_PROOF_K} (solver time grows about tenfold per "
    f"dispatch; k = 5 takes minutes). A property not settled within {PROOF_TIMEOUT_S:g} s is "
    "unknown: not proved, exit 1.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def prove(k: int, as_json: bool) -> None:
    """Prove the accounting rules for every interleaving of k dispatches (Z3).

    Committed never passes a ceiling while actuals stay within estimates; an overage is
    bounded by the dispatches that ran over; carves stay within the parent's ceiling;
    lease grants stay within what is left. The rules checked are the functions the
    runtime calls. See docs/verification.md.
    """
    try:
        results = prove_accounting(k)
    except VerifierUnavailable as error:
        _fail(str(error), EXIT_BAD_INPUT)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(result) for result in results], indent=2))
    else:
        for result in results:
            click.echo(result.describe())
    if not all(result.proved for result in results):
        sys.exit(EXIT_FINDINGS)


def _suggest(
    policy: Policy,
    policy_path: str,
    as_json: bool,
    incident: tuple[str, ...],
    incident_run_id: str | None,
    normal: tuple[str, ...],
    modules: tuple[str, ...],
    margin: float,
    namespace: str | None,
    address: str | None,
) -> None:
    """``verify --suggest``: replay the incident and the normal runs, print the patch."""
    for option, given in (("--incident", incident), ("--normal", normal), ("--workflows", modules)):
        if not given:
            raise click.UsageError(f"--suggest needs {option}")
    classes = workflow_classes(modules)
    sources = _Sources(policy, classes, address, namespace)
    try:
        report, normals = asyncio.run(sources.reports(incident, incident_run_id, normal))
        suggestion = suggest_from_reports(report, [normals], policy, margin)
    except (ReviewError, KeyringError, VerifierUnavailable) as error:
        _fail(str(error), EXIT_BAD_INPUT)
    except RPCError as error:
        _server_failure("fetching histories", error)
    if as_json:
        click.echo(json.dumps({**suggestion.model_dump(mode="json"), "patch": suggestion.patch()}))
    else:
        click.echo(suggestion.to_yaml(policy_path), nl=False)
    if not suggestion.separated:
        sys.exit(EXIT_NO_SEPARATION)


class _Sources:
    """Where ``--incident`` and ``--normal`` histories come from: files, or the server."""

    def __init__(
        self, policy: Policy, classes: list[type], address: str | None, namespace: str | None
    ) -> None:
        self.policy, self.classes = policy, classes
        self.address, self.namespace = address, namespace
        self.client: Client | None = None

    async def reports(
        self, incident: Sequence[str], run_id: str | None, normal: Sequence[str]
    ) -> tuple[IncidentReport, IncidentReport]:
        """The incident's report, and one report of every normal run's tree together."""
        _check_paths("--incident", incident)
        _check_paths("--normal", normal)
        histories = await self.histories("--incident", incident, run_id)
        if len({history.workflow_id for history in histories if _is_root(history)}) > 1:
            _fail("--incident: give one incident (one root run)", EXIT_BAD_INPUT)
        normals = await self.histories("--normal", normal, None)
        reports = [await self.review(found) for found in (histories, normals)]
        return reports[0], reports[1]

    async def histories(self, option: str, given: Sequence[str], run_id: str | None) -> list[Any]:
        """Histories of files and folders (named by their recorded workflow ids) and ids."""
        _check_paths(option, given)
        paths = [value for value in given if Path(value).exists()]
        found = _named(_read_histories(paths, _UNNAMED, option)) if paths else []
        for workflow_id in (value for value in given if not Path(value).exists()):
            if self.client is None:
                self.client = await _connect(self.address, self.namespace)
            found += await fetch_tree(self.client, workflow_id, run_id)
        return sorted(found, key=lambda history: not _is_root(history))

    async def review(self, histories: list[Any]) -> IncidentReport:
        """Replay histories with the policy (unsandboxed; determinism is still checked)."""
        report = await review(
            histories[0].workflow_id,
            policy=self.policy,
            workflows=self.classes,
            histories=histories,
            sandboxed=False,
        )
        if report.nondeterminism:
            _fail(
                f"replay failed: {report.nondeterminism[0]} (usual causes: the workflow code "
                "changed since the run, or the control keys differ from the live run's: a "
                "signed control message that does not verify takes another path on replay)",
                EXIT_BAD_INPUT,
            )
        return report


_UNNAMED = "(root)"
"""The workflow id of a root run read from a file that does not record its own."""


def _check_paths(option: str, given: Sequence[str]) -> None:
    """Fail (exit 2) on an ``ID|PATH`` value that looks like a path but does not exist.

    A value with a path separator, or ending in ``.json``, is meant as a file or folder:
    looking it up as a workflow id would end in a server error instead.
    """
    separators = {"/", os.sep, *([os.altsep] if os.altsep else [])}
    for value in given:
        looks_like_path = any(sep in value for sep in separators) or value.lower().endswith(".json")
        if looks_like_path and not Path(value).exists():
            _fail(f"{option} {value!r}: no such file or folder", EXIT_BAD_INPUT)


def _is_root(history: Any) -> bool:
    started = history.events[0].workflow_execution_started_event_attributes
    return not started.HasField("parent_workflow_execution")


def _named(histories: list[Any]) -> list[Any]:
    """Root runs read from files under their recorded workflow id, when the file has it."""
    named = []
    for history in histories:
        recorded = history.events[0].workflow_execution_started_event_attributes.workflow_id
        if history.workflow_id == _UNNAMED and recorded:
            history = WorkflowHistory(recorded, list(history.events))
        named.append(history)
    return named


def _print_findings(report: VerifyReport, console: Console) -> None:
    """The findings as a table, and a summary line."""
    if report.findings:
        table = Table(title=f"verify {report.source}", show_lines=True)
        for column in ("severity", "kind", "field", "finding"):
            table.add_column(column, overflow="fold")
        for finding in report.findings:
            colour = _SEVERITY_COLOURS[finding.severity.value]
            table.add_row(
                f"[{colour}]{finding.severity.value}[/]",
                finding.kind.value,
                escape(finding.path),
                escape(finding.message),
            )
        console.print(table)
    counts = ", ".join(f"{report.count(severity)} {severity.value}" for severity in Severity)
    console.print(
        f"{escape(report.source)}: {counts} ({report.solver_queries} solver queries, "
        f"{report.seconds:.2f} s)"
    )


@main.command(
    name="verify-bundle",
    epilog="Exit codes: 0 verified, 1 a problem found (each names its file and record), 2 bad "
    "input (not a bundle, unreadable keys); all of them in temporal-governor --help.",
)
@click.argument("bundle", type=click.Path(exists=True))
@_policy_option(
    "Read the control keys as this policy's control section says (default: "
    "$TEMPORAL_GOVERNOR_KEYS); with --workflows, also the policy to replay with."
)
@click.option(
    "--workflows",
    "modules",
    multiple=True,
    metavar="MODULE[:CLASS]",
    help="Also replay the bundled histories with these workflow classes and --policy, and "
    "check that they give the bundled decisions and report (repeatable).",
)
@click.option("--sandbox/--no-sandbox", default=False, show_default=True, help="With --workflows.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify_bundle_command(
    bundle: str, policy_path: str | None, modules: tuple[str, ...], sandbox: bool, as_json: bool
) -> None:
    r"""Check a signed evidence bundle offline: signature, file hashes, decision chain.

    Exit code 1 when anything is wrong; each problem names its file (and record).

    \b
    Example:
      temporal-governor verify-bundle incident.zip
      temporal-governor verify-bundle incident.zip --policy governance.yaml \\
          --workflows my_agents
    """
    if modules and not policy_path:
        raise click.UsageError("--workflows needs --policy (the policy to replay with)")
    policy = _load_policy(policy_path) if policy_path else Policy.from_dict({})
    try:
        keyring = Keyring.from_policy(policy)
        if modules:
            classes = workflow_classes(modules)
            check = asyncio.run(
                replay_bundle(bundle, keyring, policy=policy, workflows=classes, sandboxed=sandbox)
            )
        else:
            check = verify_bundle(bundle, keyring)
    except (EvidenceError, KeyringError) as error:
        _fail(str(error), EXIT_BAD_INPUT)
    _print_bundle_check(check, as_json)
    if not check.ok:
        sys.exit(EXIT_BUNDLE_PROBLEMS)


def _print_bundle_check(check: BundleCheck, as_json: bool) -> None:
    if as_json:
        click.echo(check.model_dump_json(indent=2))
        return
    console = Console()
    if check.ok:
        replayed = "; replaying its histories gives its decisions" if check.replayed else ""
        console.print(
            f"[green]verified[/] {escape(check.path)}: {check.files} files, {check.records} "
            f"chained decisions, signed with key {escape(str(check.key_id))}{replayed}"
        )
        return
    console.print(f"[red]NOT verified[/] {escape(check.path)}: {len(check.problems)} problem(s)")
    for problem in check.problems:
        console.print(f"  {escape(str(problem))}")


_SEE_EXIT_CODES = (
    "Exit codes: 0 success, 2 bad input, 3 Temporal unreachable or refusing; all of them in "
    "temporal-governor --help."
)
for _command in main.commands.values():
    if "Exit codes:" in (_command.epilog or ""):
        continue  # the command lists its own (verify)
    _command.epilog = (
        f"{_command.epilog}\n\n{_SEE_EXIT_CODES}" if _command.epilog else _SEE_EXIT_CODES
    )
    if _command.help:  # raw docstrings spell click's no-rewrap marker as two characters
        _command.help = _command.help.replace("\\b\n", "\b\n").replace("\\\\\n", "\\\n")

if __name__ == "__main__":
    main()
