"""The package touches no private state of the SDK (issue 12, item 3).

- A scan of every module's syntax fails on a read or write of a private attribute
  (``x._name``, ``getattr(x, "_name")`` ...) of anything but the package's own objects,
  and on imports of the SDK's private names or modules; it fails on the old code.
- Usage on failures travels through the failure converter the plugin installs: the
  marker is appended to the failure, never to the exception, and taken off the failure
  before an exception is built from it; a root run's own error reaches its client
  exactly as raised, with or without the plugin on that client.
- Histories written by releases up to 0.1.x (a JSON marker object) and by the code that
  wrote the marker as a ``binary/protobuf`` payload are still read.
- An eviction is told from a cancellation without the event loop's private state.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import temporalio
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowFailureError
from temporalio.converter import DataConverter, DefaultFailureConverter
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType
from temporalio.worker import Worker

from conftest import RECORDED, Recorded
from private_sdk_workflows import ACTIVITIES, WORKFLOWS, CatchingParent, LetThrough, OwnError
from private_sdk_workflows import Failure as Raise
from temporal_governor import GovernorPlugin, Policy
from temporal_governor.core.decisions import DecisionRecord
from temporal_governor.interceptors._failures import (
    LEGACY_MARKER_KEY,
    MARKER_METADATA_KEY,
    carry_usage,
    marker_payload,
)
from temporal_governor.interceptors._wire import has_usage_marker, take_failure_usage
from temporal_governor.names import BUDGET_QUERY
from temporal_governor.plugin import governed_data_converter
from temporal_governor.usage import Usage
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS, Spender, Steps

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "temporal_governor"
SDK = Path(temporalio.__file__).parent
HISTORIES = Path(__file__).parent / "histories" / "previous-release"

# --- the scan ----------------------------------------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined(tree: ast.AST) -> set[str]:
    """Every private name a module defines: functions, classes, assignments, attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
    return {name for name in names if _private(name)}


def _names_of(root: Path) -> set[str]:
    names: set[str] = set()
    for path in root.rglob("*.py"):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue  # generated protobuf modules: their private names are protobuf's
        names |= _defined(ast.parse(path.read_bytes(), str(path)))
        names |= {part for part in path.relative_to(root).with_suffix("").parts if _private(part)}
    return names


@functools.cache
def sdk_names() -> frozenset[str]:
    """Private names the installed temporalio defines (attributes, functions, modules)."""
    return frozenset(_names_of(SDK))


@functools.cache
def package_names() -> frozenset[str]:
    """Private names the package defines itself."""
    return frozenset(_names_of(PACKAGE))


class _Scan(ast.NodeVisitor):
    """Finds private accesses that are not the package's own."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self._classes: list[set[str]] = []

    def _flag(self, node: ast.AST, what: str) -> None:
        self.found.append(f"line {getattr(node, 'lineno', '?')}: {what}")

    def _foreign(self, receiver: ast.expr, name: str) -> bool:
        """Whether ``receiver.name`` is private state that is not the package's own."""
        if not _private(name):
            return False
        if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
            # the package's own class's attribute, unless only an SDK base class defines it
            own = self._classes[-1] if self._classes else set()
            return name not in own and name in sdk_names()
        return name in sdk_names()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._classes.append(_defined(node) | {node.name})
        self.generic_visit(node)
        self._classes.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self._foreign(node.value, node.attr):
            self._flag(node, f"{ast.unparse(node)}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        if (
            isinstance(function, ast.Name)
            and function.id in ("getattr", "setattr", "delattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and self._foreign(node.args[0], node.args[1].value)
        ):
            self._flag(node, ast.unparse(node))
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        holder = node.value
        by_dict = isinstance(holder, ast.Attribute) and holder.attr == "__dict__"
        by_vars = (
            isinstance(holder, ast.Call)
            and isinstance(holder.func, ast.Name)
            and holder.func.id == "vars"
        )
        key = node.slice
        if (
            (by_dict or by_vars)
            and isinstance(key, ast.Constant)
            and isinstance(key.value, str)
            and _private(key.value)
        ):
            self._flag(node, ast.unparse(node))
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level == 0 and module.split(".")[0] == "temporalio":
            if any(_private(part) for part in module.split(".")):
                self._flag(node, f"from {module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    self._flag(node, f"from {module} import {alias.name}")
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == "temporalio" and any(_private(part) for part in parts):
                self._flag(node, f"import {alias.name}")
        self.generic_visit(node)


def private_accesses(source: str) -> list[str]:
    """The private accesses of a module's source that are not the package's own."""
    scan = _Scan()
    scan.visit(ast.parse(source))
    return scan.found


def _modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def test_the_sdk_defines_the_names_the_scan_looks_for() -> None:
    # the scan is only as good as the names it knows: the SDK's private state the package
    # used to touch is among them
    assert {"_details", "_last_heartbeat_details", "_failure", "_deleting"} <= sdk_names()


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_touches_private_sdk_state(path: Path) -> None:
    assert private_accesses(path.read_text()) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("error._details = (*details, marker)", "error._details"),
        ("error._last_heartbeat_details = rest", "error._last_heartbeat_details"),
        ("err._failure = failure", "err._failure"),
        ('loop = get(); flag = getattr(loop, "_deleting", False)', "getattr(loop"),
        ('setattr(error, "_details", ())', "setattr(error"),
        ('vars(error)["_details"]', "vars(error)"),
        ("from temporalio.worker._workflow_instance import X", "_workflow_instance"),
        ("from temporalio.common import _arg_unset", "_arg_unset"),
        ("import temporalio.worker._workflow", "_workflow"),
        ("x = temporalio.workflow._Runtime.current()", "_Runtime"),
        (
            "class E(ApplicationError):\n    def f(self):\n        return self._details",
            "self._details",
        ),
    ],
)
def test_the_scan_finds_private_accesses(source: str, expected: str) -> None:
    found = private_accesses(source)
    assert found and any(expected in line for line in found), found


def test_the_scan_lets_the_package_use_its_own_objects() -> None:
    source = """
class Box:
    def __init__(self):
        self._items = {}
    def put(self, other):
        self._items.update(other._items)
"""
    assert private_accesses(source) == []


def test_the_scan_fails_on_the_code_before_the_change() -> None:
    try:
        old = subprocess.run(
            ["git", "show", "8570e14:src/temporal_governor/interceptors/_wire.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the repository's history is not available")
    found = private_accesses(old)
    assert any("error._details" in line for line in found), found
    assert any("error._last_heartbeat_details" in line for line in found), found


# --- the failure converter ---------------------------------------------------------------

CONVERTER = governed_data_converter()
PLAIN = DataConverter.default


def to_failure(error: BaseException, converter: DataConverter = CONVERTER) -> Failure:
    failure = Failure()
    converter.failure_converter.to_failure(error, converter.payload_converter, failure)
    return failure


def from_failure(failure: Failure, converter: DataConverter = CONVERTER) -> BaseException:
    return converter.failure_converter.from_failure(failure, converter.payload_converter)


def markers(failure: Failure) -> list[Payload]:
    """Every payload of the failure and its causes that is a marker (new or 0.1.x)."""
    found = []
    node: Failure | None = failure
    while node is not None:
        payloads = [
            *node.application_failure_info.details.payloads,
            *node.timeout_failure_info.last_heartbeat_details.payloads,
        ]
        found += [
            p
            for p in payloads
            if MARKER_METADATA_KEY in p.metadata or LEGACY_MARKER_KEY.encode() in p.data
        ]
        node = node.cause if node.HasField("cause") else None
    return found


def test_the_plugin_installs_the_converter_over_the_one_configured() -> None:
    assert governed_data_converter(CONVERTER) is CONVERTER
    pydantic = pytest.importorskip("temporalio.contrib.pydantic")
    converter = governed_data_converter(pydantic.pydantic_data_converter)
    assert converter.payload_converter_class is pydantic.PydanticPayloadConverter
    assert issubclass(converter.failure_converter_class, DefaultFailureConverter)


def test_usage_rides_on_the_failure_not_on_the_exception() -> None:
    error = ApplicationError("broke", {"why": "x"}, "second", type="Broke", non_retryable=True)
    carry_usage(error, Usage(input_tokens=7))
    failure = to_failure(error)
    assert list(error.details) == [{"why": "x"}, "second"]  # the exception is not changed
    assert len(failure.application_failure_info.details.payloads) == 3
    assert len(markers(failure)) == 1
    # without the registration the failure is exactly what the SDK makes of the error
    assert to_failure(error) == to_failure(error, PLAIN)
    received = from_failure(failure)
    assert isinstance(received, ApplicationError)
    assert list(received.details) == [{"why": "x"}, "second"]
    assert (received.type, received.message, received.non_retryable) == ("Broke", "broke", True)
    assert received.failure is not None and markers(received.failure) == []
    assert has_usage_marker(received)
    usage = take_failure_usage(received)
    assert usage is not None and usage.input_tokens == 7
    assert not has_usage_marker(received)  # taken


def test_a_builtin_exception_carries_usage_as_the_sdk_converts_it() -> None:
    error = ValueError("bad value")  # built-in: cannot be weakly referenced
    carry_usage(error, Usage(output_tokens=3))
    failure = to_failure(error)
    assert failure.application_failure_info.type == "ValueError"
    received = from_failure(failure)
    assert isinstance(received, ApplicationError) and list(received.details) == []
    usage = take_failure_usage(received)
    assert usage is not None and usage.output_tokens == 3


def test_markers_leave_every_cause_and_the_input_is_not_changed() -> None:
    earlier = ApplicationError("attempt 1", "d", type="Flaky")
    carry_usage(earlier, Usage(input_tokens=1))
    failure = Failure(message="activity timed out")
    failure.timeout_failure_info.timeout_type = TimeoutType.HEARTBEAT.value  # type: ignore[assignment]
    failure.timeout_failure_info.last_heartbeat_details.payloads.extend(
        [*PLAIN.payload_converter.to_payloads(["user"]), marker_payload(Usage(input_tokens=3))]
    )
    failure.cause.CopyFrom(to_failure(earlier))
    outer = Failure(message="Activity task failed")
    outer.activity_failure_info.activity_type.name = "flaky"
    outer.cause.CopyFrom(failure)
    before = outer.SerializeToString()
    error = from_failure(outer)
    assert outer.SerializeToString() == before
    assert isinstance(error, ActivityError) and error.failure is not None
    assert markers(error.failure) == []  # what agent code would let through is clean
    timeout = error.cause
    assert isinstance(timeout, TimeoutError)
    assert list(timeout.last_heartbeat_details) == ["user"]
    assert isinstance(timeout.cause, ApplicationError) and list(timeout.cause.details) == ["d"]
    usage = take_failure_usage(timeout)
    assert usage is not None and usage.input_tokens == 3  # the heartbeat's: every attempt


def protobuf_marker(usage_json: bytes) -> Payload:
    """A marker as it was briefly written: the usage in a tagged ``Payload`` message."""
    inner = Payload(metadata={MARKER_METADATA_KEY: b"usage"}, data=usage_json)
    return Payload(
        metadata={
            "encoding": b"binary/protobuf",
            "messageType": b"temporal.api.common.v1.Payload",
            MARKER_METADATA_KEY: b"usage",
        },
        data=inner.SerializeToString(),
    )


def json_marker(usage_json: bytes) -> Payload:
    """The governor's marker around any usage JSON (``marker_payload`` writes only valid)."""
    marker = marker_payload(Usage(input_tokens=1))
    marker.data = b'{"temporal-governor-marker": "usage", "usage": ' + usage_json + b"}"
    return marker


@pytest.mark.parametrize("marker", [json_marker, protobuf_marker])
def test_a_refused_marker_is_taken_off_and_reads_as_unknown(marker: Any) -> None:
    failure = to_failure(ApplicationError("x", "user detail"))
    failure.application_failure_info.details.payloads.append(marker(b'{"input_tokens": -1000000}'))
    error = from_failure(failure)
    assert isinstance(error, ApplicationError) and list(error.details) == ["user detail"]
    assert has_usage_marker(error)
    assert take_failure_usage(error) is None


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"[1]", b'{"usage": {"input_tokens": 5}}', b"[" * 100_000]
)
def test_a_malformed_marker_is_taken_off_and_reads_as_unknown(data: bytes) -> None:
    failure = to_failure(ApplicationError("x", "user detail"))
    marker = marker_payload(Usage(input_tokens=1))
    marker.data = data
    failure.application_failure_info.details.payloads.append(marker)
    error = from_failure(failure)
    assert isinstance(error, ApplicationError) and list(error.details) == ["user detail"]
    assert has_usage_marker(error)
    assert take_failure_usage(error) is None


def test_the_binary_protobuf_marker_is_still_read() -> None:
    failure = to_failure(ApplicationError("x", "user detail"))
    failure.application_failure_info.details.payloads.append(
        protobuf_marker(b'{"input_tokens": 4}')
    )
    error = from_failure(failure)
    assert isinstance(error, ApplicationError) and list(error.details) == ["user detail"]
    usage = take_failure_usage(error)
    assert usage is not None and usage.input_tokens == 4


def _failure_events(path: Path) -> list[Failure]:
    history = json_format.Parse(path.read_text(), History(), ignore_unknown_fields=True)
    found = []
    for event in history.events:
        for field in (
            "activity_task_failed_event_attributes",
            "workflow_execution_failed_event_attributes",
        ):
            if event.HasField(field):
                found.append(getattr(event, field).failure)
    return found


def test_markers_of_the_previous_release_are_still_read() -> None:
    activity_failed, workflow_failed = _failure_events(
        HISTORIES / "release-0.1.0-failing.run0.json"
    )
    assert len(markers(activity_failed)) == 1  # 0.1.0 wrote a JSON marker object
    error = from_failure(activity_failed)
    assert isinstance(error, ApplicationError) and list(error.details) == ["why"]
    usage = take_failure_usage(error)
    assert usage is not None and usage.input_tokens == 10
    # 0.1.0 left its marker in the run's own failure; a governed client no longer shows it
    received = from_failure(workflow_failed)
    assert received.__cause__ is not None and received.__cause__.__cause__ is not None
    refused = received.__cause__.__cause__
    assert isinstance(refused, ApplicationError) and list(refused.details) == ["why"]


# --- on the server -----------------------------------------------------------------------

POLICY = """
agents:
  OwnError: { quotas: { max_tokens_per_task: 1000 } }
  LetThrough: { quotas: { max_tokens_per_task: 1000 } }
  CatchingParent: { quotas: { max_tokens_per_task: 1000 }, child_allowance: 0.5 }
tools:
  spend_and_fail: { estimate: { tokens: 100 } }
  spend_ok: { estimate: { tokens: 100 } }
"""


def _walk(failure: Failure) -> Iterator[Failure]:
    node: Failure | None = failure
    while node is not None:
        yield node
        node = node.cause if node.HasField("cause") else None


def _failures_in(events: Iterable[Any], field: str) -> list[Failure]:
    return [getattr(e, field).failure for e in events if e.HasField(field)]


async def test_a_root_runs_own_error_reaches_its_client_as_raised(governed, env) -> None:
    plain = Client(env.client.service_client, namespace=env.client.namespace)
    async with governed(Policy.from_yaml(POLICY), WORKFLOWS, ACTIVITIES) as g:
        for client in (g.client, plain):
            own = await g.start(OwnError.run, Raise(tokens=10))
            with pytest.raises(WorkflowFailureError) as raised:
                await client.get_workflow_handle(own.id).result()
            error = raised.value.cause
            assert isinstance(error, ApplicationError)
            assert (error.type, error.message, error.non_retryable) == (
                "GaveUp",
                "run gave up",
                True,
            )
            assert list(error.details) == [{"why": "broken"}, "second"]

            through = await g.start(LetThrough.run, Raise(tokens=10))
            with pytest.raises(WorkflowFailureError) as raised:
                await client.get_workflow_handle(through.id).result()
            cause = raised.value.cause
            assert isinstance(cause, ActivityError) and isinstance(cause.cause, ApplicationError)
            assert cause.cause.type == "ToolBroke"
            assert list(cause.cause.details) == [{"why": "broken"}, "second"]

            builtin = await g.start(LetThrough.run, Raise(tokens=10, builtin=True))
            with pytest.raises(WorkflowFailureError) as raised:
                await client.get_workflow_handle(builtin.id).result()
            cause = raised.value.cause
            assert isinstance(cause, ActivityError) and isinstance(cause.cause, ApplicationError)
            assert (cause.cause.type, cause.cause.message) == ("ValueError", "bad value")
            assert list(cause.cause.details) == []

            for handle in (own, through, builtin):
                events = (await handle.fetch_history()).events
                (run_failure,) = _failures_in(events, "workflow_execution_failed_event_attributes")
                assert markers(run_failure) == []  # in the history too: nothing added
                assert await budget_tokens(handle) == 10  # what its activity reported
            # the usage did travel: on the activity's own failure
            events = (await through.fetch_history()).events
            (activity_failure,) = _failures_in(events, "activity_task_failed_event_attributes")
            assert len(markers(activity_failure)) == 1


async def budget_tokens(handle: Any) -> float:
    """The tokens the run has committed (its budget query)."""
    snapshot = await handle.query(BUDGET_QUERY)
    return float(snapshot["committed"].get("tokens", 0))


async def test_a_governed_parent_learns_a_failed_childs_spend_but_not_its_marker(
    governed,
) -> None:
    async with governed(Policy.from_yaml(POLICY), WORKFLOWS, ACTIVITIES) as g:
        handle = await g.start(CatchingParent.run, Raise(tokens=30))
        seen = await handle.result()
        assert seen == {
            "type": "GaveUp",
            "message": "run gave up",
            "details": [{"why": "broken"}, "second"],
        }
        # charged what the child spent, not its whole carve (500)
        assert await budget_tokens(handle) == 30
        events = (await handle.fetch_history()).events
        (child_failure,) = _failures_in(events, "child_workflow_execution_failed_event_attributes")
        assert len(markers(child_failure)) == 1


class _Commits:
    """A sink that keeps every commit, live or replayed."""

    def __init__(self) -> None:
        self.commits: list[DecisionRecord] = []

    def record(self, decision: DecisionRecord, *, replaying: bool) -> None:
        if decision.kind == "commit":
            self.commits.append(decision)

    def remaining(
        self, decision: DecisionRecord, remaining: dict[str, float], *, replaying: bool
    ) -> None:
        return None


async def test_an_eviction_is_no_outcome_of_a_dispatch(env) -> None:
    # with no workflow cache the worker evicts the run after every workflow task, while
    # its activity is in flight; that cancel must not be committed as the dispatch's outcome
    # (it would charge the reservation, 500, where the activity reported 100)
    policy = Policy.from_yaml(
        "agents: {Spender: {quotas: {max_tokens_per_task: 10000}}}\n"
        "tools: {spend: {estimate: {tokens: 500}}}"
    )
    sink = _Commits()
    plugin = GovernorPlugin(policy, sinks=[sink], telemetry=False)
    client = Client(env.client.service_client, namespace=env.client.namespace, plugins=[plugin])
    task_queue = f"evict-{uuid.uuid4()}"
    RECORDED.append(Recorded(task_queue, policy, ALL_WORKFLOWS))
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=ALL_WORKFLOWS,
        activities=ALL_ACTIVITIES,
        max_cached_workflows=0,
    ):
        result = await client.execute_workflow(
            Spender.run, Steps(tokens=[100, 100]), id=f"evict-{uuid.uuid4()}", task_queue=task_queue
        )
    assert result == 2
    assert sink.commits, "no commit recorded"
    assert {c.amounts.get("tokens") for c in sink.commits} == {100}
    assert len({c.key for c in sink.commits}) == 2


def test_a_marker_payload_is_recognised_by_its_metadata_only() -> None:
    # a user detail that merely looks like the usage is no marker
    failure = to_failure(ApplicationError("x", Usage(input_tokens=5).model_dump(), {"k": 1}))
    error = from_failure(failure)
    assert isinstance(error, ApplicationError) and len(error.details) == 2
    assert not has_usage_marker(error)
    # nor is one shaped exactly like the marker's JSON: only the governor's tag makes one
    shaped = {"temporal-governor-marker": "usage", "usage": {"input_tokens": 5}}
    error = from_failure(to_failure(ApplicationError("x", shaped)))
    assert isinstance(error, ApplicationError) and list(error.details) == [shaped]
    assert not has_usage_marker(error)
    payload = marker_payload(Usage(input_tokens=5))
    assert payload.metadata[MARKER_METADATA_KEY] == b"usage"
    assert payload.metadata["encoding"] == b"json/plain"  # every payload converter has it
    assert PLAIN.payload_converter.from_payloads([payload]) == [shaped]
