"""The one-line install: ``Client.connect(..., plugins=[GovernorPlugin(policy)])``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.plugin import SimplePlugin
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker, WorkerConfig, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from .control._messages import Keyring
from .core.decisions import DecisionSink
from .interceptors import GovernanceInterceptor, UnmarkedRuns
from .interceptors._failures import governed_data_converter as _governed_data_converter
from .interceptors._failures import is_governed
from .ledger import GovernorLedger, ledger_call
from .names import STATE_ATTRIBUTE, TENANT_ATTRIBUTE
from .policy import Policy
from .telemetry import OpenTelemetrySink

PLUGIN_NAME = "temporal-governor"

_logger = logging.getLogger(__name__)


def _share_governor_with_sandbox(runner: WorkflowRunner | None) -> WorkflowRunner:
    """Let sandboxed workflow code import the governor's own module, not a re-import.

    ``estimate()`` and ``current_context()`` work through module state that the
    interceptors (outside the sandbox) also see; a re-imported copy would not share it.
    """
    if runner is None:
        runner = SandboxedWorkflowRunner()
    if isinstance(runner, SandboxedWorkflowRunner):
        restrictions = runner.restrictions.with_passthrough_modules("temporal_governor")
        return dataclasses.replace(runner, restrictions=restrictions)
    return runner


def governed_data_converter(converter: DataConverter | None = None) -> DataConverter:
    """``converter`` (default: the SDK's) with the failure converter the governor needs.

    Usage of failed activity attempts, and of a failed child run towards its governed
    parent, travels as a marker payload the failure converter appends and takes off
    again, so that agent code never sees it. The plugin installs it on the client (and
    so on its workers) and on replayers; a client or ``Replayer`` assembled by hand with
    :class:`~temporal_governor.GovernanceInterceptor` needs
    ``data_converter=governed_data_converter(...)``.

    Args:
        converter: The data converter to extend. Its failure converter class is
            subclassed, so its own conversion still applies; its payload converter,
            codec and external storage are kept.

    Returns:
        The data converter to use (``converter`` itself when it is governed already).

    """
    return _governed_data_converter(converter)


async def register_search_attributes(client: Client) -> None:
    """Register ``GovernorTenant`` and ``GovernorState`` on the client's namespace.

    Works where the operator API is open (a dev server, a self-hosted cluster); on
    Temporal Cloud register them in the namespace settings instead. Attributes that
    already exist are left as they are.

    Args:
        client: A connected client.

    """
    keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    # retried: operator calls are not by default, and a connection the server just
    # dropped fails the first one with CANCELLED
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace), retry=True
    )
    missing = {
        name: keyword
        for name in (TENANT_ATTRIBUTE.name, STATE_ATTRIBUTE.name)
        if name not in listed.custom_attributes
    }
    if not missing:
        return  # registered already: nothing to ask the server (its add is slow and heavy)
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing),
            retry=True,
        )
    except RPCError as error:
        if error.status != RPCStatusCode.ALREADY_EXISTS:
            raise


class GovernorPlugin(SimplePlugin):
    """Installs the governor on a client and on every worker and replayer built from it.

    Args:
        policy: The policy to enforce.
        telemetry: Emit OpenTelemetry spans, events and metrics of every decision.
        tracer_provider: Where spans go (default: the global provider).
        meter_provider: Where metrics go (default: the global provider).
        sinks: More receivers of every decision.
        keyring: The keys control messages are verified and relayed with (default: read
            from the environment and file the policy's ``control`` section names).
        govern_new_runs: Govern runs that start from now on (default). ``False`` is the
            off switch: the plugin stays installed, new runs are executed plain, and runs
            that began governed go on governed (their histories need it) until they end.
        unmarked_runs: What a run replayed without the governor's marker is: ``"plain"``
            (default: it began without the governor) or ``"governed"`` (it began under
            the previous release, 0.1.0, which wrote no marker). See docs/upgrading.md.

    """

    def __init__(
        self,
        policy: Policy,
        *,
        telemetry: bool = True,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        sinks: Sequence[DecisionSink] = (),
        keyring: Keyring | None = None,
        govern_new_runs: bool = True,
        unmarked_runs: UnmarkedRuns = "plain",
    ) -> None:
        self.policy = policy
        all_sinks: list[DecisionSink] = list(sinks)
        if telemetry:
            all_sinks.append(OpenTelemetrySink(tracer_provider, meter_provider))
        self.interceptor = GovernanceInterceptor(
            policy,
            sinks=all_sinks,
            keyring=keyring,
            govern_new_runs=govern_new_runs,
            unmarked_runs=unmarked_runs,
        )
        super().__init__(
            PLUGIN_NAME,
            interceptors=[self.interceptor],
            workflows=[GovernorLedger],
            activities=[ledger_call],
            workflow_runner=_share_governor_with_sandbox,
            data_converter=governed_data_converter,
        )

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        """Install the governor on the worker; warn when its client lacks the converter.

        A worker takes its data converter from its client, which a worker plugin cannot
        change: the plugin belongs on the client (``Client.connect(..., plugins=[...])``).
        """
        client = config.get("client")
        if client is not None and not is_governed(client.data_converter):
            _logger.warning(
                "the governor is installed on a worker whose client does not have it: "
                "usage of failed activity attempts and failed child runs will not be "
                "known (charged as unknown); install GovernorPlugin on the client, or "
                "give the client data_converter=governed_data_converter(...)"
            )
        return super().configure_worker(config)

    async def run_worker(self, worker: Worker, next: Callable[[Worker], Awaitable[None]]) -> None:
        """Register the search attributes the policy uses, then run the worker."""
        if self.policy.visibility.search_attributes:
            try:
                await register_search_attributes(worker.client)
            except RPCError as error:
                _logger.warning(
                    "could not register the governor's search attributes (%s); register "
                    "GovernorTenant and GovernorState (Keyword) on namespace %s",
                    error,
                    worker.client.namespace,
                )
        await super().run_worker(worker, next)
