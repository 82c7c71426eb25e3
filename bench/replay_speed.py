"""Replay speed of incident review on a ~10,000-event governed history.

Builds one governed workflow history of about 10,000 events on the dev server (batches of
parallel activities that report tokens) and the ungoverned history of the same workflow,
then, in the same run, several rounds (the variants take turns going first), replays:

- the ungoverned history with the SDK's plain ``Replayer`` (the floor: what any replay of
  such a workflow costs);
- the governed history itself with the plain ``Replayer`` (no governor), if it replays
  without one (the script says so when it does not, and compares with the ungoverned
  history only);
- the governed history with a ``Replayer`` built with ``GovernorPlugin`` (telemetry off):
  the governor rebuilding its decisions, no report;
- the governed history with ``temporal_governor.review.review`` (governor in review mode,
  every decision rebuilt, report built), in the sandbox (the library default) and without
  it (the CLI default);

and prints the median time and events per second of each and the review / plain
``Replayer`` ratio (issue #12's goal: <= 1.15).

``--profile N`` then profiles N more ``review()`` runs and N plain replays of the
ungoverned history (activations inline on one thread, see ``bench/fanout.py``) and prints
where review time goes, per governed dispatch.

    .venv/bin/python bench/replay_speed.py [--events 10000] [--rounds 5] [--profile 0]
        [--profile-out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

with workflow.unsafe.imports_passed_through():
    from temporal_governor import GovernorPlugin, Policy

    try:
        from temporal_governor.activity import report_usage
    except ImportError:  # before issue #12's public-face split (8570e14 and older)
        from temporal_governor import report_usage  # type: ignore[no-redef]
    from temporal_governor.review import review

# the profiling helpers of the fan-out benchmark (this script's folder is on sys.path)
from fanout import inline_activations, print_hot_spots

POLICY = Policy.from_yaml(
    """
agents:
  Batches: { quotas: { max_tokens_per_task: 1_000_000_000, max_tool_calls_per_task: 1_000_000 } }
tools: { work: { estimate: { tokens: 100 } } }
"""
)
BATCH = 50


@activity.defn
async def work(i: int) -> int:
    report_usage(input_tokens=10 + i % 7, output_tokens=20 + i % 11, model="m")
    return i


@workflow.defn
class Batches:
    @workflow.run
    async def run(self, batches: int) -> int:
        done = 0
        for b in range(batches):
            await asyncio.gather(
                *(
                    workflow.execute_activity(
                        work, b * BATCH + i, start_to_close_timeout=timedelta(seconds=30)
                    )
                    for i in range(BATCH)
                )
            )
            done += BATCH
        return done


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--profile", type=int, default=0, help="profiled review() runs after timing"
    )
    parser.add_argument("--profile-out", type=Path, help="save the review() profile (pstats)")
    parser.add_argument("--top", type=int, default=25, help="rows per hot-spot table")
    args = parser.parse_args()
    print("command:", shlex.join([".venv/bin/python", *sys.argv]))
    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    batches = max(1, args.events // (3 * BATCH + 6))
    binary = Path(sys.executable).parent / "temporal"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary), dev_server_log_level="error"
    )
    try:
        client = Client(
            env.client.service_client,
            namespace=env.client.namespace,
            plugins=[GovernorPlugin(POLICY)],
        )
        async with (
            Worker(client, task_queue="bench", workflows=[Batches], activities=[work]),
            Worker(env.client, task_queue="plain", workflows=[Batches], activities=[work]),
        ):
            handle = await client.start_workflow(
                Batches.run, batches, id="replay-bench", task_queue="bench"
            )
            plain_handle = await env.client.start_workflow(
                Batches.run, batches, id="replay-plain", task_queue="plain"
            )
            await handle.result()
            await plain_handle.result()
        history = await handle.fetch_history()
        plain_history = await plain_handle.fetch_history()
    finally:
        await env.shutdown()
    events, plain_events = len(history.events), len(plain_history.events)
    dispatches = batches * BATCH
    print(f"governed history: {events} events, {dispatches} governed activities")
    print(f"ungoverned history of the same workflow: {plain_events} events")
    plain = Replayer(workflows=[Batches])
    governed = Replayer(workflows=[Batches], plugins=[GovernorPlugin(POLICY, telemetry=False)])
    same = await plain.replay_workflow(history, raise_on_replay_failure=False)
    if same.replay_failure is not None:
        reason = str(same.replay_failure).splitlines()[0][:160]
        print(f"the governed history does not replay without the governor: {reason}")
    decisions: list[int] = []

    async def review_sandboxed() -> None:
        report = await review(
            "replay-bench", policy=POLICY, workflows=[Batches], histories=[history]
        )
        if report.nondeterminism:
            raise SystemExit(f"review found nondeterminism: {report.nondeterminism}")
        decisions.append(len(report.decisions))

    async def review_unsandboxed() -> None:
        await review(
            "replay-bench",
            policy=POLICY,
            workflows=[Batches],
            histories=[history],
            sandboxed=False,
        )

    variants: dict[str, tuple[int, Callable[[], Awaitable[object]]]] = {
        "plain Replayer, ungoverned history": (
            plain_events,
            lambda: plain.replay_workflow(plain_history),
        ),
    }
    if same.replay_failure is None:
        variants["plain Replayer, governed history"] = (
            events,
            lambda: plain.replay_workflow(history),
        )
    variants["Replayer + GovernorPlugin, no report"] = (
        events,
        lambda: governed.replay_workflow(history),
    )
    variants["review() with governor + report"] = (events, review_sandboxed)
    variants["review(sandboxed=False)"] = (events, review_unsandboxed)
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for number in range(args.rounds):
        shift = number % len(names)  # each variant takes its turn going first
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            await variants[name][1]()
            times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'':<38} {'median s':>9} {'events/s':>10}   rounds (s)")
    for name, (count, _) in variants.items():
        rounds = " ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:<38} {median[name]:>9.3f} {count / median[name]:>10,.0f}   {rounds}")
    review_s = median["review() with governor + report"]
    floor = median["plain Replayer, ungoverned history"]
    print(f"decisions rebuilt: {decisions[-1]}")
    print(
        "review / plain Replayer (ungoverned history of the same workflow):"
        f" {review_s / floor:.2f} (target <= 1.15)"
    )
    if "plain Replayer, governed history" in median:
        same_s = median["plain Replayer, governed history"]
        print(f"review / plain Replayer (the same governed history): {review_s / same_s:.2f}")
    print(
        "Replayer + GovernorPlugin (no report) / plain Replayer (ungoverned history):"
        f" {median['Replayer + GovernorPlugin, no report'] / floor:.2f}"
    )
    print(
        "review time above the floor per governed dispatch:"
        f" {(review_s - floor) / dispatches * 1000:.3f} ms"
    )
    if args.profile:
        await profile(args, plain_history, review_sandboxed, dispatches)
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


async def profile(
    args: argparse.Namespace,
    plain_history: WorkflowHistory,
    review_once: Callable[[], Awaitable[None]],
    dispatches: int,
) -> None:
    """Profile plain replays of the ungoverned history and review() runs; print hot spots.

    Both replay with activations inline on this thread (see ``fanout.inline_activations``),
    so one cProfile sees every frame.
    """
    with inline_activations():
        replayer = Replayer(workflows=[Batches])
        with cProfile.Profile() as profiler:
            for _ in range(args.profile):
                await replayer.replay_workflow(plain_history)
        plain_stats = pstats.Stats(profiler)
        with cProfile.Profile() as profiler:
            for _ in range(args.profile):
                await review_once()
        review_stats = pstats.Stats(profiler)
    if args.profile_out:
        review_stats.dump_stats(args.profile_out)
        print(f"review() profile saved to {args.profile_out}")
    print(f"profile of {args.profile} review() run(s) vs plain replays of the ungoverned history:")
    print_hot_spots(review_stats, plain_stats, dispatches * args.profile, args.top)


if __name__ == "__main__":
    asyncio.run(main())
