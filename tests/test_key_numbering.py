"""Activity keys: taken when agent code asks (new runs), when reserved (runs recorded before).

A run's activity keys (``activity:<n>:<type>``) are also its ledger keys and update ids
(``reserve:<owner>/<key>#<n>``). Runs recorded before the patch
``temporal-governor/key-on-ask-v1`` took a dispatch's key when it was reserved, after its
throttle or ledger wait; such a run, replayed or continued by this release, must keep that
numbering, or it settles its reservations under keys the ledger never saw.
``tests/histories/key-order/`` holds such a run, recorded by commit b661bda with
``tests/record_key_order.py``, and the keys its sink took live.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer, Worker

from conftest import RECORDED, Recorded, source_at
from key_order_workflows import ACTIVITIES, POLICY, WORKFLOWS, KeyOrder
from temporal_governor import GovernorPlugin, Policy
from temporal_governor.interceptors import _versions
from temporal_governor.telemetry import DecisionRecord

KEPT = Path(__file__).parent / "histories" / "key-order"
"""A run recorded before the patch, and the keys it took live (``keys.json``)."""

KEY_PATCH = "temporal-governor/key-on-ask-v1"
"""The patch of the new numbering (spelled out: patch ids never change)."""

BEFORE_THE_PATCH = "b661bda"
"""The last commit that took activity keys when a dispatch was reserved."""


class KeySink:
    """Keeps the kind and key of every decision about a dispatch, live and replayed."""

    def __init__(self) -> None:
        self.keys: list[list[str]] = []
        self.records: list[DecisionRecord] = []

    def record(self, decision: DecisionRecord, *, replaying: bool) -> None:
        self.records.append(decision)
        if decision.key:
            self.keys.append([decision.kind, decision.key])

    def remaining(
        self, decision: DecisionRecord, remaining: dict[str, float], *, replaying: bool
    ) -> None:
        pass


def _policy(ledger: str = "key-order-ledger") -> Policy:
    data = yaml.safe_load(POLICY)
    data["shared"]["ledger_id"] = ledger
    return Policy.from_dict(data)


def _dispatch_keys(keys: list[list[str]]) -> list[list[str]]:
    """The decisions keyed by a dispatch's key (reserve, commit, ...), in order."""
    return [pair for pair in keys if pair[1].startswith("activity:")]


def _patches(history: WorkflowHistory) -> list[str]:
    ids = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            attributes = event.marker_recorded_event_attributes
            if attributes.marker_name == "core_patch" and "patch-data" in attributes.details:
                ids.append(json.loads(attributes.details["patch-data"].payloads[0].data)["id"])
    return ids


async def _replayed_keys(history: WorkflowHistory) -> list[list[str]]:
    """The dispatch keys of ``history`` replayed by this release (fails on non-determinism)."""
    sink = KeySink()
    replayer = Replayer(
        workflows=WORKFLOWS, plugins=[GovernorPlugin(_policy(), sinks=[sink], telemetry=False)]
    )
    await replayer.replay_workflow(history)
    return _dispatch_keys(sink.keys)


def _kept() -> tuple[WorkflowHistory, dict[str, Any]]:
    (path,) = KEPT.glob("*.run*.json")
    history = WorkflowHistory.from_json(path.name.rsplit(".run", 1)[0], path.read_text())
    return history, json.loads((KEPT / "keys.json").read_text())


async def test_a_run_recorded_before_the_patch_keeps_its_keys() -> None:
    history, recorded = _kept()
    assert KEY_PATCH not in _patches(history)
    live = _dispatch_keys(recorded["keys"])
    # the recording has what differs: a throttled tick that waited while a tock started,
    # a probe that waited for the ledger while a tock started, a refused tool
    assert recorded["result"][5] == "ToolDisabled"
    assert ["reserve", "activity:2:tock"] in live and ["reserve", "activity:3:tick"] in live
    assert ["reserve", "activity:4:tock"] in live and ["reserve", "activity:5:probe"] in live
    assert await _replayed_keys(history) == live


async def test_a_new_run_takes_its_keys_when_agent_code_asks(env) -> None:
    policy = _policy(f"key-order-{uuid.uuid4().hex[:8]}")
    sink = KeySink()
    plugin = GovernorPlugin(policy, sinks=[sink], telemetry=False)
    client = Client(env.client.service_client, namespace=env.client.namespace, plugins=[plugin])
    task_queue = f"key-order-{uuid.uuid4()}"
    RECORDED.append(Recorded(task_queue, policy, WORKFLOWS))
    async with Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        handle = await client.start_workflow(KeyOrder.run, id=task_queue, task_queue=task_queue)
        result = await handle.result()
    assert result == ["tick", "tick", "tock", "probe", "tock", "ToolDisabled", "tock"]
    live = _dispatch_keys(sink.keys)
    # keys in the order agent code asked: the refused tool took the 6th
    assert [key for kind, key in live if kind == "reserve"] == [
        "activity:1:tick",
        "activity:3:tock",
        "activity:2:tick",
        "activity:5:tock",
        "activity:4:probe",
        "activity:7:tock",
    ]
    # the throttle's record names the dispatch it held back (the reason for the change)
    throttled = [r for r in sink.records if r.kind == "throttle"]
    assert [(r.key, r.dispatch, r.target) for r in throttled] == [
        ("activity:2:tick", "activity", "tick")
    ]
    history = await handle.fetch_history()
    assert _patches(history).count(KEY_PATCH) == 1  # at the first dispatch
    assert await _replayed_keys(history) == live


def test_the_patch_id_is_stable() -> None:
    """Patch ids are part of every history made: renaming one breaks replay."""
    assert _versions.KEY_ON_ASK_PATCH == KEY_PATCH
    assert _versions.KEY_ON_ASK_PATCH in _versions.LATER_CHANGES
    assert _versions.KEY_ON_ASK_PATCH not in _versions.CHANGES


@pytest.fixture(scope="module")
def before_the_patch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``src`` folder of :data:`BEFORE_THE_PATCH`, from git (skips without it)."""
    return source_at(BEFORE_THE_PATCH, tmp_path_factory.mktemp("before-key-on-ask"))


async def test_a_run_recorded_afresh_before_the_patch_keeps_its_keys(
    env, before_the_patch: Path, tmp_path: Path
) -> None:
    """The same, with a run that code records now (not only the kept one)."""
    out = tmp_path / "recorded"
    python_path = os.pathsep.join([str(before_the_patch), str(Path(__file__).parent)])
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).parent / "record_key_order.py"),
        env.client.service_client.config.target_host,
        env.client.namespace,
        f"key-order-{uuid.uuid4()}",
        str(out),
        env={**os.environ, "PYTHONPATH": python_path},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(done.communicate(), timeout=120)
    assert done.returncode == 0, output.decode()[-3000:]
    recorded = json.loads((out / "keys.json").read_text())
    assert recorded["code"].startswith(str(before_the_patch)), "not that commit's code"
    (path,) = out.glob("*.run0.json")
    history = WorkflowHistory.from_json(path.name.rsplit(".run", 1)[0], path.read_text())
    assert await _replayed_keys(history) == _dispatch_keys(recorded["keys"])
