"""Client side: put the attribution of the enclosing block into the start header."""

from __future__ import annotations

from typing import Any

from temporalio.client import OutboundInterceptor, StartWorkflowInput

from ..context import HEADER, BudgetContext, pending_attribution, with_context


class GovernedClientOutbound(OutboundInterceptor):
    """Adds the governor header to every workflow start that does not carry one."""

    async def start_workflow(self, input: StartWorkflowInput) -> Any:
        if HEADER not in input.headers:
            attribution = pending_attribution()
            if attribution is not None:
                input.headers = with_context(input.headers, BudgetContext(attribution=attribution))
        return await self.next.start_workflow(input)
