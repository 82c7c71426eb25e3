"""The governor's interceptors: one class for the client and worker sides."""

from __future__ import annotations

from collections.abc import Sequence

import temporalio.client
import temporalio.worker

from ..control._messages import Keyring
from ..core.decisions import DecisionSink
from ..names import BUDGET_QUERY
from ..policy import Policy
from ._activity import GovernedActivityInbound, _LocalCarry
from ._client import GovernedClientOutbound
from ._control import ActiveBackpressure, ControlStatus, current_backpressure
from ._guard import PRIORITY_KEYS
from ._run import BudgetSnapshot
from ._versions import GOVERNED_PATCH, UnmarkedRuns
from ._workflow import GovernedWorkflowInbound


class GovernanceInterceptor(temporalio.client.Interceptor, temporalio.worker.Interceptor):
    """Governs every activity, local activity and child workflow dispatch of a worker.

    Register it on the client (workers built from that client inherit it) or on a worker
    and a client by hand; :class:`~temporal_governor.GovernorPlugin` does both and also
    lets the workflow sandbox share the governor's module, which this interceptor needs.

    Args:
        policy: The policy to enforce.
        sinks: Receivers of every governance decision (see
            :class:`~temporal_governor.telemetry.DecisionSink`), e.g. OpenTelemetry.
        keyring: The keys control messages are verified with (default: read from the
            environment and file the policy's ``control`` section names).
        govern_new_runs: Govern runs that start from now on (default). ``False`` is the
            off switch: new runs (and continue-as-new runs) are executed plain, while runs
            that began governed go on governed, wherever they are replayed, and children a
            governed run starts are governed with it. See docs/upgrading.md.
        unmarked_runs: What a run replayed without the governor's marker is: ``"plain"``
            (default: it began without the governor, and stays plain) or ``"governed"``
            (it began under the previous release, 0.1.0, which wrote no marker; set this
            while such runs are open or replayed).

    Raises:
        KeyringError: The control keys named by the policy cannot be read.

    """

    def __init__(
        self,
        policy: Policy,
        sinks: Sequence[DecisionSink] = (),
        keyring: Keyring | None = None,
        *,
        govern_new_runs: bool = True,
        unmarked_runs: UnmarkedRuns = "plain",
    ) -> None:
        if unmarked_runs not in ("plain", "governed"):
            raise ValueError(f"unmarked_runs must be 'plain' or 'governed', not {unmarked_runs!r}")
        self.policy = policy
        self.sinks = tuple(sinks)
        self.keyring = keyring if keyring is not None else Keyring.from_policy(policy)
        self.govern_new_runs = govern_new_runs
        self.unmarked_runs: UnmarkedRuns = unmarked_runs
        self._workflow_class = GovernedWorkflowInbound.bind(
            policy,
            self.sinks,
            self.keyring,
            govern_new_runs=govern_new_runs,
            unmarked_runs=unmarked_runs,
        )
        self._carry = _LocalCarry()

    def intercept_client(
        self, next: temporalio.client.OutboundInterceptor
    ) -> temporalio.client.OutboundInterceptor:
        """Attach attribution (and fleet-wide kills in force) to workflow starts."""
        return GovernedClientOutbound(next, self.policy, self.keyring)

    def intercept_activity(
        self, next: temporalio.worker.ActivityInboundInterceptor
    ) -> temporalio.worker.ActivityInboundInterceptor:
        """Meter activities and send their usage back with the result."""
        return GovernedActivityInbound(next, self.policy, self._carry)

    def workflow_interceptor_class(
        self, input: temporalio.worker.WorkflowInterceptorClassInput
    ) -> type[temporalio.worker.WorkflowInboundInterceptor]:
        """Reserve, commit and release around every dispatch of a workflow."""
        return self._workflow_class


__all__ = [
    "BUDGET_QUERY",
    "GOVERNED_PATCH",
    "PRIORITY_KEYS",
    "ActiveBackpressure",
    "BudgetSnapshot",
    "ControlStatus",
    "GovernanceInterceptor",
    "UnmarkedRuns",
    "current_backpressure",
]
