"""Nothing from the wire is trusted (issue 10, D and E).

The attacks run on the real dev server from a plain client (no plugin) that writes the
governor's start header itself, and from activities and child workflows that report or
carry usage no honest component would. Each test checks that the ceiling holds at the
right dispatch, that the workflow task never fails, and that the run's spend is what the
activities really reported (or, where that is unknown, the dispatch's estimate).
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment

from conftest import CONTROL_KEY_ID, CONTROL_SECRET
from temporal_governor import BreachDetails, Policy, attribution
from temporal_governor.activity import Usage
from temporal_governor.context import (
    HEADER,
    MAX_CHAIN,
    MAX_HEADER_BYTES,
    UNVERIFIED_ALLOWANCE,
    AllowanceEntry,
    Attribution,
    BudgetContext,
    StartFacts,
    attribution_problem,
    read_context,
    sign_attribution,
    trusted_context,
    verified_attribution,
)
from temporal_governor.control import Keyring
from temporal_governor.core.accounting import Amounts
from temporal_governor.errors import INVALID_USAGE, ChainLink, InvalidUsage
from temporal_governor.interceptors._failures import (
    LEGACY_MARKER_KEY,
    MARKER_METADATA_KEY,
    marker_payload,
)
from temporal_governor.interceptors._wire import (
    USAGE_METADATA_KEY,
    has_usage_marker,
    read_marker,
    take_failure_usage,
    take_usage,
)
from temporal_governor.plugin import governed_data_converter
from temporal_governor.usage import (
    MAX_TOKENS,
    UsageMeter,
    report_usage,
    reset_meter,
    set_meter,
    usage_in_result,
)
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot
from trust_workflows import (
    BAD_REPORTS,
    TRUST_ACTIVITIES,
    TRUST_WORKFLOWS,
    Attacker,
    Bad,
    ForgedChildParent,
    Plan,
    SpendThenChild,
)
from workflows import ALL_ACTIVITIES, ALL_WORKFLOWS, Spender, Steps

WORKFLOWS = [*ALL_WORKFLOWS, *TRUST_WORKFLOWS]
ACTIVITIES = [*ALL_ACTIVITIES, *TRUST_ACTIVITIES]

SPENDER_1000 = """
agents:
  Spender:
    quotas:
      max_tokens_per_task: 1000
tools:
  spend:
    estimate: { tokens: 100 }
"""

# --- helpers ---------------------------------------------------------------------------


class _WriteHeader(Interceptor):
    """A plain client's own interceptor: it writes the governor's header bytes verbatim."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _HeaderOutbound(next, self.data)


class _HeaderOutbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, data: bytes) -> None:
        super().__init__(next)
        self.data = data

    async def start_workflow(self, input: StartWorkflowInput) -> Any:
        payload = Payload(metadata={"encoding": b"json/plain"}, data=self.data)
        input.headers = {**input.headers, HEADER: payload}
        return await self.next.start_workflow(input)


def plain_client(env: WorkflowEnvironment, header: bytes) -> Client:
    """A client without the governor's plugin that writes `header` as the governor's."""
    return Client(
        env.client.service_client,
        namespace=env.client.namespace,
        interceptors=[_WriteHeader(header)],
    )


async def failed_tasks(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    return sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events)


async def breach(handle: WorkflowHandle[Any, Any]) -> BreachDetails:
    """The run's breach (it must fail with one within 30 s, not hang on a failed task)."""
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), 30)
    details = BreachDetails.from_error(failure.value)
    assert details is not None, f"no breach in {failure.value!r}"
    return details


async def budget(handle: WorkflowHandle[Any, Any]) -> BudgetSnapshot:
    return BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))


def kinds(snap: BudgetSnapshot, kind: str) -> list[Any]:
    return [e for e in snap.recent_events if e.kind == kind]


def header(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# --- D: the start header, on the dev server ---------------------------------------------


@pytest.mark.parametrize(
    "carried",
    [
        b'{"carried": {"tokens": -1000000000}}',
        b'{"carried": {"tokens": NaN}}',
        b'{"carried": {"tokens": -Infinity}}',
        b'{"carried": {"tokens": 0, "cost_usd": NaN}}',
    ],
)
async def test_carried_spend_from_a_plain_client_cannot_switch_the_ceiling_off(
    governed, env, carried: bytes
) -> None:
    async with governed(Policy.from_yaml(SPENDER_1000), WORKFLOWS, ACTIVITIES) as g:
        client = plain_client(env, carried)
        handle = await client.start_workflow(
            Spender.run, Steps(tokens=[100] * 30), id=f"wf-{uuid.uuid4()}", task_queue=g.task_queue
        )
        details = await breach(handle)
        # ten dispatches of 100 fit under 1,000; the eleventh is refused, as without a header
        assert (details.limit, details.observed, details.committed) == (
            "max_tokens_per_task",
            1100,
            1000,
        )
        snap = await budget(handle)
        assert snap.committed["tokens"] == 1000  # exactly what the activities reported
        assert len(kinds(snap, "commit")) == 10
        rejected = kinds(snap, "control_rejected")
        assert rejected and "carried" in rejected[0].scope
        assert await failed_tasks(handle) == 0


async def test_a_malformed_field_costs_only_itself_not_the_runs_tenant(governed, env) -> None:
    async with governed(Policy.from_yaml(SPENDER_1000), WORKFLOWS, ACTIVITIES) as g:
        client = plain_client(
            env, header(attribution={"tenant": "acme"}, carried={"tokens": "lots"})
        )
        handle = await client.start_workflow(
            Spender.run, Steps(tokens=[100] * 2), id=f"wf-{uuid.uuid4()}", task_queue=g.task_queue
        )
        assert await asyncio.wait_for(handle.result(), 30) == 2
        snap = await budget(handle)
        assert snap.tenant == "acme"
        assert snap.committed["tokens"] == 200
        assert any("carried" in e.scope for e in kinds(snap, "control_rejected"))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("unknown allowance resource", header(allowance={"wall_time_s": {"amount": 5, "limit": "l", "scope": "s"}})),
        ("nonces that are not numbers", header(guard_state={"control": {"nonces": {"n1": "x"}}})),
        ("stored control without its time", header(controls={"tenant:default": {"governor.kill": {"message": {}}}})),
        ("deadline without a time zone", header(deadline={"at": "2020-01-01T00:00:00", "limit": "l", "scope": "s", "seconds": 1})),
        ("loop state of the wrong shape", header(guard_state={"loop": {"iterations": -5, "x": 1}})),
        ("a header above the size limit", header(attribution={"tenant": "t", "owner": "x" * MAX_HEADER_BYTES})),
        ("not JSON", b"\xff\xfe not json"),
        ("deeply nested JSON", b'{"guard_state": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ],
)  # fmt: skip
async def test_a_malformed_header_never_fails_the_workflow_task(
    governed, env, name: str, data: bytes
) -> None:
    async with governed(Policy.from_yaml(SPENDER_1000), WORKFLOWS, ACTIVITIES) as g:
        client = plain_client(env, data)
        handle = await client.start_workflow(
            Spender.run, Steps(tokens=[100] * 3), id=f"wf-{uuid.uuid4()}", task_queue=g.task_queue
        )
        assert await asyncio.wait_for(handle.result(), 30) == 3, name
        assert await failed_tasks(handle) == 0, name
        snap = await budget(handle)
        assert snap.committed["tokens"] == 300
        assert kinds(snap, "control_rejected"), f"{name}: the rejection is not recorded"


async def test_a_client_allowance_only_tightens_and_says_it_is_unverified(governed, env) -> None:
    async with governed(Policy.from_yaml(SPENDER_1000), WORKFLOWS, ACTIVITIES) as g:
        loose = {"tokens": {"amount": 1e12, "limit": "max_tokens_per_task", "scope": "run x"}}
        tight = {"tokens": {"amount": 300, "limit": "max_tokens_per_task", "scope": "run boss/1"}}
        ids = [f"wf-{uuid.uuid4()}", f"wf-{uuid.uuid4()}"]
        for id, allowance in zip(ids, (loose, tight), strict=True):
            await plain_client(env, header(allowance=allowance)).start_workflow(
                Spender.run, Steps(tokens=[100] * 30), id=id, task_queue=g.task_queue
            )
        loosened = await breach(g.client.get_workflow_handle(ids[0]))
        assert (loosened.limit, loosened.committed, loosened.observed) == (
            "max_tokens_per_task",
            1000,
            1100,
        )
        capped = await breach(g.client.get_workflow_handle(ids[1]))
        assert (capped.scope, capped.committed, capped.observed) == (UNVERIFIED_ALLOWANCE, 300, 400)
        assert capped.limit == "allowance"  # the header's own label is not repeated


async def test_a_forged_chain_does_not_make_a_root_run_a_child(governed, env) -> None:
    victim = [{"workflow_id": "victim", "run_id": "r-1", "agent": "Planner"}]
    async with governed(Policy.from_yaml(SPENDER_1000), WORKFLOWS, ACTIVITIES) as g:
        handle = await plain_client(env, header(chain=victim)).start_workflow(
            Spender.run, Steps(tokens=[100]), id=f"wf-{uuid.uuid4()}", task_queue=g.task_queue
        )
        assert await asyncio.wait_for(handle.result(), 30) == 1
        snap = await budget(handle)
        assert snap.depth == 0
        assert [link.workflow_id for link in snap.chain] == [handle.id]
        assert any("chain" in e.scope for e in kinds(snap, "control_rejected"))


async def test_a_child_believes_the_allowance_its_own_parent_carved(governed) -> None:
    policy = Policy.from_yaml(
        """
agents:
  SpendThenChild:
    quotas: { max_tokens_per_task: 1000 }
    child_allowance: 0.5
tools:
  spend:
    estimate: { tokens: 100 }
"""
    )
    async with governed(policy, WORKFLOWS, ACTIVITIES) as g:
        handle = await g.client.start_workflow(
            SpendThenChild.run, args=[200, 30], id=f"wf-{uuid.uuid4()}", task_queue=g.task_queue
        )
        parent = await breach(handle)
        # the child had half of the 800 left: 400, i.e. four spends of 100
        assert parent.limit == "max_tokens_per_task"
        assert parent.scope == f"run SpendThenChild/{handle.id}"
        child = await budget(g.client.get_workflow_handle(f"{handle.id}.child"))
        assert child.breach is not None
        assert (child.breach.scope, child.breach.committed) == (parent.scope, 400)
        assert child.depth == 1 and child.chain[0].workflow_id == handle.id
        assert not kinds(child, "control_rejected")


# --- E: usage values, on the dev server -------------------------------------------------

BAD_USAGE_POLICY = """
agents:
  Attacker:
    quotas:
      max_cost_usd_per_task: 1.0
      max_tokens_per_task: 1000
tools:
  report_bad:
    estimate: { tokens: 100, cost_usd: 0.25 }
  spend:
    estimate: { tokens: 100 }
"""


@pytest.mark.parametrize("kind", sorted(BAD_REPORTS))
@pytest.mark.parametrize("swallowed", [False, True], ids=["raised", "caught-in-activity"])
async def test_report_usage_refuses_bad_values_and_charges_the_estimate(
    governed, kind: str, swallowed: bool
) -> None:
    async with governed(Policy.from_yaml(BAD_USAGE_POLICY), WORKFLOWS, ACTIVITIES) as g:
        plan = Plan(activity="report_bad", bad=Bad(kind, catch=swallowed), times=10)
        handle = await g.start(Attacker.run, plan)
        details = await breach(handle)
        # each bad report costs at least the estimate ($0.25): four fit under $1, not ten
        assert (details.limit, details.committed, details.observed) == (
            "max_cost_usd_per_task",
            1.0,
            1.25,
        )
        snap = await budget(handle)
        commits = kinds(snap, "commit")
        assert [c.amounts.get("cost_usd") for c in commits] == [0.25] * 4
        assert [c.amounts.get("tokens") for c in commits] == [100] * 4
        assert snap.committed["tokens"] == 400
        assert await failed_tasks(handle) == 0


async def test_report_usage_error_names_the_activity_and_is_not_retried(governed) -> None:
    async with governed(Policy.from_yaml(BAD_USAGE_POLICY), WORKFLOWS, ACTIVITIES) as g:
        plan = Plan(activity="report_bad", bad=Bad("nan_cost", tokens=30), times=1, catch=False)
        handle = await g.start(Attacker.run, plan)
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), 30)
        activity_error = failure.value.cause
        assert isinstance(activity_error, ActivityError)
        cause = activity_error.cause
        assert isinstance(cause, ApplicationError)
        assert cause.type == INVALID_USAGE and cause.non_retryable
        assert "activity report_bad" in cause.message and handle.id in cause.message
        assert "cost_usd must be >= 0" in cause.message and "nan" in cause.message
        snap = await budget(handle)
        # the 30 valid tokens were reported, but the attempt is charged its estimate (100)
        assert snap.committed["tokens"] == 100 and snap.committed["cost_usd"] == 0.25


async def test_negative_usage_in_a_model_shaped_result_is_charged_as_the_estimate(
    governed,
) -> None:
    policy = Policy.from_yaml(
        """
agents:
  Attacker:
    quotas: { max_tokens_per_task: 300 }
tools:
  negative_shape:
    estimate: { tokens: 100 }
"""
    )
    async with governed(policy, WORKFLOWS, ACTIVITIES) as g:
        handle = await g.start(
            Attacker.run, Plan(activity="negative_shape", value=-1_000_000, times=10)
        )
        details = await breach(handle)
        assert (details.committed, details.observed) == (300, 400)
        snap = await budget(handle)
        assert [c.amounts.get("tokens") for c in kinds(snap, "commit")] == [100] * 3
        assert await failed_tasks(handle) == 0


@pytest.mark.parametrize(
    ("activity", "value"),
    [
        ("forged_marker", -1_000_000),
        ("forged_breach", -1e9),
        ("forged_breach", math.nan),
    ],
)
async def test_a_forged_failure_marker_is_never_negative_spend(
    governed, activity: str, value: float
) -> None:
    async with governed(Policy.from_yaml(BAD_USAGE_POLICY), WORKFLOWS, ACTIVITIES) as g:
        handle = await g.start(
            Attacker.run, Plan(activity=activity, value=value, times=1, spends=30)
        )
        details = await breach(handle)
        # the forged failure counts no tokens; ten real spends of 100 fill the 1,000
        assert (details.limit, details.committed, details.observed) == (
            "max_tokens_per_task",
            1000,
            1100,
        )
        snap = await budget(handle)
        assert snap.committed["tokens"] == 1000
        assert await failed_tasks(handle) == 0


@pytest.mark.parametrize("how", ["breach_nan", "negative_marker"])
async def test_a_child_forging_its_usage_is_charged_its_whole_reservation(
    governed, how: str
) -> None:
    policy = Policy.from_yaml(
        """
agents:
  ForgedChildParent:
    quotas: { max_tokens_per_task: 1000 }
    child_allowance: 0.5
tools:
  spend:
    estimate: { tokens: 100 }
"""
    )
    async with governed(policy, WORKFLOWS, ACTIVITIES) as g:
        handle = await g.client.start_workflow(
            ForgedChildParent.run, args=[how, 10], id=f"wf-{uuid.uuid4()}", task_queue=g.task_queue
        )
        details = await breach(handle)
        # the child's spend is unknown: it is charged the 500 carved for it, so five spends fit
        assert (details.committed, details.observed) == (1000, 1100)
        snap = await budget(handle)
        assert [c.amounts.get("tokens") for c in kinds(snap, "commit")] == [500] + [100] * 5
        assert await failed_tasks(handle) == 0


# --- D: the pure judgement of a header --------------------------------------------------

ROOT = StartFacts(run_id="run-2")
CONTINUED = StartFacts(run_id="run-2", continued_run_id="run-1")
PARENT = ChainLink(workflow_id="parent", run_id="p-1", agent="Planner")
CHILD = StartFacts(run_id="run-2", parent_workflow_id="parent", parent_run_id="p-1")
CARVED = {"tokens": AllowanceEntry(amount=400, limit="max_tokens_per_task", scope="run P/p")}


def test_read_context_keeps_a_valid_header_whole() -> None:
    context = BudgetContext(
        attribution=Attribution(tenant="acme", owner="al"),
        chain=[PARENT],
        allowance=CARVED,
        carried=Amounts(tokens=5),
        max_depth=3,
    )
    read, problems = read_context(context.model_dump_json().encode())
    assert (read, problems) == (context, [])


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b'{"carried": {"tokens": NaN}}', "carried"),
        (b'{"carried": {"tokens": -Infinity}}', "carried"),
        (b'{"carried": {"tokens": -5}}', "carried"),
        (b'{"carried": {"tokens": 1e300}}', "carried"),
        (b'{"allowance": {"tokens": {"amount": NaN, "limit": "l", "scope": "s"}}}', "allowance"),
        (b'{"allowance": {"tokens": {"amount": -1, "limit": "l", "scope": "s"}}}', "allowance"),
        (b'{"allowance": {"foo": {"amount": 1, "limit": "l", "scope": "s"}}}', "allowance"),
        (b'{"deadline": {"at": "2030-01-01T00:00:00Z", "limit": "l", "scope": "s", "seconds": NaN}}', "deadline"),
        (b'{"deadline": {"at": "2030-01-01T00:00:00", "limit": "l", "scope": "s", "seconds": 1}}', "deadline"),
        (b'{"max_depth": -1}', "max_depth"),
        (b'{"guard_state": {"tier_calls": {"t": -3}}}', "guard_state"),
        (b'{"guard_state": {"chain_start": NaN}}', "guard_state"),
        (b'{"controls": {"s": {"governor.kill": {"message": {}}}}}', "controls"),
        (b'{"carried": "lots"}', "carried"),
    ],
)  # fmt: skip
def test_read_context_drops_each_bad_part_and_says_so(data: bytes, field: str) -> None:
    payload = json.loads(data)
    payload["attribution"] = {"tenant": "acme"}
    context, problems = read_context(json.dumps(payload).encode())
    assert context is not None
    assert context.attribution.tenant == "acme"  # the rest of the header is kept
    assert getattr(context, field) == BudgetContext.model_fields[field].get_default(
        call_default_factory=True
    )
    assert problems and any(field in p for p in problems), problems


def test_read_context_bounds_sizes() -> None:
    big, problems = read_context(b" " * (MAX_HEADER_BYTES + 1))
    assert big is None and "larger than" in problems[0]
    long_tenant, problems = read_context(header(attribution={"tenant": "t" * 201}))
    assert long_tenant is not None and long_tenant.attribution == Attribution()
    assert problems
    links = [
        {"workflow_id": f"w{i}", "run_id": f"r{i}", "agent": "A"} for i in range(MAX_CHAIN + 10)
    ]
    cut, problems = read_context(header(chain=links))
    assert cut is not None and len(cut.chain) == MAX_CHAIN
    assert cut.chain[0].workflow_id == "w0" and cut.chain[-1].workflow_id == f"w{MAX_CHAIN + 9}"
    assert problems
    long_id, problems = read_context(
        header(chain=[{"workflow_id": "w" * 2000, "run_id": "r", "agent": "A"}])
    )
    assert long_id is not None and long_id.chain == [] and problems
    for garbage in (b"[1, 2]", b"not json", b"[" * 50_000):
        context, problems = read_context(garbage)
        assert context is None and problems


def test_carried_spend_is_believed_only_from_the_runs_own_predecessor() -> None:
    carried = BudgetContext(carried=Amounts(tokens=700), from_run="run-1")
    kept, problems = trusted_context(carried, CONTINUED)
    assert kept.carried == Amounts(tokens=700) and problems == []
    assert kept.from_run == "run-2"  # handed on to the next continue-as-new
    for facts, context in [
        (ROOT, carried),  # a fresh start
        (CONTINUED, carried.model_copy(update={"from_run": "run-0"})),  # a retry or cron run
        (CONTINUED, carried.model_copy(update={"from_run": None})),  # a client's header
    ]:
        judged, problems = trusted_context(context, facts)
        assert judged.carried is None
        assert any("carried spend" in p for p in problems)


def test_allowance_and_chain_are_believed_only_from_the_parent_that_started_the_run() -> None:
    carved = BudgetContext(chain=[PARENT], allowance=CARVED, guard_state={"loop": {}})
    kept, problems = trusted_context(carved, CHILD)
    assert (kept.chain, kept.allowance, kept.guard_state, problems) == (
        [PARENT],
        CARVED,
        {"loop": {}},
        [],
    )
    for facts in (ROOT, StartFacts(run_id="run-2", parent_workflow_id="other", parent_run_id="o")):
        judged, problems = trusted_context(carved, facts)
        assert judged.chain == [] and judged.guard_state is None
        # the allowance still caps the run (it can only lower what it may spend), unlabelled
        assert judged.allowance["tokens"].amount == 400
        assert judged.allowance["tokens"].scope == UNVERIFIED_ALLOWANCE
        assert len(problems) == 3
    # a continue-as-new of the child hands its chain and allowance on
    handed_on = carved.model_copy(update={"from_run": "run-1"})
    kept, problems = trusted_context(handed_on, CONTINUED)
    assert (kept.chain, kept.allowance, problems) == ([PARENT], CARVED, [])


def test_what_only_tightens_is_kept_from_anyone() -> None:
    context = BudgetContext(
        attribution=Attribution(tenant="acme"),
        max_depth=2,
        max_depth_scope="x",
        deadline={"at": datetime(2030, 1, 1, tzinfo=UTC), "limit": "l", "scope": "s", "seconds": 9},
    )
    judged, problems = trusted_context(context, ROOT)
    assert problems == []
    assert judged == context.model_copy(update={"from_run": "run-2"})


# --- E: the pure checks of usage --------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"input_tokens": -1000000}',
        b'{"cost_usd": NaN}',
        b'{"cost_usd": -Infinity}',
        b'{"cost_usd": Infinity}',
        b'{"output_tokens": 10000000000000000}',
        b'{"tool_calls": -1}',
        b'{"models": {"m": -5}}',
        b'{"attempts": -1}',
    ],
)
def test_usage_on_the_wire_is_refused_not_counted_negative(raw: bytes) -> None:
    payload = Payload(metadata={USAGE_METADATA_KEY: raw}, data=b"1")
    assert take_usage(payload) is None
    assert USAGE_METADATA_KEY not in payload.metadata  # agent code never sees it
    # the governor's marker (a tagged JSON payload) on a failure, and in heartbeat details
    tagged = marker_payload(Usage())
    tagged.data = b'{"temporal-governor-marker": "usage", "usage": ' + raw + b"}"
    # the marker as it was briefly written (binary/protobuf), still read
    inner = Payload(metadata={MARKER_METADATA_KEY: b"usage"}, data=raw)
    protobuf = Payload(
        metadata={
            "encoding": b"binary/protobuf",
            "messageType": b"temporal.api.common.v1.Payload",
            MARKER_METADATA_KEY: b"usage",
        },
        data=inner.SerializeToString(),
    )
    # and the JSON marker object of 0.1.x
    legacy = json.loads(raw.replace(b"NaN", b"1e999").replace(b"-Infinity", b"-1e999"))
    converter = governed_data_converter()
    (old,) = converter.payload_converter.to_payloads([{LEGACY_MARKER_KEY: legacy}])
    for marker in (tagged, protobuf, old):
        failure = Failure()
        converter.failure_converter.to_failure(
            ApplicationError("x", "user detail"), converter.payload_converter, failure
        )
        failure.application_failure_info.details.payloads.append(marker)
        error = converter.failure_converter.from_failure(failure, converter.payload_converter)
        assert isinstance(error, ApplicationError)
        assert list(error.details) == ["user detail"]  # agent code never sees it
        assert has_usage_marker(error)  # there, so the dispatch is charged as unknown
        assert take_failure_usage(error) is None
        (decoded,) = converter.payload_converter.from_payloads([marker])
        usage, rest, problem = read_marker(("user detail", decoded))
        assert (usage, rest) == (None, ("user detail",)) and problem is not None


def test_usage_on_the_wire_is_bounded_in_bytes() -> None:
    huge = Usage(models={f"m{i}": 1 for i in range(60)}).model_dump_json().encode()
    padded = huge[:-1] + b', "backpressure": {"x": "' + b"y" * 70_000 + b'"}}'
    assert take_usage(Payload(metadata={USAGE_METADATA_KEY: padded})) is None
    assert take_usage(Payload(metadata={USAGE_METADATA_KEY: huge})) is not None


def test_report_usage_raises_invalid_usage_naming_the_activity() -> None:
    meter = UsageMeter(activity="activity call_llm (id 3, attempt 1) of workflow w")
    token = set_meter(meter)
    try:
        report_usage(input_tokens=10)
        for values in BAD_REPORTS.values():
            with pytest.raises(InvalidUsage) as raised:
                report_usage(**values)
            assert "activity call_llm (id 3" in str(raised.value)
            assert raised.value.non_retryable and raised.value.type == INVALID_USAGE
            assert isinstance(raised.value, ValueError)
        with pytest.raises(InvalidUsage, match="tool_calls"):
            report_usage(tool_calls=True)  # type: ignore[arg-type]
    finally:
        reset_meter(token)
    assert meter.usage.tokens == 10  # nothing of the refused reports counted
    assert meter.usage.cost_usd == 0
    assert len(meter.refused) == len(BAD_REPORTS) + 1


@pytest.mark.parametrize(
    "result",
    [
        {"usage": {"input_tokens": -1_000_000}},
        {"usage": {"prompt_tokens": 5, "completion_tokens": math.nan}},
        {"usage": {"output_tokens": math.inf}},
        {"usage": {"output_tokens": MAX_TOKENS + 1}},
    ],
)
def test_bad_usage_in_a_result_shape_is_refused(result: dict[str, Any]) -> None:
    with pytest.raises(InvalidUsage, match="usage in the result refused"):
        usage_in_result(result)


def test_integral_float_tokens_in_a_result_shape_are_read() -> None:
    assert usage_in_result({"usage": {"input_tokens": 12.0, "output_tokens": 3}}) == (12, 3, None)


def test_usage_arithmetic_stays_inside_its_bounds() -> None:
    big = Usage(input_tokens=MAX_TOKENS)
    assert (big + big).input_tokens == MAX_TOKENS
    nasty = Amounts.model_construct(
        None, tokens=math.nan, cost_usd=-5.0, tool_calls=math.inf, subtasks=0.0, child_workflows=0.0
    )
    usage = Usage.from_amounts(nasty)
    assert (usage.output_tokens, usage.cost_usd) == (MAX_TOKENS, 0.0)
    raised = Usage(input_tokens=30).at_least(100, 0.25, 0, "refused")
    assert (raised.tokens, raised.cost_usd, raised.refused) == (100, 0.25, "refused")
    assert Usage(input_tokens=300).at_least(100, 0, 0, "r").tokens == 300


@pytest.mark.parametrize(
    "details",
    [
        {"limit": 1},
        {"limit": "l", "resource": "tokens", "scope": "s", "observed": 0, "ceiling": 0,
         "spent": {"tokens": math.nan}},
        {"limit": "l", "resource": "tokens", "scope": "s", "observed": 0, "ceiling": 0,
         "spent": {"tokens": -1e9}},
        {"limit": "l", "resource": "tokens", "scope": "s", "observed": 0, "ceiling": 0,
         "spent": {"gold": 1}},
    ],
)  # fmt: skip
def test_forged_breach_details_are_not_read_as_spend(details: dict[str, Any]) -> None:
    error = ApplicationError("forged", details, type="BudgetExceeded")
    assert BreachDetails.from_error(error) is None


# --- D: signed attribution ---------------------------------------------------------------

KEYS = Keyring({"k1": b"secret-one"})


def test_a_signed_attribution_holds_only_for_its_tenant_workflow_and_key() -> None:
    signed = sign_attribution(Attribution(tenant="acme", owner="al"), "wf-1", KEYS)
    assert signed.key_id == "k1" and signed.signature is not None
    assert attribution_problem(signed, "wf-1", KEYS) is None
    assert attribution_problem(signed, "wf-2", KEYS) == "bad signature"  # another workflow
    moved = signed.model_copy(update={"tenant": "globex"})
    assert attribution_problem(moved, "wf-1", KEYS) == "bad signature"  # another tenant
    assert attribution_problem(signed, "wf-1", Keyring({"k2": b"x"})) == "unknown key id 'k1'"
    assert attribution_problem(Attribution(tenant="acme"), "wf-1", KEYS) == "unsigned"
    assert sign_attribution(Attribution(tenant="acme"), "wf-1", Keyring({})).signature is None


def test_required_signatures_charge_unproven_claims_to_the_default_tenant() -> None:
    facts = StartFacts(run_id="run-2", workflow_id="wf-1")
    claim = BudgetContext(attribution=Attribution(tenant="acme"))
    signed = BudgetContext(attribution=sign_attribution(claim.attribution, "wf-1", KEYS))
    forged = signed.model_copy(
        update={"attribution": signed.attribution.model_copy(update={"signature": "0" * 64})}
    )
    for require in (False, True):
        kept, problems = verified_attribution(signed, facts, KEYS, proven=False, require=require)
        assert (kept, problems) == (signed, [])
    # not required: an unsigned claim passes silently, a forged one is kept but recorded
    assert verified_attribution(claim, facts, KEYS, proven=False, require=False) == (claim, [])
    kept, problems = verified_attribution(forged, facts, KEYS, proven=False, require=False)
    assert kept == forged and "bad signature" in problems[0]
    # required: both are charged to the default tenant
    for context in (claim, forged):
        judged, problems = verified_attribution(context, facts, KEYS, proven=False, require=True)
        assert judged.attribution == Attribution() and "refused" in problems[0]
    # what the parent or the predecessor handed on was judged when that run started
    assert verified_attribution(claim, facts, KEYS, proven=True, require=True) == (claim, [])


async def test_a_governed_client_signs_the_attribution_for_the_workflow_it_starts(
    governed,
) -> None:
    async with governed(Policy.from_yaml(SPENDER_1000), WORKFLOWS, ACTIVITIES) as g:
        with attribution(tenant="acme", owner="al"):
            handle = await g.start(Spender.run, Steps(tokens=[100]))
        assert await handle.result() == 1
        history = await handle.fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        context, problems = read_context(started.header.fields[HEADER].data)
        assert context is not None and problems == []
        keys = Keyring({CONTROL_KEY_ID: CONTROL_SECRET.encode()})
        assert attribution_problem(context.attribution, handle.id, keys) is None
        assert (await budget(handle)).tenant == "acme"
