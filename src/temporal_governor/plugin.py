"""The one-line install: ``Client.connect(..., plugins=[GovernorPlugin(policy)])``."""

from __future__ import annotations

import dataclasses

from temporalio.plugin import SimplePlugin
from temporalio.worker import WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from .interceptors import GovernanceInterceptor
from .policy import Policy

PLUGIN_NAME = "temporal-governor"


def _share_governor_with_sandbox(runner: WorkflowRunner | None) -> WorkflowRunner:
    """Let sandboxed workflow code import the governor's own module, not a re-import.

    ``estimate()`` and ``current_attribution()`` work through module state that the
    interceptors (outside the sandbox) also see; a re-imported copy would not share it.
    """
    if runner is None:
        runner = SandboxedWorkflowRunner()
    if isinstance(runner, SandboxedWorkflowRunner):
        restrictions = runner.restrictions.with_passthrough_modules("temporal_governor")
        return dataclasses.replace(runner, restrictions=restrictions)
    return runner


class GovernorPlugin(SimplePlugin):
    """Installs the governor on a client and on every worker and replayer built from it.

    Args:
        policy: The policy to enforce.

    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.interceptor = GovernanceInterceptor(policy)
        super().__init__(
            PLUGIN_NAME,
            interceptors=[self.interceptor],
            workflow_runner=_share_governor_with_sandbox,
        )
