"""Workflows whose activity keys depend on when a dispatch takes its key.

Importable by this release and by the one before ``temporal-governor/key-on-ask-v1``
(commit b661bda), which recorded ``tests/histories/key-order/`` with
``tests/record_key_order.py``. Each step mixes a dispatch that waits (a throttle, the
shared ledger) or is refused (a disabled tool) with one that starts at once, in one
workflow task: taken when asked, and taken when reserved, their keys differ.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

_TIMEOUT = timedelta(seconds=30)


@activity.defn
async def tick() -> str:
    """Throttled (burst 1): the second of two started together waits."""
    return "tick"


@activity.defn
async def tock() -> str:
    """Unlimited: starts at once."""
    return "tock"


@activity.defn
async def probe() -> str:
    """Under a shared limit: waits for the ledger's answer."""
    return "probe"


@activity.defn
async def forbidden() -> str:
    """Disabled by the degrade rule once the run has spent a little."""
    return "forbidden"


ACTIVITIES = [tick, tock, probe, forbidden]


@workflow.defn
class KeyOrder:
    """Three steps, each one workflow task of waiting and immediate dispatches."""

    @workflow.run
    async def run(self) -> list[str]:
        done: list[str] = []
        # a throttled dispatch waits while an unthrottled one starts
        done += await asyncio.gather(
            workflow.execute_activity(tick, start_to_close_timeout=_TIMEOUT),
            workflow.execute_activity(tick, start_to_close_timeout=_TIMEOUT),
            workflow.execute_activity(tock, start_to_close_timeout=_TIMEOUT),
        )
        # a dispatch under a shared limit waits for the ledger while another starts
        done += await asyncio.gather(
            workflow.execute_activity(probe, start_to_close_timeout=_TIMEOUT),
            workflow.execute_activity(tock, start_to_close_timeout=_TIMEOUT),
        )
        # a disabled tool is refused before the next dispatch
        try:
            done.append(await workflow.execute_activity(forbidden, start_to_close_timeout=_TIMEOUT))
        except ApplicationError as refused:
            done.append(refused.type or "")
        done.append(await workflow.execute_activity(tock, start_to_close_timeout=_TIMEOUT))
        return done


WORKFLOWS = [KeyOrder]

POLICY = """
agents:
  KeyOrder:
    quotas: { max_tool_calls_per_task: 50 }
    degrade:
      - when_remaining_below: 0.95
        disable_tools: [forbidden]
tools:
  tick: { throttle: { rate_per_sec: 20, burst: 1 } }
  probe: { max_concurrent_requests: 5 }
shared:
  ledger_id: key-order-ledger
"""
"""The policy the kept histories were recorded under (a test may change ``ledger_id``)."""
