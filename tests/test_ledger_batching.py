"""A worker coalesces concurrent calls to one ledger into `batch` updates (issue #13, 3).

Every test drives the queue the `ledger_call` activity uses (`call_ledger`) against a
real ledger workflow on the dev server, and reads what the ledger really received from
its history: how many updates, which of them were batches, which entries they carried.
Each ends with the exactness invariant where it applies: committed is what was really
reported, committed + released == granted, nothing open. Only calls that ask for it
(`LedgerCall.batch`, policy `shared.batch_updates`) are ever batched: a ledger worker of
the release before batching must replay every history the others write.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from conftest import RECORDED, Recorded, source_at
from temporal_governor import GovernorPlugin, Policy
from temporal_governor.core.book import ReleaseRunRequest, ReserveRequest, SettleRequest
from temporal_governor.core.scopes import SharedLimit
from temporal_governor.ledger import LedgerCall, call_ledger, coalescing_stats
from temporal_governor.ledger._activity import LEDGER_SLOW
from temporal_governor.ledger._coalescer import BATCH_MAX_ENTRIES, BATCH_MAX_LIMITS, coalescer
from temporal_governor.ledger._workflow import (
    LEDGER_WORKFLOW,
    MALFORMED_UPDATE,
    MAX_BATCH_ENTRIES,
    LedgerState,
)

CEILING = 1e9
TENANT = "tenant:batching"
RELEASE_BEFORE_BATCHING = "7dd421cfa4926fde664af62d2ae867fb2039675a"
"""The last commit whose ledger has no `batch` handler."""


@dataclass
class Ledger:
    """A fresh ledger of the test's own, served by a worker with the governor's plugin."""

    client: Client
    id: str
    task_queue: str
    resent: list[str] = field(default_factory=list)
    """Update ids a caller sent again (its attempt ran out of time under load)."""

    def call(
        self,
        update: str,
        request: Any,
        update_id: str,
        in_flight: int = 2,
        batch: bool = True,
    ) -> LedgerCall:
        return LedgerCall(
            ledger_id=self.id,
            update=update,  # type: ignore[arg-type]
            request=request,
            update_id=update_id,
            task_queue=self.task_queue,
            continue_as_new_after=100_000,  # one run: its history is every update it got
            max_in_flight=in_flight,
            batch=batch,
        )

    async def send(self, call: LedgerCall, max_entries: int = BATCH_MAX_ENTRIES) -> Any:
        """One call, sent again with its update id while the ledger is slow, as the ledger
        activity's retries would (a loaded machine can take more than one attempt)."""
        while True:
            try:
                return await call_ledger(
                    self.client, call, task_queue=self.task_queue, max_entries=max_entries
                )
            except ApplicationError as error:
                if error.type != LEDGER_SLOW:
                    raise
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError):
                pass
            self.resent.append(call.update_id)
            await asyncio.sleep(0.1)

    async def state(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.client.get_workflow_handle(self.id).query("state", "")
        return result

    async def updates(self) -> list[tuple[str, list[str]]]:
        """Every update the ledger accepted: its name and the update ids it carried."""
        seen = []
        converter = self.client.data_converter.payload_converter
        async for event in self.client.get_workflow_handle(self.id).fetch_history_events():
            if event.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
                continue
            accepted = event.workflow_execution_update_accepted_event_attributes
            request = accepted.accepted_request
            if request.input.name == "batch":
                [argument] = converter.from_payloads(list(request.input.args.payloads))
                seen.append(("batch", [entry["id"] for entry in argument["entries"]]))
            else:
                seen.append((request.input.name, [request.meta.update_id]))
        return seen

    def hold(self) -> asyncio.Semaphore:
        """Hold this process's in-flight slots to the ledger: calls queue until released."""
        gate = coalescer(self.id).gate = asyncio.Semaphore(0)
        return gate


@pytest.fixture
async def ledger(env: WorkflowEnvironment) -> AsyncIterator[Ledger]:
    policy = Policy()
    client = Client(
        env.client.service_client,
        namespace=env.client.namespace,
        plugins=[GovernorPlugin(policy)],
    )
    task_queue = f"batching-{uuid.uuid4()}"
    RECORDED.append(Recorded(task_queue, policy, []))  # its history is replayed at the end
    ledger_id = f"ledger-batching-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue):
        await client.start_workflow(
            LEDGER_WORKFLOW,
            LedgerState(continue_as_new_after=100_000).model_dump(mode="json"),
            id=ledger_id,
            task_queue=task_queue,
        )
        yield Ledger(client, ledger_id, task_queue)


def limit() -> SharedLimit:
    return SharedLimit(
        name="tenants.batching.quotas.max_tokens", scope=TENANT, resource="tokens", ceiling=CEILING
    )


def more_limits(n: int) -> list[SharedLimit]:
    """A realistic reserve's other limits (owner, agent type, tool, ...)."""
    return [
        SharedLimit(
            name=f"tenants.batching.quotas.extra{i}",
            scope=f"agent:batching{i}",
            resource="tokens",
            ceiling=CEILING,
        )
        for i in range(n)
    ]


def reserve(key: str, tokens: float, extra_limits: int = 0) -> ReserveRequest:
    return ReserveRequest(
        key=key,
        run=f"run-{key}",
        amounts={"tokens": tokens},
        limits=[limit(), *more_limits(extra_limits)],
    )


def assert_exact(state: dict[str, Any], reported: float) -> None:
    """Committed is what was reported; committed + released == granted; nothing open."""
    assert state["open_reservations"] == 0
    assert not any(state["reserved"].values())
    assert state["committed"].get("tokens", 0.0) == pytest.approx(reported)
    [tokens] = [c for c in state["counters"] if c["scope"] == TENANT]
    assert (tokens["committed"], tokens["reserved"]) == (pytest.approx(reported), 0)
    for resource, granted in state["granted"].items():
        accounted = state["committed"].get(resource, 0.0) + state["released"].get(resource, 0.0)
        assert accounted == pytest.approx(granted), resource


async def test_concurrent_calls_coalesce_and_each_caller_gets_its_own_reply(
    ledger: Ledger,
) -> None:
    callers = 150
    amounts = {f"k{i}": float(i + 1) for i in range(callers)}
    gate = ledger.hold()
    sending = [
        asyncio.ensure_future(
            ledger.send(ledger.call("reserve", reserve(k, v), f"reserve:{k}", in_flight=1))
        )
        for k, v in amounts.items()
    ]
    await asyncio.sleep(0.2)  # every call is queued: the first update takes a full batch
    gate.release()
    replies = await asyncio.gather(*sending)
    for key, reply in zip(amounts, replies, strict=True):
        assert reply["key"] == key and reply["granted"] and not reply["duplicate"]
        assert reply["amounts"] == {"tokens": amounts[key]}
    used = {k: v / 2 for k, v in amounts.items()}
    settled = await asyncio.gather(
        *(
            ledger.send(
                ledger.call("settle", SettleRequest(key=k, actual={"tokens": u}), f"settle:{k}")
            )
            for k, u in used.items()
        )
    )
    for key, reply in zip(used, settled, strict=True):
        assert reply["key"] == key and reply["settled"]
        assert reply["committed"] == {"tokens": used[key]}
        assert reply["released"] == {"tokens": amounts[key] - used[key]}

    updates = await ledger.updates()
    carried = [update_id for _, ids in updates for update_id in ids]
    assert set(carried) == {f"reserve:{k}" for k in amounts} | {f"settle:{k}" for k in amounts}
    if not ledger.resent:  # under load a caller may send again: the ledger answers it once
        assert len(carried) == 2 * callers
    batches = [ids for name, ids in updates if name == "batch"]
    assert len(updates) < callers  # 300 calls, far fewer updates
    assert len(batches[0]) == BATCH_MAX_ENTRIES  # the queue's head, as much as fits
    assert all(len(ids) <= BATCH_MAX_ENTRIES for ids in batches)
    stats = coalescing_stats(ledger.id)
    sent = 2 * callers + len(ledger.resent)
    assert (stats.calls, stats.updates, stats.batches) == (sent, len(updates), len(batches))
    assert_exact(await ledger.state(), sum(used.values()))


async def test_a_batch_is_capped_by_the_limits_its_calls_touch(ledger: Ledger) -> None:
    # a realistic reserve names several limits (tenant, owner, agent type, tool, ...): its
    # workflow task costs more, so fewer of them share one update
    keys = [f"m{i}" for i in range(40)]
    gate = ledger.hold()
    sending = [
        asyncio.ensure_future(
            ledger.send(ledger.call("reserve", reserve(k, 3.0, 4), f"reserve:{k}", in_flight=1))
        )
        for k in keys
    ]
    await asyncio.sleep(0.2)
    gate.release()
    replies = await asyncio.gather(*sending)
    assert [r["key"] for r in replies] == keys and all(r["granted"] for r in replies)
    batches = [ids for name, ids in await ledger.updates() if name == "batch"]
    assert len(batches[0]) == BATCH_MAX_LIMITS // 5 < BATCH_MAX_ENTRIES
    assert all(len(ids) * 5 <= BATCH_MAX_LIMITS for ids in batches)
    await asyncio.gather(
        *(
            ledger.send(
                ledger.call("settle", SettleRequest(key=k, actual={"tokens": 2.0}), f"settle:{k}")
            )
            for k in keys
        )
    )
    assert_exact(await ledger.state(), 2.0 * len(keys))


async def test_calls_that_do_not_ask_for_batching_go_alone(ledger: Ledger, tmp_path: Path) -> None:
    # a ledger started as a worker of the release before batching would start it
    ledger = Ledger(ledger.client, f"ledger-rolling-{uuid.uuid4().hex[:8]}", ledger.task_queue)
    await ledger.client.start_workflow(
        LEDGER_WORKFLOW,
        {"continue_as_new_after": 100_000},
        id=ledger.id,
        task_queue=ledger.task_queue,
    )
    keys = [f"s{i}" for i in range(12)]
    gate = ledger.hold()
    sending = [
        asyncio.ensure_future(
            ledger.send(
                ledger.call("reserve", reserve(k, 1.0), f"reserve:{k}", in_flight=1, batch=False)
            )
        )
        for k in keys
    ]
    await asyncio.sleep(0.2)  # all queued at once, and still each its own update
    gate.release()
    replies = await asyncio.gather(*sending)
    assert [r["key"] for r in replies] == keys
    assert await ledger.updates() == [("reserve", [f"reserve:{k}"]) for k in keys]
    assert coalescing_stats(ledger.id).batches == 0

    # so the release before batching replays the ledger's history (a rolling deploy) ...
    code, output = await replayed_by_release_before_batching(ledger, tmp_path)
    assert (code, output) == (0, "replayed"), output
    # ... which it could not once a batch is in it
    await asyncio.gather(
        *(ledger.send(ledger.call("settle", SettleRequest(key=k), f"settle:{k}")) for k in keys)
    )
    assert any(name == "batch" for name, _ in await ledger.updates())
    code, output = await replayed_by_release_before_batching(ledger, tmp_path)
    assert code != 0 and "Nondeterminism" in output, output


_REPLAY = """
import asyncio, sys
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
import temporal_governor.ledger._workflow as ledger
assert not hasattr(ledger, "BATCH"), ledger.__file__
history = WorkflowHistory.from_json("ledger", open(sys.argv[1]).read())
asyncio.run(Replayer(workflows=[ledger.GovernorLedger]).replay_workflow(history))
print("replayed")
"""


async def replayed_by_release_before_batching(ledger: Ledger, folder: Path) -> tuple[int, str]:
    """Replay the ledger's history with its workflow as it was before batching."""
    source = folder / "before-batching"
    if not source.exists():
        source.mkdir()
        source_at(RELEASE_BEFORE_BATCHING, source)
    history = await ledger.client.get_workflow_handle(ledger.id).fetch_history()
    path = folder / f"{uuid.uuid4().hex}.json"
    path.write_text(history.to_json())
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _REPLAY, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(source / "src")},
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).strip()[-2000:]


@workflow.defn(name=LEDGER_WORKFLOW, sandboxed=False)
class LedgerBeforeBatching:
    """A stand-in for a ledger worker of an earlier release: every update but `batch`."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @workflow.run
    async def run(self, state: dict[str, Any] | None = None) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.update(name="reserve")
    def reserve(self, request: dict[str, Any]) -> dict[str, Any]:
        self.seen.append(request["key"])
        return {"key": request["key"], "granted": True, "amounts": request["amounts"]}

    @workflow.query(name="seen")
    def query_seen(self) -> list[str]:
        return self.seen


async def test_a_ledger_without_a_batch_handler_gets_single_updates(
    env: WorkflowEnvironment,
) -> None:
    client = env.client
    task_queue = f"old-ledger-{uuid.uuid4()}"
    old = Ledger(client, f"old-ledger-{uuid.uuid4().hex[:8]}", task_queue)
    async with Worker(client, task_queue=task_queue, workflows=[LedgerBeforeBatching]):
        await client.start_workflow(
            LEDGER_WORKFLOW,
            LedgerState(continue_as_new_after=100_000).model_dump(mode="json"),
            id=old.id,
            task_queue=task_queue,
        )
        handle = client.get_workflow_handle(old.id)
        keys = [f"o{i}" for i in range(20)]
        gate = old.hold()
        sending = [
            asyncio.ensure_future(
                old.send(old.call("reserve", reserve(k, 1.0), f"reserve:{k}", in_flight=1))
            )
            for k in keys
        ]
        await asyncio.sleep(0.2)
        gate.release()
        replies = await asyncio.gather(*sending)
        assert [r["key"] for r in replies] == keys
        assert sorted(await handle.query("seen")) == sorted(keys)  # each applied once
        before = coalescing_stats(old.id)
        assert before.batches == 1  # the one refused batch, then every call alone
        if not old.resent:
            assert before.updates == 1 + len(keys)

        more = [f"p{i}" for i in range(20)]
        resent = len(old.resent)
        replies = await asyncio.gather(
            *(
                old.send(old.call("reserve", reserve(k, 1.0), f"reserve:{k}", in_flight=1))
                for k in more
            )
        )
        assert [r["key"] for r in replies] == more
        after = coalescing_stats(old.id)
        assert after.batches == before.batches  # no batch tried for a while
        if len(old.resent) == resent:
            assert after.updates - before.updates == len(more)
        assert sorted(await handle.query("seen")) == sorted(keys + more)
        await handle.terminate()


async def test_a_call_whose_update_id_cannot_be_an_entry_goes_alone(ledger: Ledger) -> None:
    long_key = "x" * 512  # the longest key a ReserveRequest takes: its id is longer
    long_id = f"reserve:{long_key}"
    keys = [f"n{i}" for i in range(10)]
    calls = [ledger.call("reserve", reserve(k, 1.0), f"reserve:{k}", in_flight=1) for k in keys]
    long_request = ReserveRequest(
        key=long_key, run="run-long", amounts={"tokens": 1.0}, limits=[limit()]
    )
    calls.insert(5, ledger.call("reserve", long_request, long_id, in_flight=1))
    # and one whose id the batch model refuses at all (the SDK makes up an id when alone)
    calls.insert(2, ledger.call("reserve", reserve("e", 1.0), "", in_flight=1))
    gate = ledger.hold()
    sending = [asyncio.ensure_future(ledger.send(c)) for c in calls]
    await asyncio.sleep(0.2)
    gate.release()
    replies = await asyncio.gather(*sending)
    assert [r["key"] for r in replies] == [c.request.key for c in calls]  # type: ignore[union-attr]
    assert all(r["granted"] for r in replies)
    updates = await ledger.updates()
    assert ("reserve", [long_id]) in updates
    [(name, ids)] = [(n, i) for n, i in updates if "reserve:n0" in i]
    assert name == "batch" and long_id not in ids and "" not in ids


async def test_max_entries_is_checked(ledger: Ledger) -> None:
    call = ledger.call("reserve", reserve("q", 1.0), "reserve:q")
    for wrong in (0, MAX_BATCH_ENTRIES + 1):
        with pytest.raises(ValueError, match=f"max_entries .*{MAX_BATCH_ENTRIES}.* {wrong}$"):
            await ledger.send(call, max_entries=wrong)
    assert (await ledger.send(call, max_entries=MAX_BATCH_ENTRIES))["granted"]


async def test_reads_are_answered_again_changes_once(ledger: Ledger) -> None:
    handle = ledger.client.get_workflow_handle(ledger.id)

    async def batch(*entries: tuple[str, str, dict[str, Any]]) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = await handle.execute_update(
            "batch",
            {"entries": [{"id": i, "update": u, "request": r} for i, u, r in entries]},
            id=f"batch:{uuid.uuid4().hex}",
        )
        return replies

    read = ("baseline:1", "baseline", {"keys": ["agent:a:m"]})
    assert (await batch(read))[0]["reply"] == {}
    await handle.execute_update("observe", {"values": {"agent:a:m": 2.0}}, id="observe:1")
    [again] = await batch(read)  # the same update id: a fresh answer, not the first one
    assert again["reply"]["agent:a:m"]["mean"] == 2.0


async def test_calls_from_two_event_loops_each_have_their_queue(ledger: Ledger) -> None:
    target = ledger.client.service_client.config.target_host
    namespace = ledger.client.namespace

    async def calls_of_a_thread(name: str) -> list[dict[str, Any]]:
        client = await Client.connect(target, namespace=namespace)
        keys = [f"{name}-{i}" for i in range(8)]
        other = Ledger(client, ledger.id, ledger.task_queue)
        return await asyncio.gather(
            *(
                other.send(other.call("reserve", reserve(k, 1.0), f"reserve:{k}", in_flight=1))
                for k in keys
            )
        )

    results: dict[str, Any] = {}

    def thread(name: str) -> None:
        try:
            results[name] = asyncio.run(calls_of_a_thread(name))
        except BaseException as error:  # reported by the assertion below
            results[name] = error

    threads = [threading.Thread(target=thread, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    await asyncio.to_thread(lambda: [t.join() for t in threads])
    for name in ("a", "b"):
        assert isinstance(results[name], list), results[name]
        assert [r["key"] for r in results[name]] == [f"{name}-{i}" for i in range(8)]
    assert (await ledger.state())["open_reservations"] == 16


async def test_a_malformed_entry_fails_alone(ledger: Ledger) -> None:
    good = [f"g{i}" for i in range(20)]
    # a request the caller's own validation would refuse, as from a caller of another
    # release: the ledger validates every entry on its own
    bad = ReserveRequest.model_construct(key="", run="run-bad", amounts={"tokens": 1.0}, limits=[])
    calls = [ledger.call("reserve", reserve(k, 10.0), f"reserve:{k}", in_flight=1) for k in good]
    calls.insert(7, ledger.call("reserve", bad, "reserve:bad", in_flight=1))
    outcomes = await asyncio.gather(*(ledger.send(c) for c in calls), return_exceptions=True)

    failure = outcomes.pop(7)
    assert isinstance(failure, ApplicationError), failure
    assert failure.type == MALFORMED_UPDATE and failure.non_retryable
    assert "key" in str(failure)
    for key, reply in zip(good, outcomes, strict=True):
        assert isinstance(reply, dict) and reply["key"] == key and reply["granted"], reply
    [with_bad] = [ids for name, ids in await ledger.updates() if "reserve:bad" in ids]
    assert len(with_bad) > 1  # it was batched with good calls, which went on

    # an update a batch cannot carry fails its entry alone, too
    handle = ledger.client.get_workflow_handle(ledger.id)
    raw = await handle.execute_update(
        "batch",
        {
            "entries": [
                {"id": "observe:1", "update": "observe", "request": {"values": {"x": 1.0}}},
                {"id": "settle:g0", "update": "settle", "request": {"key": "g0"}},
            ]
        },
        id=f"batch:{uuid.uuid4().hex}",
    )
    assert (
        raw[0]["failure"]["type"] == MALFORMED_UPDATE and "observe" in raw[0]["failure"]["message"]
    )
    assert raw[1]["reply"]["settled"] and raw[1]["reply"]["committed"] == {}

    await asyncio.gather(
        *(
            ledger.send(
                ledger.call("settle", SettleRequest(key=k, actual={"tokens": 4.0}), f"settle:{k}")
            )
            for k in good[1:]
        )
    )
    assert_exact(await ledger.state(), 4.0 * (len(good) - 1))


async def test_a_resent_entry_never_double_counts(ledger: Ledger) -> None:
    handle = ledger.client.get_workflow_handle(ledger.id)

    def entry(update: str, request: Any, update_id: str) -> dict[str, Any]:
        return {"id": update_id, "update": update, "request": request.wire()}

    async def batch(*entries: dict[str, Any]) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = await handle.execute_update(
            "batch", {"entries": list(entries)}, id=f"batch:{uuid.uuid4().hex}"
        )
        assert [r["id"] for r in replies] == [e["id"] for e in entries]
        return replies

    first = await batch(
        entry("reserve", reserve("a", 100.0), "reserve:a"),
        entry("reserve", reserve("b", 50.0), "reserve:b"),
    )
    settle_b = entry("settle", SettleRequest(key="b", actual={"tokens": 30.0}), "settle:b")
    # the first batch's reply was lost: its caller sends again, in another batch, with
    # more calls, and a call is retried while its first attempt is still in the batch
    again = await batch(
        entry("reserve", reserve("a", 100.0), "reserve:a"),
        settle_b,
        settle_b,
    )
    assert again[0]["reply"] == first[0]["reply"]  # its first reply, not a "duplicate"
    assert again[1]["reply"] == again[2]["reply"]
    assert again[2]["reply"]["committed"] == {"tokens": 30.0}
    # and again as a single update (a retry that found the queue empty)
    assert (
        await handle.execute_update("reserve", reserve("a", 100.0).wire(), id="reserve:a")
        == (first[0]["reply"])
    )
    assert (
        await handle.execute_update("settle", settle_b["request"], id="settle:b")
        == (again[1]["reply"])
    )
    state = await ledger.state()
    assert state["granted"]["tokens"] == 150.0 and state["committed"]["tokens"] == 30.0
    assert state["open_reservations"] == 1

    # the other way round: a single update re-sent inside a batch
    single = await handle.execute_update(
        "settle", {"key": "a", "actual": {"tokens": 70.0}}, id="settle:a"
    )
    [resent] = await batch(
        entry("settle", SettleRequest(key="a", actual={"tokens": 70.0}), "settle:a")
    )
    assert resent["reply"] == single and single["settled"]
    assert_exact(await ledger.state(), 100.0)


async def test_a_cancelled_caller_is_never_sent_and_breaks_no_batch(ledger: Ledger) -> None:
    gate = ledger.hold()  # the test holds the ledger's in-flight slots
    keys = [f"c{i}" for i in range(40)]
    tasks = [
        asyncio.ensure_future(
            ledger.send(ledger.call("reserve", reserve(k, 10.0), f"reserve:{k}", in_flight=1))
        )
        for k in keys
    ]
    await asyncio.sleep(0.2)  # every call is queued, none sent
    assert not any(t.done() for t in tasks)
    for task in tasks[1::2]:
        task.cancel()
    gate.release()  # one slot: the next update carries every live call
    kept = await asyncio.gather(*tasks[0::2])
    assert [r["key"] for r in kept] == keys[0::2] and all(r["granted"] for r in kept)
    assert all(t.cancelled() for t in tasks[1::2])
    assert await ledger.updates() == [("batch", [f"reserve:{k}" for k in keys[0::2]])]
    assert (await ledger.state())["open_reservations"] == 20  # the cancelled ones never went

    # a caller cancelled while its batch is in flight: the others get their replies, and
    # what the ledger did for it is the run's to settle (its release_run)
    late = [f"late{i}" for i in range(10)]
    tasks = [
        asyncio.ensure_future(
            ledger.send(ledger.call("reserve", reserve(k, 10.0), f"reserve:{k}", in_flight=1))
        )
        for k in late
    ]
    sent = coalescing_stats(ledger.id).updates
    while coalescing_stats(ledger.id).updates == sent:
        await asyncio.sleep(0)
    tasks[3].cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for key, outcome in zip(late, outcomes, strict=True):
        if key != late[3]:
            assert isinstance(outcome, dict) and outcome["key"] == key and outcome["granted"]
    assert isinstance(outcomes[3], asyncio.CancelledError) or outcomes[3]["granted"]

    carried = {i for _, ids in await ledger.updates() for i in ids}
    applied = [k for k in keys + late if f"reserve:{k}" in carried]
    assert len(applied) in (29, 30)  # late3 was in flight (applied) or still queued (not)
    ends = [
        ledger.call(
            "release_run",
            ReleaseRunRequest(run=f"run-{k}", settlements={k: {"tokens": 6.0}}),
            f"release_run:run-{k}",
        )
        for k in keys + late
    ]
    done = await asyncio.gather(*(ledger.send(c) for c in ends))
    assert sum(done) == len(applied)  # every reservation the ledger holds, once
    assert_exact(await ledger.state(), 6.0 * len(applied))
