"""Regression tests from the second review of the shared-budget fixes (#10): usage reported
from threads, retries that heartbeat, baselines within the ledger's size budget, a ledger
back under its budget.

Workflows here are unsandboxed so they can live in this file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from datetime import timedelta

import yaml
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, ChildWorkflowError
from temporalio.service import RPCError
from temporalio.worker import Interceptor, Worker

from temporal_governor import BreachDetails, GovernorPlugin, Policy
from temporal_governor.activity import report_usage
from temporal_governor.workflow import BUDGET_QUERY, BudgetSnapshot


def policy(body: str) -> Policy:
    data = yaml.safe_load(body)
    data.setdefault("shared", {})["ledger_id"] = f"ledger-{uuid.uuid4().hex[:8]}"
    return Policy.from_dict(data)


async def ledger_state(client: Client, p: Policy, scope: str = "") -> dict:
    return await client.get_workflow_handle(p.shared.ledger_id).query("state", scope)


async def snapshot(handle) -> BudgetSnapshot:
    return BudgetSnapshot.model_validate(await handle.query(BUDGET_QUERY))


# -- 1. report_usage in a sync (threaded) activity --------------------------------------


@activity.defn
def sync_spend(tokens: int) -> int:
    """A plain sync activity (thread pool) that reports its usage."""
    report_usage(output_tokens=tokens)
    return tokens


@workflow.defn(sandboxed=False)
class CallsSync:
    @workflow.run
    async def run(self, tokens: int) -> int:
        return await workflow.execute_activity(
            sync_spend,
            tokens,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


async def test_report_usage_works_in_a_threaded_sync_activity(env) -> None:
    """`on_report` heartbeats through the raw outbound (`_ActivityWorker._heartbeat`), which
    calls `asyncio.create_task`: from the activity's worker thread there is no running loop,
    so `report_usage` raises RuntimeError and every sync activity that reports fails."""
    p = policy("agents: { CallsSync: { quotas: { max_tokens_per_task: 1000 } } }")
    plugin = GovernorPlugin(p)
    client = Client(env.client.service_client, namespace=env.client.namespace, plugins=[plugin])
    tq = f"tq-{uuid.uuid4()}"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        async with Worker(
            client,
            task_queue=tq,
            workflows=[CallsSync],
            activities=[sync_spend],
            activity_executor=pool,
        ):
            handle = await client.start_workflow(
                CallsSync.run, 100, id=f"wf-{uuid.uuid4()}", task_queue=tq
            )
            try:
                outcome = await asyncio.wait_for(handle.result(), 30)
            except WorkflowFailureError as failure:
                outcome = f"failed: {failure.cause.cause}"
            committed = (await snapshot(handle)).committed.get("tokens", 0.0)
    assert (outcome, committed) == (100, 100.0)


# -- 2. heartbeat throttling: a lost attempt's later reports ---------------------------


@activity.defn
async def reports_twice_then_hangs(tokens: int) -> int:
    """Attempt 1: reports twice, then never completes (its completion is lost, as with a
    killed worker). Attempt 2: reports 1 and returns."""
    if activity.info().attempt == 1:
        report_usage(output_tokens=tokens)
        await asyncio.sleep(0.3)
        report_usage(output_tokens=tokens)
        await asyncio.sleep(30)
    report_usage(output_tokens=1)
    return tokens


@workflow.defn(sandboxed=False)
class RetriesAfterLostAttempt:
    @workflow.run
    async def run(self, tokens: int) -> int:
        return await workflow.execute_activity(
            reports_twice_then_hangs,
            tokens,
            start_to_close_timeout=timedelta(seconds=3),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )


# -- 3. a child's own BudgetExceeded-typed failure hides what it spent -------------------


@activity.defn
async def spend_tokens(tokens: int) -> int:
    report_usage(output_tokens=tokens)
    return tokens


@workflow.defn(sandboxed=False)
class SpendsThenFakesABreach:
    """Spends 3 x 100, then fails with breach-shaped details claiming it spent nothing."""

    @workflow.run
    async def run(self) -> None:
        for _ in range(3):
            await workflow.execute_activity(
                spend_tokens, 100, start_to_close_timeout=timedelta(seconds=10)
            )
        raise ApplicationError(
            "over budget (not really)",
            {"limit": "x", "resource": "tokens", "scope": "s", "observed": 0, "ceiling": 0},
            type="BudgetExceeded",
            non_retryable=True,
        )


@workflow.defn(sandboxed=False)
class ParentOfAFaker:
    @workflow.run
    async def run(self, children: int) -> int:
        ran = 0
        for i in range(children):
            try:
                await workflow.execute_child_workflow(
                    SpendsThenFakesABreach.run, id=f"{workflow.info().workflow_id}.{i}"
                )
            except ChildWorkflowError as error:
                if BreachDetails.from_error(error) is None or error.cause.message.startswith(
                    "max_tokens_per_task"
                ):
                    break
            ran += 1
        return ran


@workflow.defn(sandboxed=False)
class Greedy:
    """Spends 100 at a time until its own ceiling halts it."""

    @workflow.run
    async def run(self) -> None:
        while True:
            await workflow.execute_activity(
                spend_tokens, 100, start_to_close_timeout=timedelta(seconds=10)
            )


@workflow.defn(sandboxed=False)
class SpendsThenPassesOnAGrandchildBreach:
    """Spends 3 x 100, then runs a Greedy child and lets its failure through (unhandled), or
    passes its cause on (`raise e.cause`)."""

    @workflow.run
    async def run(self, how: str) -> None:
        for _ in range(3):
            await workflow.execute_activity(
                spend_tokens, 100, start_to_close_timeout=timedelta(seconds=10)
            )
        greedy = workflow.execute_child_workflow(
            Greedy.run, id=f"{workflow.info().workflow_id}.greedy"
        )
        if how == "propagate":  # the child's failure is the ChildWorkflowError itself
            await greedy
        try:
            await greedy
        except ChildWorkflowError as error:
            raise error.cause from None


@workflow.defn(sandboxed=False)
class ParentOfAPasser:
    @workflow.run
    async def run(self, how: str) -> None:
        with contextlib.suppress(ChildWorkflowError):
            await workflow.execute_child_workflow(
                SpendsThenPassesOnAGrandchildBreach.run, how, id=f"{workflow.info().workflow_id}.c"
            )


# -- 5. an activity still running when its run completes ----------------------------------

SPENT: list[int] = []


@activity.defn
async def slow_spend(tokens: int) -> int:
    """Works a while, then reports ``tokens`` and records them (outside the governor)."""
    await asyncio.sleep(2)
    report_usage(output_tokens=tokens)
    SPENT.append(tokens)
    return tokens


@workflow.defn(sandboxed=False)
class FiresAndReturns:
    """Starts an activity, lets it get going, returns without awaiting it."""

    @workflow.run
    async def run(self, tokens: int) -> str:
        workflow.start_activity(slow_spend, tokens, start_to_close_timeout=timedelta(seconds=10))
        await workflow.sleep(0.2)
        return "returned"


@workflow.defn(sandboxed=False)
class RunsFireAndForgetChildren:
    @workflow.run
    async def run(self, n: int) -> int:
        done = 0
        for i in range(n):
            try:
                await workflow.execute_child_workflow(
                    FiresAndReturns.run, 100, id=f"{workflow.info().workflow_id}.{i}"
                )
            except ChildWorkflowError:
                break
            done += 1
        await workflow.sleep(4)  # the children's activities spend meanwhile
        return done


# -- 6. an async-completed activity's reported usage --------------------------------------

TOKENS: list[bytes] = []


@activity.defn
async def spends_then_completes_async(tokens: int) -> str:
    """Calls the model (reports its usage), then hands completion to another process."""
    report_usage(output_tokens=tokens)
    TOKENS.append(activity.info().task_token)
    activity.raise_complete_async()


@workflow.defn(sandboxed=False)
class AwaitsAsyncCompletion:
    @workflow.run
    async def run(self, tokens: int) -> str:
        return await workflow.execute_activity(
            spends_then_completes_async, tokens, start_to_close_timeout=timedelta(seconds=30)
        )


# -- 7. ledger updates from anyone ---------------------------------------------------------


@workflow.defn(sandboxed=False)
class Naps:
    @workflow.run
    async def run(self, seconds: float) -> str:
        await workflow.sleep(seconds)
        return "awake"


# -- 8. the ledger's packed state: baselines are outside its size budget ------------------


def test_spend_baselines_cannot_push_the_packed_state_past_its_budget() -> None:
    """`observe` adds baselines without `_grow`; its "no new baseline while over budget"
    check reads `packed_bytes`, which only `_grow` (reserve, control) ever measures. 2,000
    baselines (the count cap) with 300-character keys of non-ASCII characters (keys come
    from tenant names in start headers, or straight from an `observe` update anyone can
    send) pack to about 2.4 MB: past the documented 1 MiB budget and past Temporal's 2 MB
    payload limit, so the ledger's next continue-as-new is refused (issue C again)."""
    import random

    from temporal_governor.core.book import MAX_PACKED_BYTES, LedgerBook, ObserveRequest

    rnd = random.Random(7)
    book = LedgerBook()
    for _ in range(20):
        keys = [
            "".join(chr(rnd.randrange(0x10000, 0x10FFFF)) for _ in range(300)) for _ in range(100)
        ]
        book.observe(ObserveRequest(values=dict.fromkeys(keys, 1.0)))
    packed = len(book.pack()["packed"])
    assert packed <= MAX_PACKED_BYTES + 128 * 1024, f"{packed} bytes packed"


async def test_observe_updates_from_a_plain_client_do_not_wedge_the_ledger(governed, env) -> None:
    """End to end: 20 `observe` updates (anyone may send them) and the ledger's
    continue-as-new payload is past the server's limit; its workflow task then fails on
    every attempt and every governed run with a shared limit stops (fail-closed)."""
    import random

    from temporal_governor.ledger import LEDGER_WORKFLOW

    p = policy("tenants: { acme: { quotas: { max_tokens: 1000 } } }")
    rnd = random.Random(7)
    async with governed(p, [Naps], []) as g:
        ledger = await g.client.start_workflow(
            LEDGER_WORKFLOW,
            {"continue_as_new_after": 21},
            id=p.shared.ledger_id,
            task_queue=g.task_queue,
        )
        plain = env.client.get_workflow_handle(p.shared.ledger_id)
        refused = None
        for _ in range(21):
            keys = [
                "".join(chr(rnd.randrange(0x10000, 0x10FFFF)) for _ in range(300))
                for _ in range(100)
            ]
            try:
                await plain.execute_update("observe", {"values": dict.fromkeys(keys, 1.0)})
            except RPCError as error:
                refused = error.message
                break
        failures = [
            e.workflow_task_failed_event_attributes.failure.message[:200]
            for e in (await ledger.fetch_history()).events
            if e.HasField("workflow_task_failed_event_attributes")
        ]
    assert (refused, failures) == (None, []), "the ledger is wedged"


# -- 9. a parent that returns while a TERMINATE child runs ---------------------------------

COMPENSATED: list[str] = []


@activity.defn
async def compensate(what: str) -> None:
    COMPENSATED.append(what)


@workflow.defn(sandboxed=False)
class SagaStep:
    """Holds a booking until told otherwise; undoes it if it is cancelled (saga style)."""

    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.wait_condition(lambda: False)
        except asyncio.CancelledError:
            await workflow.execute_activity(
                compensate, "booking", start_to_close_timeout=timedelta(seconds=10)
            )
            raise
        return "held"


@workflow.defn(sandboxed=False)
class StartsAndReturns:
    @workflow.run
    async def run(self, task_queue: str) -> str:
        await workflow.start_child_workflow(
            SagaStep.run,
            id=f"{workflow.info().workflow_id}.saga",
            task_queue=task_queue or None,
        )
        return "done"


# -- 10. the keeper wakes a run forever, with nothing left to renew -----------------------


@workflow.defn(sandboxed=False)
class OneCallThenIdle:
    """One activity (a per-dispatch shared reservation, settled at once), then waits."""

    @workflow.run
    async def run(self, idle_s: float) -> str:
        await workflow.execute_activity(
            spend_tokens, 10, start_to_close_timeout=timedelta(seconds=10)
        )
        await workflow.sleep(idle_s)
        return "done"


# -- 11. a retry's own heartbeat drops the earlier attempts' usage ------------------------


@activity.defn
async def checkpoints(tokens: int) -> int:
    """Attempt 1 spends and fails; attempt 2 heartbeats progress, then is lost (times out);
    attempt 3 spends 1 and returns."""
    attempt = activity.info().attempt
    if attempt == 1:
        report_usage(output_tokens=tokens)
        raise RuntimeError("flaky provider")
    if attempt == 2:
        activity.heartbeat("page 7")
        await asyncio.sleep(30)
    report_usage(output_tokens=1)
    return tokens


@workflow.defn(sandboxed=False)
class RetriesThrice:
    @workflow.run
    async def run(self, tokens: int) -> int:
        return await workflow.execute_activity(
            checkpoints,
            tokens,
            start_to_close_timeout=timedelta(seconds=3),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )


async def test_a_retry_that_heartbeats_keeps_the_earlier_attempts_usage(governed) -> None:
    """Earlier attempts' usage rides in the heartbeat details as the last detail. A retry
    whose code heartbeats before it reports sends its own details without that marker
    (`GovernedActivityOutbound.heartbeat`: no marker until this attempt reports), so when
    that attempt is lost the next one finds no earlier usage: attempt 1's 100 are gone."""
    p = policy("agents: { RetriesThrice: { quotas: { max_tokens_per_task: 100000 } } }")
    async with governed(p, [RetriesThrice], [checkpoints]) as g:
        handle = await g.start(RetriesThrice.run, 100)
        assert await asyncio.wait_for(handle.result(), 60) == 100
        committed = (await snapshot(handle)).committed.get("tokens", 0.0)
    assert committed == 101.0, "attempt 1 reported 100, attempt 3 reported 1"


def test_a_ledger_back_under_its_size_budget_grants_again() -> None:
    """Once `_grow` measured the state over budget, it refuses (`ledger.capacity`) every
    growth and measures again only after REMEASURE_EVERY (500) more asks, whatever was
    freed meanwhile: every reservation here is released and the packed state is a few KB,
    yet the next reservation is refused. Waiting callers retry once a second and give up
    after `shared.max_wait` (30 s), i.e. they are killed (`shared.ledger_unavailable`)
    unless hundreds of asks arrive first."""
    import random
    import string

    from temporal_governor.core.book import (
        CAPACITY_LIMIT,
        MAX_PACKED_BYTES,
        LedgerBook,
        ReleaseRunRequest,
        ReserveRequest,
    )
    from temporal_governor.core.scopes import SharedLimit

    rnd = random.Random(3)
    limit = SharedLimit(name="t.max_tokens", scope="tenant:t", resource="tokens", ceiling=1e12)

    def noise(n: int) -> str:
        return "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(n))

    book = LedgerBook()
    now = 1_000_000.0
    for _ in range(5_000):
        result = book.reserve(
            ReserveRequest(key=noise(512), run="big-run", amounts={"tokens": 1.0}, limits=[limit]),
            now,
        )
        if not result.granted:
            assert result.refusal is not None and result.refusal.limit == CAPACITY_LIMIT
            break
    else:
        raise AssertionError("never over budget")
    book.release_run(ReleaseRunRequest(run="big-run"), now)
    assert len(book.pack()["packed"]) < MAX_PACKED_BYTES // 10  # room again
    after = book.reserve(
        ReserveRequest(key="k/next#1", run="small-run", amounts={"tokens": 1.0}, limits=[limit]),
        now + 1,
    )
    assert after.granted, after.refusal


# -- 12. signed attribution: a plain parent vouches for itself ----------------------------


@workflow.defn(sandboxed=False)
class TenantProbe:
    @workflow.run
    async def run(self) -> str:
        return "ok"


@workflow.defn(sandboxed=False)
class PlainParent:
    """Runs on a worker without the governor; starts a governed child on another queue."""

    @workflow.run
    async def run(self, task_queue: str) -> str:
        handle = await workflow.start_child_workflow(
            TenantProbe.run, id=f"{workflow.info().workflow_id}.probe", task_queue=task_queue
        )
        await handle
        return handle.id


class _ClaimsATenant(Interceptor):
    """The attacker's worker: writes the governor's header on child starts, with a chain
    that ends in the parent itself (which it knows: its own ids)."""

    def workflow_interceptor_class(self, input):
        from temporalio.worker import StartChildWorkflowInput, WorkflowOutboundInterceptor

        from temporal_governor.context import (
            Attribution,
            BudgetContext,
            ChainLink,
            with_context,
        )

        class Outbound(WorkflowOutboundInterceptor):
            async def start_child_workflow(self, input: StartChildWorkflowInput):
                info = workflow.info()
                context = BudgetContext(
                    attribution=Attribution(tenant="acme"),
                    chain=[ChainLink(workflow_id=info.workflow_id, run_id=info.run_id, agent="x")],
                )
                input.headers = with_context(input.headers, context)
                return await self.next.start_child_workflow(input)

        from temporalio.worker import WorkflowInboundInterceptor

        class Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(Outbound(outbound))

        return Inbound


# -- 13. an activity cancelled after it reported -----------------------------------------


@activity.defn
async def reports_then_works(tokens: int) -> int:
    """Reports its usage at once, then works (heartbeating) until cancelled."""
    report_usage(output_tokens=tokens)
    for _ in range(600):
        activity.heartbeat()
        await asyncio.sleep(0.05)
    return tokens


@workflow.defn(sandboxed=False)
class GivesUpOnIt:
    """Starts the activity, gives up after a second (a timeout in agent code)."""

    @workflow.run
    async def run(self, tokens: int) -> str:
        handle = workflow.start_activity(
            reports_then_works,
            tokens,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=5),
        )
        await workflow.sleep(1.5)
        handle.cancel()
        with contextlib.suppress(Exception):
            await handle
        return "gave up"
