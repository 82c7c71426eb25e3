"""Send signed control messages to governed runs: one run, a tree, a tenant or an agent type.

:class:`ControlClient` is what the ``temporal-governor kill|resume|backpressure|override|
status`` commands use; call it from your own tools the same way::

    control = ControlClient(client, policy, issuer="oncall@acme")
    await control.kill(ControlTarget.tenant("acme"), reason="runaway spend")

A run or tree target is one signal to that workflow (a tree's runs relay it down). A
tenant or agent target is stored in the ledger first, so that runs starting later find it
when they start, and then signalled to every running run the visibility store lists.

Every message goes out as the payload :func:`~temporal_governor.control.encode_message`
writes (``json/plain``, whatever data converter the client has), and one above
:data:`~temporal_governor.control.MAX_CONTROL_BYTES` is refused before anything is sent.
"""

from __future__ import annotations

import contextlib
import getpass
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import RawValue, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from ..core.book import ControlRecordRequest
from ..core.shards import ShardMap
from ..errors import GovernorError, validation_problems
from ..ledger._workflow import LEDGER_WORKFLOW, LedgerState
from ..names import BUDGET_QUERY, TENANT_ATTRIBUTE
from ..policy import Policy
from ._messages import (
    CONTROL_QUERY,
    MAX_CONTROL_BYTES,
    SIGNAL_OF_ACTION,
    AnyControl,
    BackpressureMessage,
    Keyring,
    KillMessage,
    OverrideMessage,
    ResumeMessage,
    Target,
    decode_payload,
    encode_message,
    new_nonce,
    oversized,
)


class _NotRunning(Exception):
    """A ledger a control was to be copied to is not running (nothing reserves there)."""


@dataclass(frozen=True)
class ControlTarget:
    """Whom a control message is for."""

    kind: Target
    value: str
    """The workflow id (``run``, ``tree``), tenant or workflow type (``agent``)."""

    @classmethod
    def run(cls, workflow_id: str) -> ControlTarget:
        """One run (its children are paused with it; see docs/control.md)."""
        return cls("run", workflow_id)

    @classmethod
    def tree(cls, workflow_id: str) -> ControlTarget:
        """A run and all its descendants."""
        return cls("tree", workflow_id)

    @classmethod
    def tenant(cls, tenant: str) -> ControlTarget:
        """Every run of a tenant, running now or started later."""
        return cls("tenant", tenant)

    @classmethod
    def agent(cls, workflow_type: str) -> ControlTarget:
        """Every run of a workflow type, running now or started later."""
        return cls("agent", workflow_type)

    def fields(self) -> dict[str, Any]:
        """The message fields that address this target."""
        key = {"run": "workflow_id", "tree": "workflow_id", "tenant": "tenant", "agent": "agent"}
        return {"target": self.kind, key[self.kind]: self.value}


@dataclass
class ControlOutcome:
    """What sending a control message did."""

    message: AnyControl
    signalled: list[str] = field(default_factory=list)
    """Workflow ids the message was signalled to."""
    failed: dict[str, str] = field(default_factory=dict)
    """Workflow id -> why signalling it failed."""
    stored: bool = False
    """Whether the ledger keeps it for runs that start later (tenant and agent targets)."""
    warnings: list[str] = field(default_factory=list)


class ControlError(GovernorError):
    """A control message could not be sent (the message says why and what to do)."""


class ControlClient:
    """Signs control messages with the policy's key and sends them to governed runs.

    Args:
        client: A connected Temporal client.
        policy: The policy (its ``control`` section names the keys; ``shared.ledger_id``
            the ledger; ``visibility`` whether tenant fan-out can search).
        keyring: The keys (default: read as the policy says).
        issuer: Who is sending (default: the OS user).
        ledger_task_queue: Where to start the ledger if a fleet kill finds none running
            (default: the policy's ``shared.task_queue``).

    """

    def __init__(
        self,
        client: Client,
        policy: Policy,
        *,
        keyring: Keyring | None = None,
        issuer: str | None = None,
        ledger_task_queue: str | None = None,
    ) -> None:
        self.client = client
        self.policy = policy
        self.keyring = keyring if keyring is not None else Keyring.from_policy(policy)
        self.issuer = issuer or _user()
        self.ledger_task_queue = ledger_task_queue or policy.shared.task_queue

    # -- the four messages -------------------------------------------------------------------

    async def kill(
        self,
        target: ControlTarget,
        *,
        mode: Literal["pause", "terminate"] = "pause",
        reason: str = "",
        sign: bool = True,
    ) -> ControlOutcome:
        """Pause (until an authorised resume) or terminate the target's runs."""
        message = KillMessage(mode=mode, **self._common(target, reason))
        return await self.send(target, message, sign=sign)

    async def resume(self, target: ControlTarget, *, reason: str = "") -> ControlOutcome:
        """Let the target's paused runs dispatch again (always signed)."""
        return await self.send(target, self.resume_message(target, reason=reason))

    def resume_message(self, target: ControlTarget, *, reason: str = "") -> ResumeMessage:
        """An unsigned resume for ``target`` (sign it with ``self.keyring.sign``)."""
        return ResumeMessage(**self._common(target, reason))

    async def backpressure(
        self,
        target: ControlTarget,
        *,
        retry_after_ms: int = 0,
        max_concurrency: int | None = None,
        reduce_batch_to: int | None = None,
        duration_ms: int = 60_000,
        source: str = "",
        reason: str = "",
    ) -> ControlOutcome:
        """Slow the target's runs down for ``duration_ms``."""
        message = BackpressureMessage(
            retry_after_ms=retry_after_ms,
            max_concurrency=max_concurrency,
            reduce_batch_to=reduce_batch_to,
            duration_ms=duration_ms,
            source=source,
            **self._common(target, reason),
        )
        return await self.send(target, message)

    async def override(
        self,
        target: ControlTarget,
        *,
        limit: str,
        value: float,
        duration_s: float = 3600.0,
        reason: str = "",
    ) -> ControlOutcome:
        """Set a per-task limit of the target's runs for a while (never above its hard ceiling)."""
        message = OverrideMessage(
            limit=limit, value=value, duration_s=duration_s, **self._common(target, reason)
        )
        return await self.send(target, message)

    async def status(self, workflow_id: str) -> dict[str, Any]:
        """A run's control state (with its audit trail) and budget, from its two queries."""
        handle = self.client.get_workflow_handle(workflow_id)
        control = await handle.query(CONTROL_QUERY)
        budget = await handle.query(BUDGET_QUERY)
        return {"control": control, "budget": budget}

    # -- sending --------------------------------------------------------------------------------

    def _common(self, target: ControlTarget, reason: str) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "reason": reason,
            "issued_at_ms": int(time.time() * 1000),
            "nonce": new_nonce(),
            **target.fields(),
        }

    async def send(
        self, target: ControlTarget, message: AnyControl, *, sign: bool = True
    ) -> ControlOutcome:
        """Send a message built by the caller (the four methods above build theirs).

        Args:
            target: Whom it is for (it should name the same target as the message).
            message: The message.
            sign: Sign it with the keyring's signing key first.

        Raises:
            ControlError: The message is above the size cap, or a run would not decode it
                (an integer of more than 20 digits); nothing was sent or stored.
            KeyringError: ``sign`` and there is no key to sign with.

        """
        if sign:
            message = self.keyring.sign(message)
        raw = encode_message(message)
        if oversized(raw) is not None:
            raise ControlError(
                f"{message.action} not sent: it is {raw.ByteSize()} bytes on the wire, above "
                f"the {MAX_CONTROL_BYTES}-byte cap on control messages (MAX_CONTROL_BYTES); "
                "shorten its reason, issuer or other text"
            )
        problem = decode_payload(raw)[1]
        if problem is not None:  # the runs would reject it before reading it
            raise ControlError(f"{message.action} not sent: {problem}")
        outcome = ControlOutcome(message=message)
        signal = SIGNAL_OF_ACTION[message.action]
        payload = message.model_dump(mode="json")
        if target.kind in ("run", "tree"):
            workflow_ids: Sequence[str] = [target.value]
        else:
            if isinstance(message, KillMessage | ResumeMessage):
                await self._store(target, signal, payload)
                outcome.stored = True
            workflow_ids = await self._running(target, outcome)
        for workflow_id in workflow_ids:
            try:
                await self.client.get_workflow_handle(workflow_id).signal(signal, RawValue(raw))
            except RPCError as error:
                outcome.failed[workflow_id] = error.message
            else:
                outcome.signalled.append(workflow_id)
        return outcome

    async def _store(self, target: ControlTarget, signal: str, payload: dict[str, Any]) -> None:
        """Keep a tenant's or agent type's kill or resume in the ledger."""
        try:
            request = ControlRecordRequest.model_validate(
                {"scope": f"{target.kind}:{target.value}", "signal": signal, "message": payload}
            ).wire()
        except ValidationError as error:
            raise ControlError(
                f"the ledger would refuse to keep this {signal}: "
                f"{validation_problems(error, 'request')}"
            ) from None
        shared = self.policy.shared
        ledgers = ShardMap(shared.ledger_id, shared.shards)
        scope = f"{target.kind}:{target.value}"
        ledger_id = ledgers.ledger_of_scope(scope)
        await self._store_in(ledger_id, request)
        # Sharded: runs that are running see a kill at their next reservation, on whichever
        # ledger they reserve; so it is also kept on the root (a tenant's) and on every
        # shard (an agent type's), where those ledgers run. Starting runs and paused runs
        # read it from the ledger of its scope, which always has it.
        if not ledgers.sharded:
            return
        if target.kind == "tenant":
            others = [ledgers.root]
        else:
            others = [i for i in ledgers.all_ledgers() if i != ledger_id]
        for other in others:
            with contextlib.suppress(_NotRunning):
                await self._store_in(other, request, required=False)

    async def _store_in(self, ledger_id: str, request: Any, *, required: bool = True) -> None:
        """Keep a control in one ledger, starting it (``ledger_task_queue``) if required.

        Raises:
            _NotRunning: The ledger is not running and is not required.
            ControlError: The ledger is not running, is required and cannot be started.
        """
        shared = self.policy.shared
        if self.ledger_task_queue is not None and required:
            start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
                LEDGER_WORKFLOW,
                LedgerState(continue_as_new_after=shared.continue_as_new_after).model_dump(
                    mode="json"
                ),
                id=ledger_id,
                task_queue=self.ledger_task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            await self.client.execute_update_with_start_workflow(
                "control", request, start_workflow_operation=start
            )
            return
        try:
            await self.client.get_workflow_handle(ledger_id).execute_update("control", request)
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND and not required:
                raise _NotRunning(ledger_id) from None
            if error.status == RPCStatusCode.NOT_FOUND:
                raise ControlError(
                    f"the ledger {ledger_id!r} is not running, so runs that start later "
                    "would not see this; pass the task queue of a governed worker "
                    "(--task-queue) to start it"
                ) from None
            raise

    async def _running(self, target: ControlTarget, outcome: ControlOutcome) -> list[str]:
        """Running workflows of a tenant or workflow type, from the visibility store."""
        if target.kind == "agent":
            query = f"WorkflowType = {_quote(target.value)}"
        elif self.policy.visibility.search_attributes:
            query = f"{TENANT_ATTRIBUTE.name} = {_quote(target.value)}"
        else:
            outcome.warnings.append(
                "visibility.search_attributes is off, so running runs of a tenant cannot be "
                "listed: only runs that start from now on will see this (turn it on)"
            )
            return []
        query += ' AND ExecutionStatus = "Running"'
        return [wf.id async for wf in self.client.list_workflows(query)]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


__all__ = ["ControlClient", "ControlError", "ControlOutcome", "ControlTarget"]
