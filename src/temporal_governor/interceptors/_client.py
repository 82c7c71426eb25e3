"""Client side: attribution and the fleet-wide kills in force go into the start header.

With a control key at hand, the client signs the attribution for the workflow it starts
(:func:`~temporal_governor.context.sign_attribution`), so workers can tell its tenant
claims from those of clients that do not hold the key.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from temporalio.client import OutboundInterceptor, QueryWorkflowInput, StartWorkflowInput
from temporalio.service import RPCError, RPCStatusCode

from ..context import (
    DEFAULT_TENANT,
    HEADER,
    BudgetContext,
    decode_context,
    inherited_context,
    pending_attribution,
    sign_attribution,
    with_context,
)
from ..control._messages import Keyring, KeyringError
from ..core.shards import ShardMap
from ..ledger._workflow import LEDGER_WORKFLOW
from ..policy import Policy

_LOOKUP_TIMEOUT = timedelta(seconds=2)
_LookupKey = tuple[asyncio.AbstractEventLoop, str, tuple[str, ...]]
"""The event loop, ledger id and scopes of one kill lookup."""
_logger = logging.getLogger(__name__)


class GovernedClientOutbound(OutboundInterceptor):
    """Adds the governor header to every workflow start.

    The header carries the attribution of the enclosing :func:`attribution` block and,
    when the policy asks (``control.check_kills_at_start``), the kills and resumes the
    ledger keeps for the run's tenant and workflow type: the run checks and applies them
    before its code starts, so a tenant or agent kill also stops runs started after it.
    Carrying them in the header (not looking them up from workflow code) keeps the run's
    history independent of the worker's setup, and costs one query per start (starts
    made before a lookup's query goes out share it).

    When a control key is available (``keyring``, else the keys the policy's ``control``
    section names), the attribution is signed for the started workflow's id: a worker
    that requires signed attribution charges runs of clients without the key to the
    default tenant.

    Args:
        next: The next interceptor.
        policy: The policy.
        keyring: The keys to sign attributions with (default: read as the policy says;
            none when they cannot be read).

    """

    def __init__(
        self, next: OutboundInterceptor, policy: Policy, keyring: Keyring | None = None
    ) -> None:
        super().__init__(next)
        self._policy = policy
        if keyring is None:
            try:
                keyring = Keyring.from_policy(policy)
            except KeyringError as error:
                _logger.warning("governor: attributions are not signed (%s)", error)
                keyring = Keyring({})
        self._keyring = keyring
        self._lookups: dict[_LookupKey, asyncio.Future[dict[str, Any]]] = {}
        """Kill lookups whose query has not gone out yet, shared by the starts asking the
        same meanwhile."""

    async def start_workflow(self, input: StartWorkflowInput) -> Any:
        if input.workflow == LEDGER_WORKFLOW:
            return await self.next.start_workflow(input)
        context = decode_context(input.headers) if HEADER in input.headers else None
        if context is None:
            attribution = pending_attribution()
            if attribution is not None:  # an explicit attribution block wins
                inherited = inherited_context()
                caller = inherited.started_by if inherited is not None else []
                context = BudgetContext(attribution=attribution, started_by=caller)
            else:  # started from a governed activity: the same payer, the caller recorded
                context = inherited_context()
        controls = (
            await self._controls((context or BudgetContext()).attribution.tenant, input.workflow)
            if self._policy.control.check_kills_at_start
            else {}
        )
        if controls:
            context = (context or BudgetContext()).model_copy(update={"controls": controls})
        if context is not None:
            who = context.attribution
            if who.tenant != DEFAULT_TENANT or who.owner is not None:
                signed = sign_attribution(who, input.id, self._keyring)
                context = context.model_copy(update={"attribution": signed})
            input.headers = with_context(input.headers, context)
        return await self.next.start_workflow(input)

    async def _controls(self, tenant: str, workflow_type: str) -> dict[str, Any]:
        """The stored kills and resumes of the tenant and the workflow type.

        A sharded fleet keeps the tenant's on its shard and the workflow type's on the
        root ledger: one query to each.
        """
        shared = self._policy.shared
        found: dict[str, Any] = {}
        by_ledger = ShardMap(shared.ledger_id, shared.shards).split_scopes(
            [f"tenant:{tenant}", f"agent:{workflow_type}"]
        )
        for some in await asyncio.gather(
            *(self._controls_of(ledger_id, scopes) for ledger_id, scopes in by_ledger.items())
        ):
            found.update(some)
        return found

    async def _controls_of(self, ledger_id: str, scopes: list[str]) -> dict[str, Any]:
        """One ledger's stored kills and resumes of ``scopes``.

        Starts that ask the same ledger for the same scopes before the lookup's query has
        gone out share that query instead of sending their own (a burst of starts made in
        one step of the event loop is one query per ledger, not one per start). A start
        never joins a query that went out before it began: the answer each start gets was
        read after it began, as with a query of its own.
        """
        loop = asyncio.get_running_loop()
        key = (loop, ledger_id, tuple(scopes))
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = loop.create_task(self._lookup(key, ledger_id, scopes))
            self._lookups[key] = lookup
        try:
            # one start given up (cancelled) does not cancel the lookup others wait for
            return dict(await asyncio.shield(lookup))
        except asyncio.CancelledError:
            this = asyncio.current_task()
            if this is None or this.cancelling():
                raise  # this start was cancelled
            _logger.warning("governor: fleet kill lookup was cancelled; starting without it")
            return {}

    async def _lookup(self, key: _LookupKey, ledger_id: str, scopes: list[str]) -> dict[str, Any]:
        """One query for one ledger's stored kills and resumes of ``scopes``."""
        if self._lookups.get(key) is asyncio.current_task():
            del self._lookups[key]  # the query goes out now: later starts send their own
        try:
            result: dict[str, Any] = await self.next.query_workflow(
                QueryWorkflowInput(
                    id=ledger_id,
                    run_id=None,
                    query="controls",
                    args=[scopes],
                    reject_condition=None,
                    headers={},
                    ret_type=None,
                    rpc_metadata={},
                    rpc_timeout=_LOOKUP_TIMEOUT,
                )
            )
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:  # no ledger: nothing was ever killed
                _logger.warning(
                    "governor: could not read fleet kills from ledger %s (%s); starting "
                    "without them",
                    ledger_id,
                    error,
                )
            return {}
        except Exception as error:  # a query the ledger could not answer
            _logger.warning("governor: fleet kill lookup failed (%s)", error)
            return {}
        return result
