"""Per-dispatch cost of the detectors (loops, throttles, priority, risk tiers, degradation).

One workflow runs N sequential trivial activities, each with a different argument (its
index, so the repeated-signature check hashes real arguments). The same workflow runs on
two governed workers, on the same dev server in the same process, alternating which goes
first, for several rounds:

* ``off``: per-task limits only (the policy of ``bench/overhead.py``);
* ``on``: the same limits plus every per-dispatch detector of the agent and the tool:
  loop detection (repeated signature, tool cycle, consecutive failures, iterations,
  agent visits), an agent and a tool token bucket, a priority class, a degrade rule and
  a risk tier. Thresholds are set so that nothing fires: this measures the cost of
  checking, not of acting. ``anomaly`` is left off: it costs two ledger round trips per
  run (baselines read at start, learnt at the end), not per dispatch.

Before timing, three control runs (policy ``on`` with one threshold made tight) check
that the detectors are wired for this workflow and tool: the iteration cap and the risk
tier must halt their runs, the agent throttle must hold dispatches back. After timing,
the last run of each worker is checked through ``governor.budget`` and its history: it
completed, every dispatch was counted, no detector, throttle or degrade event was logged
(``on`` logged exactly as many events as ``off``), no throttle timer was started, and
only ``on`` dispatched with the policy's priority. Any failed check exits non-zero.

Last, a micro-measure without a server: the pure per-dispatch work of the loop detector
and the token buckets (``call_signature``, ``LoopDetector.on_dispatch`` and
``on_result``, two ``TokenBucket.take``), in microseconds per dispatch.

    .venv/bin/python bench/detector_cost.py [--dispatches 1000] [--rounds 5]
        [--micro-iterations 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from temporal_governor import BreachDetails, GovernorPlugin, Policy
from temporal_governor.core.detectors import LoopDetector, LoopRules, TokenBucket, call_signature
from temporal_governor.interceptors import PRIORITY_KEYS

POLICY_OFF = """
defaults:
  quotas: { max_tokens_per_task: 1_000_000_000, max_tool_calls_per_task: 1_000_000 }
"""

POLICY_ON = (
    POLICY_OFF
    + """
agents:
  Sequential:
    loop_detection:
      signature_window: 32
      max_repeats: 1000
      max_cycle_repeats: 1000
      max_consecutive_failures: 1000
      max_iterations: 1000000
      max_agent_visits: 50
    throttle: { rate_per_sec: 1000000, burst: 1000000 }
    priority: { default_class: high }
    degrade:
      - { when_remaining_below: 0.0001, max_tokens: 64, model_map: { a: b } }
tools:
  trivial:
    risk_tier: read
    throttle: { rate_per_sec: 1000000, burst: 1000000 }
risk_tiers:
  read: { max_calls_per_task: 1000000 }
"""
)
"""The ``off`` policy plus every per-dispatch detector, with thresholds nothing reaches."""

DETECTOR_EVENTS = {"loop", "anomaly", "throttle", "degrade", "refuse", "breach", "alert"}
"""Event kinds that would mean a detector (or a limit) acted during a timed run."""


def _on_with(change: Callable[[dict[str, Any]], None]) -> Policy:
    data = yaml.safe_load(POLICY_ON)
    change(data)
    return Policy.from_dict(data, source="<control>")


def _tight_iterations(data: dict[str, Any]) -> None:
    data["agents"]["Sequential"]["loop_detection"]["max_iterations"] = 10


def _tight_tier(data: dict[str, Any]) -> None:
    data["risk_tiers"]["read"]["max_calls_per_task"] = 10


def _slow_agent(data: dict[str, Any]) -> None:
    data["agents"]["Sequential"]["throttle"] = {"rate_per_sec": 5, "burst": 1}


CONTROLS: dict[str, tuple[Callable[[dict[str, Any]], None], int, str | None]] = {
    "control-iterations": (_tight_iterations, 20, "loop_detection.iterations"),
    "control-tier": (_tight_tier, 20, "risk_tiers.read.max_calls_per_task"),
    "control-throttle": (_slow_agent, 4, None),
}
"""Control runs: how the ``on`` policy is tightened, dispatches, the limit that must halt
the run (``None``: the run completes, with its dispatches held back by the throttle)."""


class CheckFailed(RuntimeError):
    """The benchmark did not measure what it claims to: stop loudly."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@activity.defn
async def trivial(index: int) -> int:
    return index


@workflow.defn
class Sequential:
    @workflow.run
    async def run(self, n: int) -> int:
        total = 0
        for index in range(n):
            total += await workflow.execute_activity(
                trivial, index, start_to_close_timeout=timedelta(seconds=30)
            )
        return total


def expected_total(n: int) -> int:
    return n * (n - 1) // 2


async def timed(client: Client, task_queue: str, n: int) -> tuple[float, float, str]:
    """Wall seconds of one run, CPU seconds of this process (client + workers), its id."""
    workflow_id = f"bench-detectors-{task_queue}-{uuid.uuid4()}"
    started, cpu = time.perf_counter(), time.process_time()
    result = await client.execute_workflow(Sequential.run, n, id=workflow_id, task_queue=task_queue)
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    check(result == expected_total(n), f"{workflow_id} returned {result}, not {expected_total(n)}")
    return seconds, cpu_s, workflow_id


async def history_facts(client: Client, workflow_id: str) -> tuple[list[int], int, bool]:
    """Priority keys of the scheduled activities, timers started, completed or not."""
    keys: list[int] = []
    timers = 0
    completed = False
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            keys.append(event.activity_task_scheduled_event_attributes.priority.priority_key)
        elif event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            timers += 1
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            completed = True
    return keys, timers, completed


async def verify_timed_runs(client: Client, last: dict[str, str], n: int) -> list[str]:
    """Check the last timed run of each worker; return the lines to print."""
    lines: list[str] = []
    event_counts: dict[str, int] = {}
    for mode in ("off", "on"):
        workflow_id = last[mode]
        budget = await client.get_workflow_handle(workflow_id).query("governor.budget")
        keys, timers, completed = await history_facts(client, workflow_id)
        check(completed, f"{mode}: {workflow_id} did not complete")
        check(budget["breach"] is None, f"{mode}: breach {budget['breach']}")
        calls = budget["committed"].get("tool_calls")
        check(calls == n, f"{mode}: {calls} tool calls committed, expected {n}")
        kinds = {event["kind"] for event in budget["recent_events"]}
        check(not kinds & DETECTOR_EVENTS, f"{mode}: detector events {kinds & DETECTOR_EVENTS}")
        check(timers == 0, f"{mode}: {timers} timers started (throttle waits?)")
        check(len(keys) == n, f"{mode}: {len(keys)} activities scheduled, expected {n}")
        wanted = PRIORITY_KEYS["high"] if mode == "on" else 0
        check(set(keys) == {wanted}, f"{mode}: priority keys {sorted(set(keys))}, not {wanted}")
        event_counts[mode] = budget["event_count"]
        lines.append(
            f"check {mode:>3}: completed, {calls:.0f} tool calls committed,"
            f" {budget['event_count']} governance events (kinds in the last"
            f" {len(budget['recent_events'])}: {', '.join(sorted(kinds))}),"
            f" {timers} timers, priority key {wanted or 'unset'} on all {len(keys)} dispatches"
        )
    check(
        event_counts["on"] == event_counts["off"],
        f"on logged {event_counts['on']} events, off {event_counts['off']}: a detector acted",
    )
    return lines


async def run_controls(env_client: Client) -> list[str]:
    """Prove, with tightened thresholds, that the ``on`` detectors are wired."""
    lines: list[str] = []
    for queue, (change, n, limit) in CONTROLS.items():
        client = Client(
            env_client.service_client,
            namespace=env_client.namespace,
            plugins=[GovernorPlugin(_on_with(change))],
        )
        async with Worker(client, task_queue=queue, workflows=[Sequential], activities=[trivial]):
            workflow_id = f"bench-detectors-{queue}-{uuid.uuid4()}"
            try:
                await client.execute_workflow(Sequential.run, n, id=workflow_id, task_queue=queue)
            except WorkflowFailureError as error:
                details = BreachDetails.from_error(error)
                check(limit is not None, f"{queue}: failed unexpectedly: {error.cause}")
                check(
                    details is not None and details.limit == limit,
                    f"{queue}: halted by {details and details.limit}, expected {limit}",
                )
                assert details is not None
                lines.append(
                    f"{queue}: halted by {details.limit} at {details.dispatch}, as expected"
                )
            else:
                check(limit is None, f"{queue}: completed, expected a halt by {limit}")
                _, timers, completed = await history_facts(client, workflow_id)
                budget = await client.get_workflow_handle(workflow_id).query("governor.budget")
                throttled = sum(1 for e in budget["recent_events"] if e["kind"] == "throttle")
                check(completed and timers > 0 and throttled > 0, f"{queue}: never held back")
                lines.append(
                    f"{queue}: completed, {throttled} dispatches held back ({timers} timers),"
                    " as expected"
                )
    return lines


def micro(iterations: int) -> dict[str, float]:
    """Microseconds per dispatch of the pure detector work the ``on`` policy adds.

    ``all`` is what ``RunGuard`` calls for one dispatch of the ``on`` policy in the loop
    detector and the buckets; the other entries split it up. The cost of the Python loop
    itself (``empty``) is subtracted by the caller.
    """
    rules = LoopRules(
        signature_window=32,
        max_repeats=1000,
        max_cycle_repeats=1000,
        max_consecutive_failures=1000,
        max_iterations=1_000_000,
    )
    signatures = [call_signature("trivial", [index]) for index in range(iterations)]

    def full() -> None:
        detector = LoopDetector(rules)
        agent, tool = TokenBucket(1e6, 1e6), TokenBucket(1e6, 1e6)
        for index in range(iterations):
            now = index * 0.05  # workflow time moves ~50 ms a dispatch, as on the dev server
            verdict = detector.on_dispatch("trivial", call_signature("trivial", [index]))
            agent.take(now)
            tool.take(now)
            verdict = verdict or detector.on_result("trivial", True)
            if verdict is not None:
                raise CheckFailed(f"micro: the detector fired: {verdict.message}")

    def signature_only() -> None:
        for index in range(iterations):
            call_signature("trivial", [index])

    def detector_only() -> None:
        detector = LoopDetector(rules)
        for index in range(iterations):
            detector.on_dispatch("trivial", signatures[index])
            detector.on_result("trivial", True)

    def buckets_only() -> None:
        agent, tool = TokenBucket(1e6, 1e6), TokenBucket(1e6, 1e6)
        for index in range(iterations):
            now = index * 0.05
            agent.take(now)
            tool.take(now)

    def empty() -> None:
        for index in range(iterations):
            signatures[index]

    bodies = {
        "all": full,
        "call_signature": signature_only,
        "loop detector": detector_only,
        "2 buckets": buckets_only,
        "empty": empty,
    }
    results: dict[str, float] = {}
    for name, body in bodies.items():
        samples = []
        for _ in range(3):
            started = time.perf_counter()
            body()
            samples.append((time.perf_counter() - started) / iterations * 1e6)
        results[name] = min(samples)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--micro-iterations", type=int, default=100_000)
    args = parser.parse_args()
    n = args.dispatches
    policies = {"off": Policy.from_yaml(POLICY_OFF), "on": Policy.from_yaml(POLICY_ON)}
    check(policies["off"].agent_for("Sequential") is None, "off policy governs Sequential")
    check(policies["on"].agent_for("Sequential") is not None, "on policy misses Sequential")
    check(policies["on"].tool_for("trivial") is not None, "on policy misses trivial")

    binary = Path(sys.executable).parent / "temporal"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary), dev_server_log_level="error"
    )
    try:
        plain = env.client
        for line in await run_controls(plain):
            print(line, flush=True)
        clients = {
            mode: Client(
                plain.service_client,
                namespace=plain.namespace,
                plugins=[GovernorPlugin(policy)],
            )
            for mode, policy in policies.items()
        }
        modes = ["off", "on"]
        queues = {mode: f"detectors-{mode}" for mode in modes}
        last: dict[str, str] = {}
        async with contextlib.AsyncExitStack() as stack:
            for mode in modes:
                await stack.enter_async_context(
                    Worker(
                        clients[mode],
                        task_queue=queues[mode],
                        workflows=[Sequential],
                        activities=[trivial],
                    )
                )
            for mode in modes:  # warm up both workers
                await timed(clients[mode], queues[mode], 20)
            wall: dict[str, list[float]] = {m: [] for m in modes}
            cpu: dict[str, list[float]] = {m: [] for m in modes}
            print(
                f"{n} sequential trivial activities per run (argument: the index);"
                " wall time and worker CPU time"
            )
            print(
                f"{'round':>5} {'off s':>8} {'on s':>8} {'ratio':>6}"
                f" {'cpu ms/dispatch off':>20} {'on':>6} {'cpu ratio':>9}"
            )
            for round_no in range(1, args.rounds + 1):
                order = modes if round_no % 2 else modes[::-1]  # take turns going first
                for mode in order:
                    seconds, cpu_s, workflow_id = await timed(clients[mode], queues[mode], n)
                    wall[mode].append(seconds)
                    cpu[mode].append(cpu_s)
                    last[mode] = workflow_id
                off, on = wall["off"][-1], wall["on"][-1]
                off_cpu, on_cpu = cpu["off"][-1], cpu["on"][-1]
                print(
                    f"{round_no:>5} {off:>8.3f} {on:>8.3f} {on / off:>6.3f}"
                    f" {off_cpu / n * 1000:>20.3f} {on_cpu / n * 1000:>6.3f}"
                    f" {on_cpu / off_cpu:>9.3f}",
                    flush=True,
                )
            ratios = [o / f for o, f in zip(wall["on"], wall["off"], strict=True)]
            cpu_ratios = [o / f for o, f in zip(cpu["on"], cpu["off"], strict=True)]
            extra_us = [(o - f) / n * 1e6 for o, f in zip(cpu["on"], cpu["off"], strict=True)]
            print(f"median wall-time ratio on/off: {statistics.median(ratios):.3f}")
            print(f"median worker-CPU ratio on/off: {statistics.median(cpu_ratios):.3f}")
            print(
                f"median extra worker CPU per dispatch: {statistics.median(extra_us):.1f} us"
                f" (rounds: {', '.join(f'{x:.0f}' for x in extra_us)})"
            )
            for line in await verify_timed_runs(plain, last, n):
                print(line)
        us = micro(args.micro_iterations)
        empty = us.pop("empty")
        print(
            f"pure detector work, {args.micro_iterations:,} dispatches, best of 3, no server"
            " (call_signature + LoopDetector.on_dispatch + on_result + 2 TokenBucket.take):"
        )
        for name, value in us.items():
            print(f"  {name:<15} {value - empty:>7.2f} us per dispatch")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except CheckFailed as failure:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
    # The SDK's native threads may still call into Python while the interpreter finalizes
    # (see bench/overhead.py); everything is printed and shut down by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
