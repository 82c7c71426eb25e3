"""Workflows for the attribution tests: an agent that holds a Temporal client."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from temporal_governor import attribution
    from temporal_governor.workflow import current_context


@workflow.defn
class WhoPays:
    """Returns the tenant, owner and caller chain the governor gave this run."""

    @workflow.run
    async def run(self) -> dict[str, Any]:
        context = current_context()
        assert context is not None
        return {
            "tenant": context.attribution.tenant,
            "owner": context.attribution.owner,
            "started_by": [link.workflow_id for link in context.started_by],
        }


@activity.defn
async def start_on_the_side(workflow_id: str, explicit_tenant: str) -> dict[str, Any]:
    """An agent tool that starts another workflow with the worker's own client."""
    client = activity.client()
    queue = activity.info().task_queue
    if not explicit_tenant:
        return await client.execute_workflow(WhoPays.run, id=workflow_id, task_queue=queue)
    with attribution(tenant=explicit_tenant):
        return await client.execute_workflow(WhoPays.run, id=workflow_id, task_queue=queue)


@workflow.defn
class SideStarter:
    """Starts a workflow through an activity (not as a child): it must still pay as we do."""

    @workflow.run
    async def run(self, explicit_tenant: str) -> dict[str, Any]:
        return await workflow.execute_activity(
            start_on_the_side,
            args=[f"{workflow.info().workflow_id}.side", explicit_tenant],
            start_to_close_timeout=timedelta(seconds=30),
        )


ATTRIBUTION_WORKFLOWS = [WhoPays, SideStarter]
ATTRIBUTION_ACTIVITIES = [start_on_the_side]
