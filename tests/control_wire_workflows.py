"""Workflows of the control-wire tests (payloads the governor decodes itself, the size cap)."""

from __future__ import annotations

from temporalio import workflow

from control_workflows import Fanner, Loop

LONG_SUFFIX = "." + "x" * 900
"""The child's id is its parent's and this: a relayed message grows by about 900 bytes."""


@workflow.defn
class LongChildParent:
    """Runs one Fanner child whose workflow id is 900 characters longer than its own."""

    @workflow.run
    async def run(self, loop: Loop) -> int:
        return await workflow.execute_child_workflow(
            Fanner.run, loop, id=f"{workflow.info().workflow_id}{LONG_SUFFIX}"
        )
