"""Record ``KeyOrder`` runs with whatever temporal_governor is importable, and their keys.

``tests/histories/key-order/`` was recorded with the code before activity keys were taken
when agent code asks (commit b661bda, first on ``PYTHONPATH``)::

    git archive b661bda src | tar -x -C /tmp/b661bda
    PYTHONPATH=/tmp/b661bda/src:tests python tests/record_key_order.py localhost:7233 \\
        default key-order tests/histories/key-order

It runs a governed worker on the task queue, runs ``KeyOrder`` to its end (workflow id
``<task queue>-run``), and writes the run's history to ``OUT/<workflow id>.run0.json`` and
the keyed decisions its sink took live (``[kind, key]`` in order) to ``OUT/keys.json``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client
from temporalio.worker import Worker

import temporal_governor
from key_order_workflows import ACTIVITIES, POLICY, WORKFLOWS, KeyOrder
from temporal_governor import GovernorPlugin, Policy


class KeySink:
    """Keeps the kind and key of every keyed decision taken live."""

    def __init__(self) -> None:
        self.keys: list[list[str]] = []

    def record(self, decision: Any, *, replaying: bool) -> None:
        if not replaying and decision.key:
            self.keys.append([decision.kind, decision.key])

    def remaining(self, decision: Any, remaining: dict[str, float], *, replaying: bool) -> None:
        pass


async def record(target: str, namespace: str, task_queue: str, out: Path) -> None:
    data = yaml.safe_load(POLICY)
    data["shared"]["ledger_id"] = f"{task_queue}-ledger"
    sink = KeySink()
    plugin = GovernorPlugin(Policy.from_dict(data), sinks=[sink], telemetry=False)
    client = await Client.connect(target, namespace=namespace, plugins=[plugin])
    workflow_id = f"{task_queue}-run"
    async with Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        result = await client.execute_workflow(KeyOrder.run, id=workflow_id, task_queue=task_queue)
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{workflow_id}.run0.json").write_text(history.to_json())
    (out / "keys.json").write_text(
        json.dumps(
            {"code": temporal_governor.__file__, "result": result, "keys": sink.keys}, indent=1
        )
        + "\n"
    )


if __name__ == "__main__":
    target, namespace, task_queue, out = sys.argv[1:5]
    asyncio.run(record(target, namespace, task_queue, Path(out)))
