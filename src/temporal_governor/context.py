"""What travels in Temporal headers, and the context managers that set it.

A run's :class:`BudgetContext` (who pays, the chain of runs above it, the allowance its
parent carved for it and its deadline) is carried from the client to the workflow, from a
parent to each child, across continue-as-new, and (without the allowance) into every
activity, in one header named :data:`HEADER`.

The header is not trusted: anyone who can start a workflow can write it. When a run
starts, its header is first checked (:func:`read_context`: every amount finite and
non-negative, sizes bounded; a malformed part is dropped, never fatal to the workflow
task) and then believed only as far as the run can prove it (:func:`trusted_context`):
carried spend and guard state only on a continue-as-new of the same run chain, the chain
and a carved allowance only from the parent that started the run (any other allowance
only as a further cap). What was refused is recorded by the run (a ``control_rejected``
decision and a workflow log warning).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import temporalio.activity
import temporalio.workflow
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    TypeAdapter,
    ValidationError,
)
from temporalio.api.common.v1 import Payload

from .control._messages import Keyring, KillMessage
from .core.accounting import RESOURCES, Amounts
from .core.degradation import Decision as Decision  # the 0.1 name, kept importable
from .core.degradation import Degradation
from .core.detectors import BucketState, LoopState
from .errors import ChainLink, validation_problems

HEADER = "temporal-governor"
"""The Temporal header key that carries the serialised :class:`BudgetContext`."""

DEFAULT_TENANT = "default"
"""The tenant of runs started without :func:`attribution`."""

MAX_HEADER_BYTES = 256 * 1024
"""A start header larger than this is ignored whole (the run starts as a default root run)."""
MAX_CHAIN = 64
"""Most links of an attribution chain; a longer one keeps its root and nearest ancestors."""
MAX_NAME = 200
"""Most characters of a tenant or owner name."""
MAX_TEXT = 1000
"""Most characters of an id, agent, limit or scope name in the header."""
MAX_AMOUNT = 1e15
"""The largest believable amount of any resource in the header (spend, allowance)."""
MAX_SECONDS = 1e10
"""The largest believable deadline, in seconds."""
MAX_CONTROL_SCOPES = 16
"""Most scopes of stored fleet controls the header may hand a starting run."""
UNVERIFIED_ALLOWANCE = "unverified allowance in the start header"
"""The scope of an allowance the run could not trace to its parent (kept only as a cap)."""


class Attribution(BaseModel):
    """Who pays for a run: a tenant and, optionally, an owner within it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str = DEFAULT_TENANT
    """The tenant (customer, team) the run is charged to."""
    owner: str | None = None
    """The person or service that started it."""
    key_id: str | None = Field(default=None, max_length=200)
    """The key the attribution is signed with (see :func:`sign_attribution`)."""
    signature: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Hex HMAC-SHA256 of the tenant, the owner and the root workflow id, set by a governed
    client that holds a key; workers that require it refuse an unsigned or forged claim."""


class AllowanceEntry(BaseModel):
    """How much of one resource a parent carved for a child, and from which limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: float
    """The allowance."""
    limit: str
    """The ancestor limit that bounded it, e.g. ``max_tokens_per_task``."""
    scope: str
    """That limit's scope, e.g. ``run planner/run-1``."""


class Deadline(BaseModel):
    """A wall-time limit inherited or set for a run, as an absolute workflow time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: datetime
    limit: str
    scope: str
    seconds: float
    """The ceiling in seconds, for reporting."""


class BudgetContext(BaseModel):
    """Everything the governor carries between runs and into activities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attribution: Attribution = Field(default_factory=Attribution)
    """Who pays."""
    chain: list[ChainLink] = Field(default_factory=list)
    """The runs above the receiver, root first (for an activity: up to its own run)."""
    allowance: dict[str, AllowanceEntry] = Field(default_factory=dict)
    """Per resource, what the parent carved for this child run."""
    deadline: Deadline | None = None
    """The inherited wall-time deadline."""
    carried: Amounts | None = None
    """Spend carried over a continue-as-new, so the new run is not a fresh budget."""
    max_depth: int | None = None
    """The tightest ``loop_detection.max_depth`` of the receiver's ancestors."""
    max_depth_scope: str = ""
    """The scope that set :attr:`max_depth`."""
    decision: Degradation | None = None
    """For an activity: the degradation in force when it was dispatched."""
    guard_state: dict[str, Any] | None = None
    """Loop-detector and throttle state carried over a continue-as-new (so a loop cannot
    escape detection or an iteration cap by continuing as new), or for a child the
    parent's recent call signatures (so a loop spanning sub-agents is seen)."""
    controls: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """For a starting root run: the fleet-wide kills and resumes in force for its tenant
    and workflow type, as the ledger keeps them (scope -> signal -> stored message)."""
    from_run: str | None = None
    """The run id of the governed run this context belongs to (set when the run starts). A
    continue-as-new hands it on, so the next run can check that carried spend and guard
    state come from its own predecessor and not from a client."""
    started_by: list[ChainLink] = Field(default_factory=list)
    """For a run a Temporal client started from inside a governed activity: the chain of
    the run that dispatched that activity, root first (who caused it; informational, it
    carries no budget). The run inherits that run's tenant and owner."""

    @property
    def depth(self) -> int:
        """How many runs are above the receiver (0 for a root run)."""
        return len(self.chain)


_PAYLOAD_ENCODING = {"encoding": b"json/plain"}


def encode_context(context: BudgetContext) -> Payload:
    """Serialise a context into a header payload."""
    return Payload(
        metadata=_PAYLOAD_ENCODING, data=context.model_dump_json(exclude_defaults=True).encode()
    )


def decode_context(headers: Mapping[str, Payload]) -> BudgetContext | None:
    """Read the governor's context from Temporal headers, if present.

    The header is checked with :func:`read_context`: malformed parts are dropped (the
    receiver governs as if they were absent, e.g. as a root run of the default tenant)
    rather than failing the workflow task. In workflow code, where this reads a run's
    start header, the context is also judged with :func:`trusted_context` against what
    the run can prove; what was refused is kept for the run to record
    (:func:`take_start_judgement`).

    Args:
        headers: The headers of a workflow start, an activity or a client call.

    Returns:
        The context, or ``None`` when there is no usable header.

    """
    payload = headers.get(HEADER)
    if payload is None:
        return None
    context, problems = read_context(payload.data)
    if temporalio.workflow.in_workflow():
        facts = StartFacts.of_current_run()
        proven = False
        if context is not None:
            proven = proven_by(context, facts)
            context, judged = trusted_context(context, facts)
            problems += judged
        _remember(facts.run_id, StartJudgement(problems=problems, proven=proven))
    return context


class StartFacts(BaseModel):
    """What a starting run knows for certain about itself (from ``workflow.info()``).

    The server sets these; no client can forge them, so the header is judged against them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    """The starting run's id."""
    workflow_id: str = ""
    """The starting run's workflow id (what a signed attribution is bound to)."""
    continued_run_id: str | None = None
    """The run this one continues (continue-as-new, and also a retry or cron run)."""
    parent_workflow_id: str | None = None
    """The workflow id of the parent that started this run as a child, if any."""
    parent_run_id: str | None = None
    """That parent's run id."""

    @classmethod
    def of_current_run(cls) -> StartFacts:
        """The facts of the workflow run the caller is in (workflow code only)."""
        return cls.of_info(temporalio.workflow.info())

    @classmethod
    def of_info(cls, info: temporalio.workflow.Info) -> StartFacts:
        """The facts in a run's ``workflow.info()``."""
        parent = info.parent
        return cls(
            run_id=info.run_id,
            workflow_id=info.workflow_id,
            continued_run_id=info.continued_run_id,
            parent_workflow_id=parent.workflow_id if parent else None,
            parent_run_id=parent.run_id if parent else None,
        )


def read_context(data: bytes) -> tuple[BudgetContext | None, list[str]]:
    """Parse and check a header's context; drop what is malformed, say what was dropped.

    Pure and deterministic. A header larger than :data:`MAX_HEADER_BYTES`, or not a JSON
    object, is ignored whole; otherwise each field that does not validate is dropped and
    the rest kept (so a malformed ``carried`` does not cost the run its tenant), and then
    every amount must be finite, non-negative and at most :data:`MAX_AMOUNT`, names and ids
    bounded (:data:`MAX_NAME`, :data:`MAX_TEXT`), the chain at most :data:`MAX_CHAIN` links,
    and carried guard state and stored controls well formed.

    Args:
        data: The header payload's bytes (JSON).

    Returns:
        The checked context (``None`` when nothing usable is left) and the problems found.

    """
    if len(data) > MAX_HEADER_BYTES:
        return None, [f"header of {len(data)} bytes is larger than {MAX_HEADER_BYTES}: ignored"]
    problems: list[str] = []
    try:
        context: BudgetContext | None = BudgetContext.model_validate_json(data)
    except ValidationError as error:
        problems.append(f"malformed, dropped: {validation_problems(error, 'header')}"[:1000])
        context = _salvage(data)
    except (ValueError, RecursionError) as error:
        return None, [f"unreadable: {error}"[:1000]]
    if context is None:
        return None, problems or ["not a JSON object: ignored"]
    context, found = check_context(context)
    return context, problems + found


def _salvage(data: bytes) -> BudgetContext | None:
    """The fields of a malformed header that validate on their own."""
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    kept: dict[str, Any] = {}
    for name in BudgetContext.model_fields:
        if name not in raw:
            continue
        try:
            BudgetContext.model_validate({name: raw[name]})
        except ValidationError:
            continue
        kept[name] = raw[name]
    try:
        return BudgetContext.model_validate(kept)
    except ValidationError:  # pragma: no cover - each field validated on its own
        return None


class _CarriedControl(BaseModel):
    """The control state a continue-as-new carries (see ``ControlPlane.carry``)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    nonces: dict[str, NonNegativeInt] = Field(default_factory=dict)
    paused: KillMessage | None = None


class _GuardState(BaseModel):
    """The guard state a continue-as-new or a parent carries (see ``RunGuard.carry``)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    loop: LoopState | None = None
    bucket: BucketState | None = None
    tier_calls: dict[str, NonNegativeInt] = Field(default_factory=dict)
    tier_cost: dict[str, NonNegativeFloat] = Field(default_factory=dict)
    tier_failures: dict[str, NonNegativeInt] = Field(default_factory=dict)
    chain_start: float | None = None
    control: _CarriedControl | None = None


class _StoredControl(BaseModel):
    """A fleet control as the ledger stores it (its message is checked by the run)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    recorded_at_ms: int = Field(ge=0)
    message: dict[str, Any]


_CONTROLS = TypeAdapter(
    dict[str, dict[str, _StoredControl]], config=ConfigDict(allow_inf_nan=False)
)


def _amount_ok(value: float, ceiling: float = MAX_AMOUNT) -> bool:
    return math.isfinite(value) and 0 <= value <= ceiling


def _text_ok(value: str | None, limit: int = MAX_TEXT) -> bool:
    return value is None or len(value) <= limit


def check_context(context: BudgetContext) -> tuple[BudgetContext, list[str]]:
    """Drop every part of a context that breaks the header's rules (see :func:`read_context`).

    Pure and deterministic.

    Args:
        context: A context as parsed from a header.

    Returns:
        The context without its bad parts, and one problem per part dropped.

    """
    problems: list[str] = []
    updates: dict[str, Any] = {}
    who = context.attribution
    if not who.tenant or not _text_ok(who.tenant, MAX_NAME) or not _text_ok(who.owner, MAX_NAME):
        problems.append(
            f"attribution: tenant (non-empty) and owner must be at most {MAX_NAME} characters; "
            f"ignored (tenant {DEFAULT_TENANT!r})"
        )
        updates["attribution"] = Attribution()
    caller = context.started_by
    if len(caller) > MAX_CHAIN or not all(
        _text_ok(x) for link in caller for x in (link.workflow_id, link.run_id, link.agent)
    ):
        problems.append(f"started_by: at most {MAX_CHAIN} links of bounded ids; ignored")
        updates["started_by"] = []
    chain = context.chain
    if not all(_text_ok(x) for link in chain for x in (link.workflow_id, link.run_id, link.agent)):
        problems.append(f"chain: ids and agents must be at most {MAX_TEXT} characters; ignored")
        updates["chain"] = []
    elif len(chain) > MAX_CHAIN:
        problems.append(
            f"chain: {len(chain)} links cut to {MAX_CHAIN} (the root and the nearest ancestors)"
        )
        updates["chain"] = [chain[0], *chain[len(chain) - MAX_CHAIN + 1 :]]
    allowance: dict[str, AllowanceEntry] = {}
    for resource, entry in context.allowance.items():
        if resource not in RESOURCES:
            problems.append(f"allowance: unknown resource {resource[:50]!r}; ignored")
        elif not _amount_ok(entry.amount):
            problems.append(
                f"allowance.{resource}: must be finite, >= 0 and at most {MAX_AMOUNT:.0e}, got "
                f"{entry.amount!r}; ignored"
            )
        elif not (_text_ok(entry.limit) and _text_ok(entry.scope)):
            problems.append(f"allowance.{resource}: names longer than {MAX_TEXT}; ignored")
        else:
            allowance[resource] = entry
    if len(allowance) != len(context.allowance):
        updates["allowance"] = allowance
    deadline = context.deadline
    if deadline is not None and (
        deadline.at.tzinfo is None
        or not _amount_ok(deadline.seconds, MAX_SECONDS)
        or not (_text_ok(deadline.limit) and _text_ok(deadline.scope))
    ):
        problems.append("deadline: needs a time zone, finite seconds >= 0 and short names; ignored")
        updates["deadline"] = None
    carried = context.carried
    if carried is not None and not all(_amount_ok(carried.get(r)) for r in RESOURCES):
        problems.append(
            f"carried: every amount must be finite, >= 0 and at most {MAX_AMOUNT:.0e}, got "
            f"{carried.nonzero()}; ignored"
        )
        updates["carried"] = None
    if (context.max_depth is not None and context.max_depth < 0) or not _text_ok(
        context.max_depth_scope
    ):
        problems.append("max_depth: must be >= 0 (with a short scope); ignored")
        updates.update(max_depth=None, max_depth_scope="")
    if context.guard_state is not None:
        try:
            _GuardState.model_validate(context.guard_state)
        except ValidationError as error:
            problems.append(f"guard_state: {validation_problems(error, 'guard_state')}"[:500])
            updates["guard_state"] = None
    if context.controls:
        try:
            _CONTROLS.validate_python(context.controls)
            if len(context.controls) > MAX_CONTROL_SCOPES:
                raise ValueError(f"more than {MAX_CONTROL_SCOPES} scopes")
        except ValueError as error:
            problems.append(f"controls: malformed ({str(error)[:300]}); ignored")
            updates["controls"] = {}
    if not _text_ok(context.from_run):
        updates["from_run"] = None
    return (context.model_copy(update=updates) if updates else context), problems


def trusted_context(context: BudgetContext, facts: StartFacts) -> tuple[BudgetContext, list[str]]:
    """Believe a checked start context only as far as the starting run can prove it.

    Pure and deterministic (``facts`` come from ``workflow.info()``, which the server
    sets). The rules:

    - ``carried`` spend and ``guard_state`` only on a continuation whose predecessor wrote
      them: ``facts.continued_run_id`` is set and equals the header's :attr:`~BudgetContext.
      from_run` (a fresh start, or a retry or cron run that reuses a client's header,
      gets neither). Guard state is also believed from the verified parent.
    - the ``chain`` and a carved ``allowance`` only from the parent that started the run:
      the chain's last link is that parent (``facts.parent_*``), or they were handed on by
      such a continuation. Any other chain is dropped; any other allowance is kept only as
      a further cap (an allowance can only lower what a run may spend), relabelled
      :data:`UNVERIFIED_ALLOWANCE`.
    - the deadline, ``max_depth`` and stored controls may come from anyone: the first two
      only tighten, and controls are signed messages the run verifies itself.

    Args:
        context: The context from :func:`read_context`.
        facts: What the starting run knows about itself.

    Returns:
        The context to govern the run with (its ``from_run`` set to the run) and one
        problem per claim that was not believed.

    """
    problems: list[str] = []
    updates: dict[str, Any] = {"from_run": facts.run_id}
    chain = context.chain
    continued = _continued(context, facts)
    proven = proven_by(context, facts)
    if chain and not proven:
        expected = (
            f"the parent that started it ({facts.parent_workflow_id})"
            if facts.parent_run_id is not None
            else "no parent (it is a root run)"
        )
        problems.append(
            f"chain of {len(chain)} runs ignored: the run has {expected} and does not "
            "continue a run that handed the chain on"
        )
        updates["chain"] = []
    if context.allowance and not proven:
        problems.append(
            "allowance not carved by the parent that started the run: kept only as a cap ("
            + ", ".join(f"{r} {e.amount:g}" for r, e in sorted(context.allowance.items()))
            + ")"
        )
        updates["allowance"] = {
            resource: entry.model_copy(update={"limit": "allowance", "scope": UNVERIFIED_ALLOWANCE})
            for resource, entry in context.allowance.items()
        }
    if context.carried is not None and not continued:
        problems.append(
            f"carried spend {context.carried.nonzero()} ignored: spend is carried only by a "
            "continue-as-new of the same run chain"
        )
        updates["carried"] = None
    if context.guard_state is not None and not proven:
        problems.append("guard state ignored: only a continue-as-new or the parent hands it on")
        updates["guard_state"] = None
    return context.model_copy(update=updates), problems


def _continued(context: BudgetContext, facts: StartFacts) -> bool:
    """Whether the context was handed on by the run this one continues."""
    return facts.continued_run_id is not None and context.from_run == facts.continued_run_id


def proven_by(context: BudgetContext, facts: StartFacts) -> bool:
    """Whether a (checked, not yet judged) context was written by a governed worker.

    That is: its chain ends with the parent that started the run, or it was handed on by
    the run this one continues. Pure.

    Args:
        context: The context from :func:`read_context`.
        facts: What the starting run knows about itself.

    Returns:
        ``True`` when the context comes from the parent or the predecessor.

    """
    chain = context.chain
    from_parent = (
        facts.parent_run_id is not None
        and bool(chain)
        and chain[-1].workflow_id == facts.parent_workflow_id
        and chain[-1].run_id == facts.parent_run_id
    )
    return from_parent or _continued(context, facts)


ATTRIBUTION_DOMAIN = b"temporal-governor/attribution/v1\n"
"""Prefix of the bytes an attribution signature covers (no control message starts so)."""


def _attribution_bytes(attribution: Attribution, workflow_id: str) -> bytes:
    data = {"tenant": attribution.tenant, "owner": attribution.owner, "workflow_id": workflow_id}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return ATTRIBUTION_DOMAIN + text.encode()


def sign_attribution(attribution: Attribution, workflow_id: str, keyring: Keyring) -> Attribution:
    """The attribution signed for the run ``workflow_id`` with the keyring's signing key.

    The signature covers the tenant, the owner and the workflow id, so it cannot be
    moved to another tenant or another workflow. Children, continue-as-new runs, retries
    and cron runs of that workflow inherit it.

    Args:
        attribution: Who pays.
        workflow_id: The id of the workflow being started.
        keyring: The keys (the governed client's; the same as the workers').

    Returns:
        The attribution with ``key_id`` and ``signature``, or unchanged when the keyring
        has no key to sign with.

    """
    key_id = keyring.signing_key
    if key_id is None or key_id not in keyring.keys:
        return attribution
    digest = hmac.new(
        keyring.keys[key_id], _attribution_bytes(attribution, workflow_id), hashlib.sha256
    )
    return attribution.model_copy(update={"key_id": key_id, "signature": digest.hexdigest()})


def attribution_problem(attribution: Attribution, workflow_id: str, keyring: Keyring) -> str | None:
    """Why an attribution's signature does not hold for ``workflow_id``, or ``None``.

    Args:
        attribution: The claimed attribution.
        workflow_id: The workflow id the signature must be bound to.
        keyring: The worker's keys.

    Returns:
        ``"unsigned"``, ``"unknown key id ..."``, ``"bad signature"`` or ``None``.

    """
    if attribution.signature is None:
        return "unsigned"
    key = keyring.keys.get(attribution.key_id or "")
    if key is None:
        return f"unknown key id {attribution.key_id!r}"
    expected = hmac.new(key, _attribution_bytes(attribution, workflow_id), hashlib.sha256)
    if not hmac.compare_digest(expected.hexdigest(), attribution.signature):
        return "bad signature"
    return None


def verified_attribution(
    context: BudgetContext,
    facts: StartFacts,
    keyring: Keyring,
    *,
    proven: bool,
    require: bool,
) -> tuple[BudgetContext, list[str]]:
    """Check the tenant claim of a start context against its signature.

    A context written by a governed worker (``proven``: from the parent that started the
    run, or handed on by its predecessor) carries an attribution that was already judged
    and is kept. Otherwise the signature must hold for the run's workflow id: with
    ``require``, an unsigned or forged claim is replaced by the default tenant (a claim
    of the default tenant needs no signature); without it, a forged signature is only
    recorded, so that signing can be rolled out before it is required. Pure.

    Args:
        context: The judged context (from :func:`trusted_context`).
        facts: What the starting run knows about itself.
        keyring: The worker's keys.
        proven: What :func:`proven_by` said of the header.
        require: Whether the policy requires signed attribution.

    Returns:
        The context (its attribution possibly replaced) and the problems found.

    """
    who = context.attribution
    if proven or (who.tenant == DEFAULT_TENANT and who.owner is None):
        return context, []
    problem = attribution_problem(who, facts.workflow_id, keyring)
    if problem is None or (problem == "unsigned" and not require):
        return context, []
    if not require:
        return context, [f"attribution to tenant {who.tenant!r}: {problem} (kept: not required)"]
    return context.model_copy(update={"attribution": Attribution()}), [
        f"attribution to tenant {who.tenant!r} refused ({problem}): the run is charged to "
        f"tenant {DEFAULT_TENANT!r}"
    ]


class StartJudgement(BaseModel):
    """What :func:`decode_context` decided about a run's start header."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    problems: list[str] = Field(default_factory=list)
    """What was refused, in order."""
    proven: bool = False
    """Whether the header came from the run's parent or predecessor (see :func:`proven_by`)."""


_JUDGEMENTS_LIMIT = 10_000
_judgements: dict[str, StartJudgement] = {}


def _remember(run_id: str, judgement: StartJudgement) -> None:
    _judgements[run_id] = judgement
    while len(_judgements) > _JUDGEMENTS_LIMIT:
        del _judgements[next(iter(_judgements))]


def take_start_judgement(run_id: str) -> StartJudgement | None:
    """What :func:`decode_context` decided about a run's start header (once; then forgotten).

    Args:
        run_id: The run.

    Returns:
        The judgement, or ``None`` when no header of that run was decoded in this worker.

    """
    return _judgements.pop(run_id, None)


def with_context(headers: Mapping[str, Payload], context: BudgetContext) -> Mapping[str, Payload]:
    """Headers with the governor's context added or replaced."""
    return {**headers, HEADER: encode_context(context)}


_attribution: contextvars.ContextVar[Attribution | None] = contextvars.ContextVar(
    "temporal_governor_attribution", default=None
)
_estimate: contextvars.ContextVar[Amounts | None] = contextvars.ContextVar(
    "temporal_governor_estimate", default=None
)


class _ActivityContext:
    """The context of one running activity: a checked one, maybe shared, and agent code's copy.

    The activity interceptor hands every activity of a run the same checked context (it
    is a pure function of the header, so it is parsed once per header); agent code gets
    a deep copy of its own the first time it asks, so it may change the copy's lists and
    dicts without touching the context other activities share. Most activities never ask,
    and pay for no copy.
    """

    __slots__ = ("_own", "_shared")

    _copying = threading.Lock()
    """Held while a copy is made: a synchronous activity's threads may ask at once."""

    def __init__(self, shared: BudgetContext) -> None:
        self._shared = shared
        self._own: BudgetContext | None = None

    def own(self) -> BudgetContext:
        """Agent code's copy, made on the first call."""
        own = self._own
        if own is None:
            with self._copying:
                own = self._own
                if own is None:
                    own = self._own = self._shared.model_copy(deep=True)
        return own

    def current(self) -> BudgetContext:
        """What the activity's context is now: agent code's copy if made, else the shared one.

        The same values either way (a copy differs only once agent code changed it), so
        the governor's own reads need no copy.
        """
        own = self._own
        return self._shared if own is None else own


_activity_context: contextvars.ContextVar[_ActivityContext | None] = contextvars.ContextVar(
    "temporal_governor_activity_context", default=None
)


@contextmanager
def attribution(tenant: str = DEFAULT_TENANT, owner: str | None = None) -> Iterator[Attribution]:
    """Attribute the workflows started inside the block to a tenant and owner.

    Use it around client calls; the client interceptor puts it in the start header::

        with attribution(tenant="acme", owner="alice@acme"):
            await client.execute_workflow(Planner.run, goal, id="run-1", task_queue="agents")

    Args:
        tenant: The tenant that pays.
        owner: The person or service within the tenant.

    Yields:
        The attribution in force.

    """
    value = Attribution(tenant=tenant, owner=owner)
    token = _attribution.set(value)
    try:
        yield value
    finally:
        _attribution.reset(token)


def pending_attribution() -> Attribution | None:
    """The attribution set by an enclosing :func:`attribution` block, if any."""
    return _attribution.get()


def inherited_context() -> BudgetContext | None:
    """The context a run started from inside a governed activity inherits, if any.

    A Temporal client used inside a governed activity (an agent that holds a client)
    starts runs on behalf of the run that dispatched the activity: they pay from the same
    tenant and owner, and record that run in ``started_by``. An explicit
    :func:`attribution` block around the start wins over this.
    """
    if not temporalio.activity.in_activity():
        return None
    holder = _activity_context.get()
    if holder is None:
        return None
    caller = holder.current()
    return BudgetContext(attribution=caller.attribution, started_by=list(caller.chain))


@contextmanager
def estimate(tokens: float = 0, cost_usd: float = 0.0, tool_calls: float = 0) -> Iterator[None]:
    """Override the policy's estimate for dispatches started inside the block.

    Use it in workflow code around ``execute_activity`` or ``execute_child_workflow``::

        with temporal_governor.workflow.estimate(tokens=8_000, cost_usd=0.05):
            answer = await workflow.execute_activity(call_llm, prompt, ...)

    The estimate is what is reserved before dispatch; the actual usage is committed when
    the result is back and the rest released.

    Args:
        tokens: Tokens the dispatch may use at most.
        cost_usd: Dollars it may cost at most.
        tool_calls: Tool calls it may make beyond the dispatch itself.

    """
    token = _estimate.set(Amounts(tokens=tokens, cost_usd=cost_usd, tool_calls=tool_calls))
    try:
        yield
    finally:
        _estimate.reset(token)


def explicit_estimate() -> Amounts | None:
    """The estimate set by an enclosing :func:`estimate` block, if any."""
    return _estimate.get()


def set_activity_context(
    context: BudgetContext | None,
) -> contextvars.Token[_ActivityContext | None]:
    """Make a context current for the running activity (used by the activity interceptor).

    ``context`` may be shared with other activities and is never changed: agent code gets
    a deep copy of its own when it first asks (:func:`current_attribution`).
    """
    return _activity_context.set(None if context is None else _ActivityContext(context))


def reset_activity_context(token: contextvars.Token[_ActivityContext | None]) -> None:
    """Undo :func:`set_activity_context`."""
    _activity_context.reset(token)


_workflow_contexts: dict[str, BudgetContext] = {}


def register_workflow_context(run_id: str, context: BudgetContext) -> None:
    """Remember a governed run's context so workflow code can ask for it."""
    _workflow_contexts[run_id] = context


def forget_workflow_context(run_id: str) -> None:
    """Forget a run's context when the run's workflow code ends."""
    _workflow_contexts.pop(run_id, None)


def current_attribution() -> BudgetContext | None:
    """The governor's context of the current activity or workflow run.

    Inside an activity it is the context of the run that dispatched it (its chain ends
    with that run); inside workflow code it is the run's own context. Outside both, or
    for ungoverned runs, it is ``None``.

    Returns:
        The attribution, chain and depth, or ``None``.

    """
    if temporalio.activity.in_activity():
        holder = _activity_context.get()
        return None if holder is None else holder.own()
    if temporalio.workflow.in_workflow():
        return _workflow_contexts.get(temporalio.workflow.info().run_id)
    return None


def current_decision() -> Degradation | None:
    """Inside a governed activity: the degradation in force when it was dispatched.

    ``None`` when no ``degrade`` rule applied (or outside a governed activity). Use it to
    pick a cheaper model or a smaller ``max_tokens`` where the governor cannot rewrite
    the arguments itself::

        decision = temporal_governor.activity.current_decision()
        model = decision.model_for(request.model) if decision else request.model
    """
    if not temporalio.activity.in_activity():
        return None
    holder = _activity_context.get()
    return holder.own().decision if holder is not None else None
