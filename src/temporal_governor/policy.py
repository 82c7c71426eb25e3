"""The governance policy: pydantic models of the YAML file, and its loading boundary.

A policy says, per agent (workflow type) and per tool (activity type), how much one task
may spend, what one dispatch is expected to cost, and what happens on a breach. It is
loaded once with :meth:`Policy.from_yaml` (or :meth:`Policy.from_dict`); every problem in
it is reported as a :class:`~temporal_governor.errors.PolicyError` naming the file, the
dotted path of the field, the value found and what was expected. Loading is bounded in time
and memory (:data:`MAX_POLICY_BYTES`, :data:`MAX_POLICY_VALUES` with aliases expanded,
:data:`MAX_POLICY_DEPTH`), and every number is range-checked (:data:`MAX_NUMBER`,
:data:`MAX_DURATION_S`).

Nothing here knows about Temporal. Field-by-field reference: ``docs/policy.md``.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from .core.problems import PolicyError, PolicyIssue

OnBreach = Literal["terminate", "alert"]
"""What a breached limit does: ``terminate`` halts the run, ``alert`` logs an event."""

PriorityClass = Literal["critical", "high", "normal", "low", "background"]
"""Scheduling classes, most urgent first."""

PER_TASK_LIMITS: dict[str, str] = {
    "max_tokens_per_task": "tokens",
    "max_cost_usd_per_task": "cost_usd",
    "max_tool_calls_per_task": "tool_calls",
    "max_subtasks_per_task": "subtasks",
    "max_child_workflows_per_task": "child_workflows",
    "max_wall_time_per_task": "wall_time_s",
}
"""Per-task quota field name -> the resource it limits."""

_ERROR = "governor"
"""Prefix of the pydantic error types raised by this module's validators."""


# -- validated scalar types ---------------------------------------------------------------

MAX_NUMBER = 10**15
"""The largest number a policy may hold (10^15): every ceiling, estimate, price, rate and
count; the shared ledger refuses larger amounts too. Integers up to it are exact floats."""

MAX_DURATION_S = 3650 * 86400.0
"""The longest duration a policy may hold: 3650 days (about 10 years), in seconds. A run's
start time plus it, and a timer of it, always fit Temporal and ``datetime``."""

_MAX_NUMBER_PHRASE = "at most 1e15"


def _number(
    phrase: str,
    *,
    integer: bool = False,
    minimum: float = 0.0,
    exclusive: bool = False,
    maximum: float | None = None,
    too_big: str | None = None,
) -> Callable[[Any], Any]:
    """A before-validator accepting real numbers only (no booleans, no strings).

    Args:
        phrase: What is expected, for every refusal but a too large value.
        integer: Whole numbers only (``5.0`` is taken as ``5``).
        minimum: The smallest value accepted.
        exclusive: The minimum itself is refused.
        maximum: The largest value accepted (default and at most :data:`MAX_NUMBER`).
        too_big: What is expected when the value is above ``maximum`` (default: ``phrase``
            and the maximum).

    """
    top = MAX_NUMBER if maximum is None else min(maximum, MAX_NUMBER)
    if too_big is None:
        too_big = phrase if maximum is not None else f"{phrase}, {_MAX_NUMBER_PHRASE}"

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PydanticCustomError(f"{_ERROR}_number", phrase)
        if isinstance(value, int) and not -MAX_NUMBER <= value <= MAX_NUMBER:
            raise PydanticCustomError(f"{_ERROR}_number", too_big)  # before float(): no overflow
        if math.isnan(value):
            raise PydanticCustomError(f"{_ERROR}_number", phrase)
        if integer and isinstance(value, float):
            if not value.is_integer():
                raise PydanticCustomError(
                    f"{_ERROR}_number", too_big if math.isinf(value) and value > 0 else phrase
                )
            value = int(value)
        if value < minimum or (exclusive and value == minimum):
            raise PydanticCustomError(f"{_ERROR}_number", phrase)
        if value > top:
            raise PydanticCustomError(f"{_ERROR}_number", too_big)
        return value

    return check


NonNegativeNumber = Annotated[float, Field(ge=0), BeforeValidator(_number("a number >= 0"))]
PositiveNumber = Annotated[
    float, Field(gt=0), BeforeValidator(_number("a number > 0", exclusive=True))
]
NonNegativeInt = Annotated[
    int, Field(ge=0), BeforeValidator(_number("an integer >= 0", integer=True))
]
PositiveInt = Annotated[
    int, Field(ge=1), BeforeValidator(_number("an integer >= 1", integer=True, minimum=1))
]
Fraction = Annotated[
    float,
    Field(gt=0, le=1),
    BeforeValidator(_number("a fraction in (0, 1]", exclusive=True, maximum=1.0)),
]
_CHILD_FRACTION = _number("a fraction in (0, 1] or auto", exclusive=True, maximum=1.0)


def _child_allowance(value: Any) -> Any:
    """``auto`` as it is, anything else as a fraction in (0, 1]."""
    return value if isinstance(value, str) and value == "auto" else _CHILD_FRACTION(value)


ChildAllowance = Annotated[
    Annotated[float, Field(gt=0, le=1)] | Literal["auto"], BeforeValidator(_child_allowance)
]
"""``auto`` (a fair share, see :meth:`Policy.child_allowance_for`) or a fraction in (0, 1]."""

CycleLength = Annotated[
    int,
    Field(ge=2, le=16),
    BeforeValidator(_number("an integer from 2 to 16", integer=True, minimum=2, maximum=16)),
]
SLOWEST_RATE = 1 / 86400
"""The slowest throttle rate a policy may set: one dispatch a day (a slower one would make
its waits overflow timers)."""


def _not_slower_than_daily(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < SLOWEST_RATE:
        raise PydanticCustomError(
            f"{_ERROR}_number", "a rate of at least one dispatch a day (1/86400 = 1.16e-05)"
        )
    return value


Rate = Annotated[
    float,
    Field(gt=0),
    BeforeValidator(_not_slower_than_daily),
    BeforeValidator(_number("a number > 0", exclusive=True)),
]
"""Dispatches per second: > 0, at least one a day, at most 1e15."""

_DURATION_PHRASE = (
    "a duration such as '500ms', '30s', '5m', '2h' or '1d', or a number of seconds >= 0"
)
_DURATION_RANGE_PHRASE = "a duration of at most 3650d (about 10 years)"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def _seconds(
    text: str,
    at: str | None,
    maximum: float = MAX_DURATION_S,
    too_long: str = _DURATION_RANGE_PHRASE,
) -> float:
    """Seconds in a duration string such as ``"30s"`` or ``"1h30m"``, at most ``maximum``."""
    compact = text.strip().replace(" ", "")
    context: dict[str, Any] = {"value": text}
    if at is not None:
        context["at"] = (at,)
    if not _DURATION.fullmatch(compact):
        raise PydanticCustomError(f"{_ERROR}_duration", _DURATION_PHRASE, context)
    seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(compact))
    if not seconds <= maximum:  # also an infinity from a number too long for a float
        raise PydanticCustomError(f"{_ERROR}_duration", too_long, context)
    return seconds


def _duration_seconds(value: Any) -> Any:
    """Seconds from a duration string; anything else passes through to the number check."""
    return _seconds(value, at=None) if isinstance(value, str) else value


def _wall_time(value: Any) -> Any:
    """Convert duration strings, bare or as ``limit`` / ``hard_ceiling``, to seconds."""
    if isinstance(value, Mapping):
        converted = dict(value)
        for key in ("limit", "hard_ceiling"):
            if isinstance(converted.get(key), str):
                converted[key] = _seconds(converted[key], at=key)
        return converted
    return _duration_seconds(value)


def _wall_time_range(spec: Any) -> Any:
    """Refuse a wall-time quota (or its hard ceiling) longer than :data:`MAX_DURATION_S`."""
    if isinstance(spec, BaseModel):
        for key in ("limit", "hard_ceiling"):
            seconds = getattr(spec, key, None)
            if seconds is not None and seconds > MAX_DURATION_S:
                raise PydanticCustomError(
                    f"{_ERROR}_duration",
                    _DURATION_RANGE_PHRASE,
                    {"at": (key,), "value": seconds},
                )
    return spec


# -- the models ---------------------------------------------------------------------------


class LimitSpec(BaseModel):
    """One quota: a ceiling, what a breach does, and when to warn.

    In YAML a quota is either a bare number (the ceiling) or a mapping
    ``{limit, on_breach, warn_at}``; both load as a ``LimitSpec``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: NonNegativeNumber
    """The ceiling, in the resource's unit (tokens, US dollars, calls, workflows, seconds)."""
    on_breach: OnBreach | None = None
    """What a breach does; ``None`` inherits ``defaults.on_breach``."""
    warn_at: Fraction | None = None
    """Fraction of the ceiling at which a warning event is emitted; ``None`` inherits
    ``defaults.warn_at``."""
    hard_ceiling: NonNegativeNumber | None = None
    """The most an operator's override may raise this limit to, for a while; ``None``:
    the limit itself is the hard ceiling (an override may only lower it)."""

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, data: Any) -> Any:
        if isinstance(data, Mapping | BaseModel):
            return data
        return {"limit": data}

    @model_validator(mode="after")
    def _ceiling_above_limit(self) -> Self:
        if self.hard_ceiling is not None and self.hard_ceiling < self.limit:
            raise PydanticCustomError(
                f"{_ERROR}_hard_ceiling",
                f"a hard_ceiling at or above the limit ({self.limit:g})",
                {"at": ("hard_ceiling",), "value": self.hard_ceiling},
            )
        return self

    @property
    def ceiling(self) -> float:
        """The hard ceiling that no override can lift: ``hard_ceiling`` or the limit."""
        return float(self.limit if self.hard_ceiling is None else self.hard_ceiling)


WallTimeSpec = Annotated[
    LimitSpec | None, BeforeValidator(_wall_time), AfterValidator(_wall_time_range)
]
WaitSeconds = Annotated[
    float,
    Field(ge=0, le=MAX_DURATION_S),
    BeforeValidator(
        _number("a number >= 0", maximum=MAX_DURATION_S, too_big=_DURATION_RANGE_PHRASE)
    ),
    BeforeValidator(_duration_seconds),
]
MAX_TTL_SECONDS = 30 * 86400.0
_TTL_PHRASE = "a duration above 0 and at most 30 days ('10m', '2h', or seconds)"


def _ttl_seconds(value: Any) -> Any:
    """Seconds from a duration string of at most 30 days; anything else passes through."""
    return _seconds(value, None, MAX_TTL_SECONDS, _TTL_PHRASE) if isinstance(value, str) else value


TtlSeconds = Annotated[
    float,
    Field(gt=0, le=MAX_TTL_SECONDS),
    BeforeValidator(_number(_TTL_PHRASE, exclusive=True, maximum=MAX_TTL_SECONDS)),
    BeforeValidator(_ttl_seconds),
]


class Quotas(BaseModel):
    """The quotas of one agent.

    Per-task quotas hold for one task (one workflow run, with its continue-as-new chain and
    its subtree of child workflows) and are enforced in the workflow tree. Per-minute quotas
    are validated now and enforced by the shared ledger.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens_per_task: LimitSpec | None = None
    """Model tokens (input + output) one task may use."""
    max_cost_usd_per_task: LimitSpec | None = None
    """US dollars one task may spend (reported, or priced from ``models``)."""
    max_tool_calls_per_task: LimitSpec | None = None
    """Tool calls (activity dispatches and reported calls) one task may make."""
    max_subtasks_per_task: LimitSpec | None = None
    """Child workflows the run itself may start (direct children)."""
    max_child_workflows_per_task: LimitSpec | None = None
    """Child workflows that may be started anywhere in the run's subtree."""
    max_wall_time_per_task: WallTimeSpec = None
    """Seconds of workflow time the task may last; also ``"500ms"``, ``"30s"``, ``"5m"``,
    ``"2h"``, ``"1d"``."""
    max_tokens_per_minute: LimitSpec | None = None
    """Model tokens per minute across all runs of the agent (shared ledger)."""
    max_tool_calls_per_minute: LimitSpec | None = None
    """Tool calls per minute across all runs of the agent (shared ledger)."""

    def per_task(self) -> dict[str, LimitSpec]:
        """The per-task quotas that are set, by resource name.

        Returns:
            A mapping such as ``{"tokens": LimitSpec(limit=50000.0)}``, with resource names
            ``tokens``, ``cost_usd``, ``tool_calls``, ``subtasks``, ``child_workflows`` and
            ``wall_time_s`` (see :data:`PER_TASK_LIMITS`).

        """
        specs: dict[str, LimitSpec] = {}
        for name, resource in PER_TASK_LIMITS.items():
            spec = getattr(self, name)
            if spec is not None:
                specs[resource] = spec
        return specs


class SharedQuotas(BaseModel):
    """Quotas of a scope shared across runs (a tenant, an owner), kept by the ledger.

    Each resource has a total and per-second, per-minute, per-hour and per-day windows;
    a window rolls over on its boundary (fixed windows in workflow time).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: LimitSpec | None = None
    """Model tokens in total across every run of the scope."""
    max_tokens_per_second: LimitSpec | None = None
    """Model tokens per second across every run of the scope."""
    max_tokens_per_minute: LimitSpec | None = None
    """Model tokens per minute across every run of the scope."""
    max_tokens_per_hour: LimitSpec | None = None
    """Model tokens per hour across every run of the scope."""
    max_tokens_per_day: LimitSpec | None = None
    """Model tokens per day across every run of the scope."""
    max_cost_usd: LimitSpec | None = None
    """US dollars in total across every run of the scope."""
    max_cost_usd_per_second: LimitSpec | None = None
    """US dollars per second across every run of the scope."""
    max_cost_usd_per_minute: LimitSpec | None = None
    """US dollars per minute across every run of the scope."""
    max_cost_usd_per_hour: LimitSpec | None = None
    """US dollars per hour across every run of the scope."""
    max_cost_usd_per_day: LimitSpec | None = None
    """US dollars per day across every run of the scope."""
    max_tool_calls: LimitSpec | None = None
    """Tool calls in total across every run of the scope."""
    max_tool_calls_per_second: LimitSpec | None = None
    """Tool calls per second across every run of the scope."""
    max_tool_calls_per_minute: LimitSpec | None = None
    """Tool calls per minute across every run of the scope."""
    max_tool_calls_per_hour: LimitSpec | None = None
    """Tool calls per hour across every run of the scope."""
    max_tool_calls_per_day: LimitSpec | None = None
    """Tool calls per day across every run of the scope."""
    max_subtasks: LimitSpec | None = None
    """Child workflows started in total across every run of the scope."""
    max_concurrent_tasks: LimitSpec | None = None
    """Dispatches (activities and child workflows) in flight at once across the scope."""


class TenantPolicy(BaseModel):
    """Limits of one tenant, and of each owner within it, across all their runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quotas: SharedQuotas = Field(default_factory=SharedQuotas)
    """Limits of the tenant as a whole."""
    per_owner: SharedQuotas = Field(default_factory=SharedQuotas)
    """Limits of each owner of the tenant (every owner gets these)."""


MAX_SHARDS = 256
"""Most shard ledgers a fleet may have (``shared.shards``)."""

OnRefusal = Literal["terminate", "wait"]
"""What a refused shared reservation does: halt the run, or wait (``shared.on_refusal``)."""


class SharedSettings(BaseModel):
    """How scopes shared across runs are enforced."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ledger_id: str = "temporal-governor-ledger"
    """Workflow id of the ledger entity workflow that keeps every shared scope."""
    shards: int = Field(default=1, ge=1, le=MAX_SHARDS, strict=True)
    """How many ledger workflows keep tenant scopes. With 1 the ledger ``ledger_id`` keeps
    every shared scope; with more, each tenant's scopes (its quotas and its owners') live
    on one shard ledger (``<ledger_id>-shard-<i>-of-<shards>``, chosen by a stable hash
    of the tenant), and the fleet-wide scopes (``global``, agents, tools) on the root
    ledger ``ledger_id``. Every worker and client of a fleet must use the same count; see
    docs/shared.md for sizing and for changing it."""
    task_queue: str | None = None
    """Task queue the ledger workflow is started on when a call finds none running
    (default: the calling run's own queue). Set it when a fleet has several task queues,
    and keep a governed worker polling it: a ledger whose queue no worker polls answers
    nothing, and every run that needs it stops (or goes uncounted, ``on_unavailable``)."""
    on_refusal: OnRefusal = "terminate"
    """A refused shared reservation halts the run (``terminate``) or waits for budget or
    the window to roll over (``wait``), up to ``max_wait``."""
    priority_aging_s: TtlSeconds = 5.0
    """Under ``on_refusal: wait``, the ledger queues refused reservations by priority
    class (critical, high, normal, low, background) with a fair share between tenants;
    every this many seconds of waiting raise a waiter by one class, past critical if it
    keeps waiting, so no class starves: a background waiter overtakes fresh critical work
    after 5 times this. Keep 5 times this within ``max_wait`` if background work must
    get through."""
    max_wait: WaitSeconds = 30.0
    """Longest a ``wait`` refusal waits before it halts the run (seconds or a duration)."""
    reservation_ttl: TtlSeconds = 600.0
    """A reservation not settled within this time is released by the ledger (a run that
    died without releasing)."""
    leases: bool = Field(default=True, strict=True)
    """Reserve chunks of shared budget (leases) and reserve against them locally, instead
    of one ledger round trip per dispatch; concurrency limits are always per dispatch."""
    lease_dispatches: PositiveInt = 20
    """A lease asks for this many dispatches' worth of their estimate (the ledger grants
    at most a fair share of what is left, and at least one dispatch's worth)."""
    lease_max_share: Fraction = 0.1
    """The largest fraction of a scope's remaining budget one lease may take, so that one
    busy run cannot starve the others."""
    max_in_flight_updates: PositiveInt = 5
    """Most ledger updates one worker process has in flight at once. Temporal refuses more
    than 10 in-flight updates per workflow by default (``history.maxInFlightUpdates``):
    keep this times the number of worker processes at or below that, or raise it."""
    batch_updates: bool = Field(default=False, strict=True)
    """A worker process sends its concurrent calls to one ledger as one ``batch`` update
    (each call still all-or-nothing and idempotent on its own), which multiplies what one
    ledger serves. Off by default for one release: a ledger history with a ``batch``
    update cannot be replayed by a worker of an earlier release, so turn it on once every
    worker of the fleet runs this one (docs/upgrading.md)."""
    hierarchical_leases: bool = Field(default=False, strict=True)
    """With ``shards`` above 1: a dispatch's fleet-wide part (``global``, agent and tool
    limits on tokens, cost and tool calls; never concurrency) is reserved on its
    tenant's shard together with the tenant part, out of a pool the shard leases from
    the root ledger, so the root sees each shard's pools instead of every run's leases
    (docs/shared.md). Off by default for one release: a shard ledger of an earlier
    release refuses the request, so turn it on once every worker runs this one."""
    continue_as_new_after: PositiveInt = 2000
    """The ledger continues as new after this many updates, carrying its state."""
    call_timeout: TtlSeconds = 60.0
    """Longest one ledger call may take, retries included (seconds or a duration); after
    it the ledger counts as unavailable and ``on_unavailable`` decides. A run makes one
    ledger call at a time, so a call queued behind others of the same run waits for them
    first (each bounded by this)."""
    on_unavailable: Literal["closed", "open"] = "closed"
    """A ledger that cannot answer stops the run (``closed``, no shared budget is ever
    passed) or lets the dispatch go uncounted in the shared scopes (``open``, agents keep
    running through a ledger outage; in-tree limits still hold)."""

    @model_validator(mode="after")
    def _pools_need_shards(self) -> Self:
        if self.hierarchical_leases and self.shards < 2:
            raise PydanticCustomError(
                f"{_ERROR}_hierarchical",
                "shards of 2 or more (a pool is a shard's lease of the root's budget)",
                {"at": ("hierarchical_leases",), "value": True},
            )
        return self


BackpressurePropagation = Literal["up", "down", "both", "none"]
AboveCeiling = Literal["reject", "clamp"]


class ControlSettings(BaseModel):
    """The control plane: who may kill, resume, slow down or override a governed run.

    Signing keys are never written in the policy: they come from the environment variable
    ``keys_env`` (``key-id=secret`` pairs, comma separated) and/or the file ``keys_file``
    (a YAML or JSON mapping of key id to secret), read when a worker or the CLI starts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys_env: str = "TEMPORAL_GOVERNOR_KEYS"
    """Environment variable holding ``key-id=secret[,key-id=secret...]``."""
    keys_file: str | None = None
    """A file with a mapping of key id to secret (relative paths: to the policy file)."""
    signing_key: str | None = None
    """The key id the CLI and the governor sign with (default: the first key found)."""
    require_attribution: bool = Field(default=False, strict=True)
    """Refuse a root run that arrives naming no payer (the ``default`` tenant and no owner,
    and not started from a governed activity): it fails with ``GovernanceKilled``
    (``limit: control.require_attribution``) before its code runs."""
    require_signed_attribution: bool = Field(default=False, strict=True)
    """Believe a run's tenant and owner only when the starting client signed them with a
    control key (a governed client holding a key does so); otherwise the run is charged
    to the ``default`` tenant. Turn on where callers are less trusted than the namespace."""
    allow_unsigned_kill: bool = Field(default=True, strict=True)
    """Accept an unsigned ``kill`` (safety first). ``resume`` and ``override`` always need
    a valid signature."""
    max_clock_skew: WaitSeconds = 300.0
    """A signed message older (or newer) than this, in workflow time, is rejected as stale."""
    pause_timeout: TtlSeconds = 86400.0
    """A paused run not resumed within this time fails with ``GovernanceKilled``."""
    above_ceiling: AboveCeiling = "reject"
    """An override above a limit's hard ceiling is rejected, or clamped to the ceiling."""
    max_override: TtlSeconds = 86400.0
    """The longest an override may last; longer requests are cut to this."""
    backpressure_propagation: BackpressurePropagation = "up"
    """Where a run forwards backpressure it receives: to its parent chain (``up``), to its
    running children (``down``), both, or nowhere."""
    max_backpressure: TtlSeconds = 3600.0
    """The longest one backpressure message may hold (its ``duration_ms`` is cut to this)."""
    fleet_poll_interval: TtlSeconds = 30.0
    """A run resting in a tenant or agent pause asks the ledger this often whether the
    pause was lifted (so a fleet resume reaches it without visibility search attributes)."""
    check_kills_at_start: bool = Field(default=True, strict=True)
    """A governed client reads the ledger's kills of the tenant and workflow type of every
    run it starts (one query per start) and hands them to the run in its start header;
    off, only runs already running when a tenant or agent kill is sent are reached."""


class Estimate(BaseModel):
    """What one dispatch is expected to use at most; reserved before it is dispatched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: NonNegativeInt = 0
    """Model tokens, input plus output."""
    cost_usd: NonNegativeNumber = 0.0
    """US dollars."""
    tool_calls: NonNegativeInt = 0
    """Tool calls reported by the dispatch, on top of the one the dispatch itself counts."""


class Throttle(BaseModel):
    """A token-bucket rate limit on an agent's dispatches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_sec: Rate
    """Sustained dispatches per second."""
    burst: PositiveInt
    """Dispatches allowed at once above the sustained rate (bucket size)."""


class PrioritySettings(BaseModel):
    """The scheduling priority of an agent's work."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_class: PriorityClass = "normal"
    """The class of the agent's dispatches unless a tool entry says otherwise."""
    fairness_by_tenant: bool = Field(default=True, strict=True)
    """Also set Temporal's fairness key to the run's tenant, so that one tenant's backlog
    cannot starve another's within a priority class (where the server supports it)."""


DetectorAction = Literal["alert", "throttle", "terminate"]
"""What a detector that fires does: log an event, slow the run down, or halt it."""


class LoopDetection(BaseModel):
    """Guards against runaway agent loops."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_depth: NonNegativeInt | None = None
    """How deep the tree of child workflows below a run of this agent may grow."""
    signature_window: PositiveInt | None = None
    """How many recent dispatch signatures are compared to spot a repeating loop."""
    max_repeats: PositiveInt = 3
    """Within ``signature_window``, a call (target and arguments) seen more often than
    this is a loop."""
    max_cycle_length: CycleLength = 4
    """Longest sequence of tool calls checked for back-to-back repetition."""
    max_cycle_repeats: PositiveInt | None = None
    """A sequence of 2..``max_cycle_length`` tools repeated back to back more than this
    many times is a loop (it looks at tool names only: leave it off for agents that
    legitimately alternate tools over many items)."""
    max_consecutive_failures: PositiveInt | None = None
    """More failed dispatches in a row than this (no success between) make a loop."""
    max_iterations: PositiveInt | None = None
    """Most dispatches one run may make."""
    max_agent_visits: PositiveInt | None = None
    """Most times this agent may appear in its own chain of ancestors (a cycle in the agent
    call graph such as planner -> executor -> planner -> ...)."""
    action: DetectorAction = "terminate"
    """What a detected loop does (``terminate`` fails the run with ``RunawayLoop``)."""
    throttle_delay: WaitSeconds = 1.0
    """For ``action: throttle``: how long each looping dispatch is held back."""


class PredictiveThrottle(BaseModel):
    """Slow a run down before it breaches, from its burn rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    expected_duration: TtlSeconds
    """How long a run of the agent is expected to last."""
    max_delay: WaitSeconds = 5.0
    """The longest one dispatch is held back."""


class AnomalySettings(BaseModel):
    """Spend anomaly detection against baselines kept in the ledger across runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    factor: PositiveNumber | None = None
    """A run whose spend exceeds this many times the baseline mean is anomalous."""
    zscore: PositiveNumber | None = None
    """... or whose z-score against the baseline exceeds this."""
    min_samples: PositiveInt = 5
    """Runs a baseline needs before it judges anything."""
    alpha: Fraction = 0.2
    """Weight of the newest run in the exponentially weighted baseline."""
    action: DetectorAction = "alert"
    """What an anomaly does."""
    throttle_delay: WaitSeconds = 1.0
    """For ``action: throttle``: how long each dispatch is held back once anomalous."""
    predictive: PredictiveThrottle | None = None
    """Slow the run down when its burn rate would exhaust its budget before it ends."""

    @model_validator(mode="after")
    def _one_rule(self) -> Self:
        if self.factor is None and self.zscore is None:
            raise PydanticCustomError(
                f"{_ERROR}_anomaly",
                "a factor or a zscore (or both)",
                {"at": ("factor",), "value": None},
            )
        return self


class DegradeRule(BaseModel):
    """A graceful decision short of a halt, taken when budget runs low or on an anomaly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    when_remaining_below: Fraction | None = None
    """Applies once less than this fraction of the run's tightest budget remains."""
    when_anomalous: bool = Field(default=False, strict=True)
    """Applies once the run has been found anomalous."""
    model_map: dict[str, str] = Field(default_factory=dict)
    """Downgrade models: requested model -> the model to use instead."""
    max_tokens: PositiveInt | None = None
    """Cap ``max_tokens`` of model calls."""
    disable_tools: list[str] = Field(default_factory=list)
    """Activity types (optional tools) refused while the rule applies."""
    rewrite_arguments: bool = Field(default=True, strict=True)
    """Rewrite ``model`` / ``max_tokens`` in OpenAI-style activity arguments on the way in
    (otherwise the activity reads the decision with ``current_decision()``)."""

    @model_validator(mode="after")
    def _has_trigger(self) -> Self:
        if self.when_remaining_below is None and not self.when_anomalous:
            raise PydanticCustomError(
                f"{_ERROR}_degrade",
                "when_remaining_below or when_anomalous",
                {"at": ("when_remaining_below",), "value": None},
            )
        return self


class RiskTier(BaseModel):
    """Stricter rules for the tools and agents of one risk tier (``payment``, ``write`` ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_calls_per_task: NonNegativeInt | None = None
    """Most calls of this tier's tools one run may make (0: none at all)."""
    max_cost_usd_per_task: NonNegativeNumber | None = None
    """Most dollars one run may spend in this tier's tools."""
    max_consecutive_failures: PositiveInt | None = None
    """More failed calls of this tier's tools in a row than this halt the run."""
    loop_action: DetectorAction | None = None
    """Action of a loop detected on this tier's tools (``terminate``: immediate halt),
    instead of the agent's ``loop_detection.action``."""


class AgentPolicy(BaseModel):
    """The policy of one agent, matched to workflow runs by workflow type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str | None = None
    """The agent's version; informational."""
    workflow_types: list[str] = Field(default_factory=list)
    """Workflow types governed by this entry, besides the entry's own name."""
    quotas: Quotas = Field(default_factory=Quotas)
    """The agent's quotas; when the entry does not set them, ``defaults.quotas`` apply."""
    estimate: Estimate = Field(default_factory=Estimate)
    """Reserved in the parent when this agent is started as a child workflow: the minimum
    the child needs."""
    child_allowance: ChildAllowance = "auto"
    """How much of this agent's remaining budget each child it starts is carved: ``auto``
    (a fair share that shrinks with the children already running, so parallel children
    are not refused) or a fraction of what is left; when the entry does not set it,
    ``defaults.child_allowance`` applies."""
    throttle: Throttle | None = None
    """Rate limit on the agent's dispatches."""
    priority: PrioritySettings | None = None
    """Scheduling priority of the agent's work."""
    loop_detection: LoopDetection = Field(default_factory=LoopDetection)
    """Runaway-loop guards."""
    anomaly: AnomalySettings | None = None
    """Spend anomaly detection against the agent's (and tenant's) baseline."""
    degrade: list[DegradeRule] = Field(default_factory=list)
    """Graceful decisions short of a halt; the first rule that applies is taken."""
    risk_tier: str | None = None
    """The agent's risk tier (a key of ``risk_tiers``): its rules apply to every dispatch."""


class ToolPolicy(BaseModel):
    """The policy of one tool, matched to activities by activity type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    activity_types: list[str] = Field(default_factory=list)
    """Activity types governed by this entry, besides the entry's own name."""
    estimate: Estimate = Field(default_factory=Estimate)
    """What one call is expected to use at most; when the entry does not set it,
    ``defaults.estimate`` applies."""
    counts_as_tool_call: bool = Field(default=True, strict=True)
    """Whether a dispatch counts as one tool call (``false`` for a model-call activity)."""
    max_qps: PositiveNumber | None = None
    """Calls per second across all callers (shared ledger)."""
    max_concurrent_requests: PositiveInt | None = None
    """Calls in flight at once across all callers (shared ledger)."""
    priority_class: PriorityClass | None = None
    """Scheduling class of this tool's calls."""
    throttle: Throttle | None = None
    """Rate limit on this tool's calls within one run (``max_qps`` is across runs)."""
    risk_tier: str | None = None
    """The tool's risk tier (a key of ``risk_tiers``)."""


class GlobalLimits(BaseModel):
    """Limits across every governed workflow (shared ledger)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent_tasks: PositiveInt | None = None
    """Tasks (root workflow runs) running at once."""
    max_tokens_per_minute: NonNegativeInt | None = None
    """Model tokens per minute, everything together."""
    max_tool_calls_per_minute: NonNegativeInt | None = None
    """Tool calls per minute, everything together."""


class ModelPrice(BaseModel):
    """The price of one model, in US dollars per 1,000 tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_1k: NonNegativeNumber
    """US dollars per 1,000 input (prompt) tokens."""
    output_per_1k: NonNegativeNumber
    """US dollars per 1,000 output (completion) tokens."""


class Defaults(BaseModel):
    """What applies where the policy says nothing more specific."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_breach: OnBreach = "terminate"
    """What a breach does for quotas that do not say."""
    warn_at: Fraction | None = None
    """Warning fraction for quotas that do not say; ``None``: no warnings."""
    estimate: Estimate = Field(default_factory=Estimate)
    """Estimate of activities without a tool entry (or whose entry sets none)."""
    quotas: Quotas = Field(default_factory=Quotas)
    """Quotas of workflows without an agent entry (or whose entry sets none)."""
    child_allowance: ChildAllowance = "auto"
    """Child allowance of workflows without an agent entry (or whose entry sets none):
    ``auto`` or a fraction in (0, 1]."""


class Visibility(BaseModel):
    """What governed runs show in Temporal's UI and visibility store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memo: bool = Field(default=True, strict=True)
    """Write the run's spend summary into its memo (key ``governor``) when it ends."""
    search_attributes: bool = Field(default=False, strict=True)
    """Set the ``GovernorTenant`` and ``GovernorState`` search attributes. They must be
    registered on the namespace first (the plugin does it on a dev server; see
    docs/observability.md for a cluster); off by default because an unregistered
    attribute blocks the run's workflow tasks."""


class Policy(BaseModel):
    """A governance policy: global limits, defaults, prices, agents and tools.

    Example::

        policy = Policy.from_yaml("governance.yaml")
        name, planner = policy.agent_for("Planner") or (None, None)
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    global_: GlobalLimits = Field(default_factory=GlobalLimits, alias="global")
    """Limits across every governed workflow (``global`` in YAML)."""
    defaults: Defaults = Field(default_factory=Defaults)
    """What applies where nothing more specific is said."""
    models: dict[str, ModelPrice] = Field(default_factory=dict)
    """Price table, by model name, used to price reported tokens."""
    agents: dict[str, AgentPolicy] = Field(default_factory=dict)
    """Agent entries, by name (a workflow type, or any name with ``workflow_types``)."""
    tools: dict[str, ToolPolicy] = Field(default_factory=dict)
    """Tool entries, by name (an activity type, or any name with ``activity_types``)."""
    visibility: Visibility = Field(default_factory=Visibility)
    """Memo and search attributes of governed runs."""
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)
    """Per-tenant limits across runs; the entry ``default`` applies to tenants without one."""
    shared: SharedSettings = Field(default_factory=SharedSettings)
    """How limits shared across runs are enforced (the ledger)."""
    control: ControlSettings = Field(default_factory=ControlSettings)
    """The control plane: signing keys, kill, resume, backpressure and override rules."""
    risk_tiers: dict[str, RiskTier] = Field(default_factory=dict)
    """Rules per risk tier, named by tools' and agents' ``risk_tier``."""
    source: str = Field(default="<dict>", exclude=True)
    """Where the policy was loaded from, for messages; not part of the policy itself."""

    _agent_names: dict[str, str] = PrivateAttr(default_factory=dict)
    _tool_names: dict[str, str] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        """Build the workflow-type and activity-type lookup tables."""
        self._agent_names = _claims(self.agents, "workflow_types")
        self._tool_names = _claims(self.tools, "activity_types")

    @model_validator(mode="after")
    def _tiers_exist(self) -> Self:
        for section, entries in (("agents", self.agents), ("tools", self.tools)):
            for name, entry in entries.items():
                tier = getattr(entry, "risk_tier", None)
                if tier is not None and tier not in self.risk_tiers:
                    known = ", ".join(sorted(self.risk_tiers)) or "none defined"
                    raise PydanticCustomError(
                        f"{_ERROR}_tier",
                        f"a tier defined in risk_tiers ({known})",
                        {"at": (section, name, "risk_tier"), "value": tier},
                    )
        return self

    @model_validator(mode="after")
    def _one_claim_each(self) -> Self:
        for section, entries, attribute in (
            ("agents", self.agents, "workflow_types"),
            ("tools", self.tools, "activity_types"),
        ):
            kind = "workflow type" if section == "agents" else "activity type"
            owners: dict[str, tuple[str, str]] = {}
            for name, entry in entries.items():
                claims: list[tuple[str, tuple[str | int, ...]]] = [(name, ())]
                claims += [(t, (attribute, i)) for i, t in enumerate(getattr(entry, attribute))]
                for claimed, at in claims:
                    owner = owners.setdefault(claimed, (name, _render((section, name, *at))))
                    if owner[0] != name:
                        raise PydanticCustomError(
                            f"{_ERROR}_claim",
                            f"a {kind} no other entry claims ({claimed!r} is already "
                            f"claimed by {owner[1]})",
                            {"at": (section, name, *at), "value": claimed},
                        )
        return self

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path_or_text: str | os.PathLike[str]) -> Policy:
        """Load a policy from a YAML file or from YAML text.

        Args:
            path_or_text: A path (``os.PathLike``, or a one-line string naming an existing
                file) or the YAML text itself. A one-line string ending in ``.yaml`` or
                ``.yml`` must name an existing file.

        Returns:
            The validated policy, with ``source`` set to the file name or ``<text>``.

        Raises:
            PolicyError: The file is missing or unreadable, the YAML is malformed or has
                duplicate keys, or the policy is invalid.

        """
        if isinstance(path_or_text, os.PathLike):
            source = os.fspath(path_or_text)
            text = _read(Path(source), source)
        elif _names_a_file(path_or_text):
            source = path_or_text
            text = _read(Path(source), source)
        else:
            source, text = "<text>", path_or_text
        data = _parse_yaml(text, source)
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise PolicyError([_top_level_issue(data, source)])
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Policy:
        """Validate a policy given as plain data (as parsed from YAML or JSON).

        Args:
            data: The policy document, keyed as in YAML (``global``, not ``global_``).
            source: Where it came from, for messages.

        Returns:
            The validated policy.

        Raises:
            PolicyError: The policy is invalid; every problem is listed.

        """
        if not isinstance(data, Mapping):
            raise PolicyError([_top_level_issue(data, source)])
        issues: list[PolicyIssue] = []
        document: dict[Any, Any] = {}
        for key, value in data.items():
            if key in ("source", "global_"):  # Python-side names, not policy keys
                issues.append(_unknown_key_issue(cls, key, (key,), source))
            else:
                document[key] = value
        try:
            policy = cls.model_validate({**document, "source": source})
        except ValidationError as error:
            issues += _translate(error, document, source)
        else:
            if not issues:
                return policy
        raise PolicyError(_capped(_in_document_order(issues, data), source))

    # -- lookups -----------------------------------------------------------------------------

    def agent_for(self, workflow_type: str) -> tuple[str, AgentPolicy] | None:
        """The agent entry that governs a workflow type.

        Args:
            workflow_type: The workflow type name.

        Returns:
            ``(entry name, entry)`` for the entry named so or listing it in
            ``workflow_types``, or ``None``.

        """
        name = self._agent_names.get(workflow_type)
        return None if name is None else (name, self.agents[name])

    def tool_for(self, activity_type: str) -> tuple[str, ToolPolicy] | None:
        """The tool entry that governs an activity type.

        Args:
            activity_type: The activity type name.

        Returns:
            ``(entry name, entry)`` for the entry named so or listing it in
            ``activity_types``, or ``None``.

        """
        name = self._tool_names.get(activity_type)
        return None if name is None else (name, self.tools[name])

    def quotas_for(self, workflow_type: str) -> Quotas:
        """The quotas of a workflow type.

        Args:
            workflow_type: The workflow type name.

        Returns:
            Its agent entry's ``quotas`` if the entry sets them, else ``defaults.quotas``.

        """
        entry = self.agent_for(workflow_type)
        if entry is not None and "quotas" in entry[1].model_fields_set:
            return entry[1].quotas
        return self.defaults.quotas

    def estimate_for_activity(self, activity_type: str) -> Estimate:
        """What one dispatch of an activity type is expected to use at most.

        Args:
            activity_type: The activity type name.

        Returns:
            Its tool entry's ``estimate`` if the entry sets one, else ``defaults.estimate``.

        """
        entry = self.tool_for(activity_type)
        if entry is not None and "estimate" in entry[1].model_fields_set:
            return entry[1].estimate
        return self.defaults.estimate

    def estimate_for_child(self, workflow_type: str) -> Estimate:
        """What a child workflow of this type needs at least; reserved in its parent.

        Args:
            workflow_type: The child's workflow type name.

        Returns:
            Its agent entry's ``estimate``, or a zero estimate.

        """
        entry = self.agent_for(workflow_type)
        return entry[1].estimate if entry is not None else _ZERO_ESTIMATE

    def child_allowance_for(self, workflow_type: str) -> float | Literal["auto"]:
        """How a run's remaining budget is carved for each child it starts.

        ``auto`` (the default): a child started while ``n`` children of the run are in
        flight gets ``1 / (n + 2)`` of what is left after its estimate, at most its own
        per-task quota, and at least its estimate. A fraction ``f``: ``f`` of what is left
        after its estimate, and at least its estimate. Either way the carve is reserved in
        the run while the child runs, so the tree never passes the run's ceiling.

        Args:
            workflow_type: The parent's workflow type name.

        Returns:
            Its agent entry's ``child_allowance`` if set, else ``defaults.child_allowance``.

        """
        entry = self.agent_for(workflow_type)
        if entry is not None and "child_allowance" in entry[1].model_fields_set:
            return entry[1].child_allowance
        return self.defaults.child_allowance

    def on_breach_of(self, spec: LimitSpec) -> OnBreach:
        """What a breach of a quota does, with ``defaults.on_breach`` filled in.

        Args:
            spec: The quota.

        Returns:
            ``"terminate"`` or ``"alert"``.

        """
        return spec.on_breach if spec.on_breach is not None else self.defaults.on_breach

    def warn_at_of(self, spec: LimitSpec) -> float | None:
        """The warning fraction of a quota, with ``defaults.warn_at`` filled in.

        Args:
            spec: The quota.

        Returns:
            A fraction in (0, 1], or ``None`` for no warning.

        """
        return spec.warn_at if spec.warn_at is not None else self.defaults.warn_at

    def cost_usd(self, model: str | None, input_tokens: int, output_tokens: int) -> float | None:
        """Price tokens from the ``models`` table.

        Args:
            model: The model name, as reported by the activity.
            input_tokens: Input (prompt) tokens.
            output_tokens: Output (completion) tokens.

        Returns:
            US dollars, or ``None`` when the model is not in the table.

        """
        price = self.models.get(model) if model is not None else None
        if price is None:
            return None
        return input_tokens / 1000 * price.input_per_1k + output_tokens / 1000 * price.output_per_1k


_ZERO_ESTIMATE = Estimate()


def _claims(entries: Mapping[str, BaseModel], attribute: str) -> dict[str, str]:
    """Type name -> entry name; the first claim wins (conflicts are rejected later)."""
    names: dict[str, str] = {}
    for name, entry in entries.items():
        names.setdefault(name, name)
        for claimed in getattr(entry, attribute):
            names.setdefault(claimed, name)
    return names


# -- reading YAML ---------------------------------------------------------------------------

MAX_POLICY_BYTES = 1024 * 1024
"""The largest policy document: 1 MiB of UTF-8. A larger one is refused before it is parsed
(a file is read no further than this)."""

MAX_POLICY_VALUES = 200_000
"""The most values (mappings, lists and scalars, keys included) a policy document may hold,
each alias counted as all the values it repeats. Checked on the composed node graph, where
an alias is one shared node, so an alias bomb is refused before anything is built from it."""

MAX_POLICY_DEPTH = 64
"""The deepest nesting of mappings and lists a policy document may have."""

_MAX_INTEGER_CHARS = 32
"""An integer written with more characters than this is refused without being converted
(no policy number has more than 16 digits)."""

_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
"""Characters YAML does not allow in a document (NUL and the other control characters)."""

_STRING_TAGS = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:value")
"""Tags of a mapping key that loads as a string (``=`` is the YAML 1.1 value key)."""


class _Refused(Exception):
    """A problem found while reading the YAML, before there is data to validate."""

    def __init__(self, path: Sequence[str | int], value: Any, expected: str) -> None:
        super().__init__(expected)
        self.path = tuple(path)
        self.value = value
        self.expected = expected


class _Unreadable(Exception):
    """A scalar that cannot be turned into a value; located in the document afterwards."""

    def __init__(self, node: yaml.Node, expected: str) -> None:
        super().__init__(expected)
        self.node = node
        self.expected = expected


class _Constructor(SafeConstructor):
    """PyYAML's safe constructor, refusing (at the node) any value its tag cannot take."""

    def get_single_node(self) -> yaml.Node | None:
        """The document's node graph (provided by the parser class listed before this one)."""
        raise NotImplementedError  # pragma: no cover - always overridden in the MRO

    def dispose(self) -> None:
        """Release the parser's state (provided by the parser class listed before this one)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Construct one node; a value its tag cannot take is refused at that node."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, ArithmeticError, LookupError) as error:
            kind = str(node.tag).rpartition(":")[2] or "value"
            raise _Unreadable(
                node, f"a valid {kind} ({error}; quote it to make it a string)"
            ) from error

    def construct_bounded_int(self, node: yaml.ScalarNode) -> int:
        """An integer, refused unconverted when it is written with too many characters."""
        if len(str(node.value).replace("_", "")) > _MAX_INTEGER_CHARS:
            raise _Unreadable(node, f"a number {_MAX_NUMBER_PHRASE}")
        return self.construct_yaml_int(node)

    yaml_constructors = {
        **SafeConstructor.yaml_constructors,
        "tag:yaml.org,2002:int": construct_bounded_int,
    }


class _PythonLoader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    Composer,
    _Constructor,
    Resolver,
):
    """The loader where PyYAML lacks its C extension: PyYAML's own pure-Python parser.

    Its composer recurses once per level of nesting, so the depth is bounded here, while
    composing, before Python's recursion limit is reached.
    """

    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        Composer.__init__(self)
        _Constructor.__init__(self)
        Resolver.__init__(self)
        self._path: list[str | int | None] = []

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """Compose one node, refusing nesting deeper than :data:`MAX_POLICY_DEPTH`."""
        segment = str(index.value) if isinstance(index, yaml.ScalarNode) else index
        nests = self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent)
        if nests and len(self._path) >= MAX_POLICY_DEPTH:
            line = parent.start_mark.line if parent is not None else 0
            path = [s for s in (*self._path, segment) if s is not None]
            raise _Refused(path, f"more than {MAX_POLICY_DEPTH} levels", _depth_phrase(line))
        self._path.append(segment if isinstance(segment, str | int) else None)
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()


@functools.cache
def _loader_class() -> Callable[[str], _Constructor]:
    """The policy loader class: libyaml's parser and composer (C) when PyYAML has them."""
    if not yaml.__with_libyaml__:
        return _PythonLoader
    from yaml._yaml import CParser

    class _CLoader(CParser, _Constructor, Resolver):
        """libyaml's parser and composer, which caps nesting at 1,000 levels itself."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _Constructor.__init__(self)
            Resolver.__init__(self)

    return _CLoader


def _depth_phrase(line: int) -> str:
    return f"at most {MAX_POLICY_DEPTH} levels of nested mappings and lists (line {line + 1})"


def _children(node: yaml.Node) -> list[tuple[str | int, yaml.Node]]:
    """The nodes right under a node, keys included, each with its path segment."""
    if isinstance(node, yaml.MappingNode):
        found: list[tuple[str | int, yaml.Node]] = []
        for key_node, value_node in node.value:
            segment = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            found += [(segment, key_node), (segment, value_node)]
        return found
    if isinstance(node, yaml.SequenceNode):
        return list(enumerate(node.value))
    return []


def _nodes_under(node: yaml.Node) -> list[yaml.Node]:
    """The nodes right under a mapping (keys and values) or a list."""
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _measure(root: yaml.Node) -> None:
    """Refuse a node graph too deep, too large once aliases are expanded, or recursive.

    An alias is a node shared by several parents, so one pass over the distinct nodes
    (each measured once, bottom up) gives the expanded size and depth without expanding.
    """
    sizes: dict[int, int] = {}  # id -> values in the expanded subtree
    heights: dict[int, int] = {}  # id -> levels of mappings and lists in it
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool, int]] = [(root, False, 0)]
    while stack:
        node, leaving, level = stack.pop()
        key = id(node)
        if leaving:
            size, height = 1, 0
            for child in _nodes_under(node):
                if isinstance(child, yaml.CollectionNode):
                    size += sizes[id(child)]
                    height = max(height, heights[id(child)])
                else:
                    size += 1
            sizes[key], heights[key] = size, height + 1
            entered.discard(key)
            if size > MAX_POLICY_VALUES:
                raise _Refused(
                    _path_of(root, node),
                    f"{size:,} values",
                    f"at most {MAX_POLICY_VALUES:,} values in a policy (mappings, lists and "
                    "scalars, keys included, an alias counting as all the values it repeats)",
                )
        elif key in heights:  # measured already: an alias reaching it again
            if level + heights[key] > MAX_POLICY_DEPTH:
                raise _Refused(
                    _path_of(root, node),
                    f"{level + heights[key]} levels",
                    _depth_phrase(node.start_mark.line),
                )
        elif key in entered:
            raise _Refused(
                _path_of(root, node),
                "a recursive alias",
                "aliases of values that end before them (this one, on line "
                f"{node.start_mark.line + 1}, repeats a mapping or list from inside itself)",
            )
        elif isinstance(node, yaml.CollectionNode):
            if level >= MAX_POLICY_DEPTH:
                raise _Refused(
                    _path_of(root, node),
                    f"more than {MAX_POLICY_DEPTH} levels",
                    _depth_phrase(node.start_mark.line),
                )
            entered.add(key)
            stack.append((node, True, level))
            stack += [
                (child, False, level + 1)
                for child in _nodes_under(node)
                if isinstance(child, yaml.CollectionNode)
            ]


def _check_keys(
    node: yaml.Node,
    path: tuple[str | int, ...],
    source: str,
    issues: list[PolicyIssue],
    seen: set[int],
) -> None:
    """Collect keys that are not strings and keys given twice in one mapping."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key_value = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key_node.tag not in _STRING_TAGS:
                issues.append(
                    PolicyIssue(
                        source=source,
                        path=_render(path),
                        value="a mapping or list" if key_value is None else key_value,
                        expected=(
                            "keys that are strings (quote this one: in YAML ~, null, true, "
                            "yes, no, on, off, numbers and dates are not strings)"
                        ),
                    )
                )
            if isinstance(key_value, str):
                identity = (key_node.tag, key_value)
                if identity in first:
                    issues.append(
                        PolicyIssue(
                            source=source,
                            path=_render((*path, key_value)),
                            value=key_value,
                            expected=(
                                "each key at most once in a mapping (first given on line "
                                f"{first[identity].start_mark.line + 1}, again on line "
                                f"{key_node.start_mark.line + 1})"
                            ),
                        )
                    )
                else:
                    first[identity] = key_node
                _check_keys(value_node, (*path, key_value), source, issues, seen)
            else:
                _check_keys(value_node, path, source, issues, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_keys(item, (*path, index), source, issues, seen)


def _path_of(root: yaml.Node, target: yaml.Node) -> list[str | int]:
    """The path of keys and indexes from the document's root to one of its nodes."""
    stack: list[tuple[yaml.Node, list[str | int]]] = [(root, [])]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) not in seen:
            seen.add(id(node))
            stack += reversed([(child, [*path, seg]) for seg, child in _children(node)])
    return []


def _load_document(loader: _Constructor, source: str) -> Any:
    """Compose the single document, bound and check it, then construct it."""
    node = loader.get_single_node()
    if node is None:
        return None
    _measure(node)
    issues: list[PolicyIssue] = []
    _check_keys(node, (), source, issues, set())
    if issues:
        raise PolicyError(_capped(issues, source))
    try:
        return loader.construct_document(node)
    except _Unreadable as problem:
        value = problem.node.value if isinstance(problem.node, yaml.ScalarNode) else None
        raise _Refused(_path_of(node, problem.node), _short(value), problem.expected) from problem


def _names_a_file(text: str) -> bool:
    """Whether a string is meant as a file name rather than as YAML text."""
    if "\n" in text:
        return False
    if text.strip().lower().endswith((".yaml", ".yml")):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _read(path: Path, source: str) -> str:
    """The text of a policy file, read no further than :data:`MAX_POLICY_BYTES`."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_POLICY_BYTES + 1)
        if len(data) > MAX_POLICY_BYTES:
            raise PolicyError([_too_large_issue(source, _file_size(path))])
        return data.decode("utf-8")
    except FileNotFoundError:
        expected = "an existing policy file"
        problem: Any = str(path.absolute())
    except UnicodeDecodeError as error:
        expected, problem = "a UTF-8 text file", str(error)
    except OSError as error:
        expected, problem = "a readable policy file", error.strerror or str(error)
    raise PolicyError([PolicyIssue(source=source, path="", value=problem, expected=expected)])


def _file_size(path: Path) -> str:
    try:
        return f"{path.stat().st_size:,} bytes"
    except OSError:
        return f"more than {MAX_POLICY_BYTES:,} bytes"


def _too_large_issue(source: str, size: str) -> PolicyIssue:
    return PolicyIssue(
        source=source,
        path="",
        value=size,
        expected=f"a policy of at most {MAX_POLICY_BYTES:,} bytes (1 MiB)",
    )


def _check_text(text: str, source: str) -> None:
    """Refuse a document over :data:`MAX_POLICY_BYTES`, or with a character YAML refuses."""
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError([_too_large_issue(source, f"{len(text):,} characters")])
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_POLICY_BYTES:
        raise PolicyError([_too_large_issue(source, f"{size:,} bytes")])
    found = _NON_PRINTABLE.search(text)
    if found is not None:
        start = found.start()
        line = text.count("\n", 0, start) + 1
        column = start - (text.rfind("\n", 0, start) + 1) + 1
        raise PolicyError(
            [
                PolicyIssue(
                    source=source,
                    path=f"line {line}, column {column}",
                    value=found.group(),
                    expected=(
                        "printable text (no NUL or other control character but tab and line "
                        f"breaks; found U+{ord(found.group()):04X})"
                    ),
                )
            ]
        )


def _parse_yaml(text: str, source: str) -> Any:
    _check_text(text, source)
    loader = _loader_class()(text)
    try:
        return _load_document(loader, source)
    except _Refused as refusal:
        issue = PolicyIssue(
            source=source,
            path=_render(refusal.path),
            value=refusal.value,
            expected=refusal.expected,
        )
        raise PolicyError([issue]) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or str(error)
        if error.context:
            since = error.context_mark
            started = f" started on line {since.line + 1}" if since is not None else ""
            problem = f"{error.context}{started}: {problem}"
        if mark is None:
            issue = PolicyIssue(source=source, path="", value=problem, expected="valid YAML")
        else:
            lines = text.splitlines()
            line = lines[mark.line].rstrip() if mark.line < len(lines) else "<end of text>"
            issue = PolicyIssue(
                source=source,
                path=f"line {mark.line + 1}, column {mark.column + 1}",
                value=_short(line),
                expected=f"valid YAML ({problem})",
            )
        raise PolicyError([issue]) from error
    except yaml.YAMLError as error:
        raise PolicyError(
            [PolicyIssue(source=source, path="", value=str(error), expected="valid YAML")]
        ) from error
    finally:
        loader.dispose()


# -- translating validation errors ---------------------------------------------------------


_PHRASES = {
    "missing": "a value (this field is required)",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "recursion_loop": "a value without recursive aliases",
    "invalid_key": "keys that are strings",
}


def _translate(error: ValidationError, data: Any, source: str) -> list[PolicyIssue]:
    issues: dict[str, PolicyIssue] = {}
    for detail in error.errors(include_url=False):
        loc = tuple(detail["loc"])
        context = detail.get("ctx") or {}
        value = context.get("value", detail["input"])
        at = tuple(context.get("at", ()))
        if detail["type"] == "extra_forbidden":
            value = loc[-1]
        elif detail["type"] == "missing":
            value = None
        path, dropped = _yaml_path((*loc, *at), data, detail["type"] == "missing")
        expected = _expected(detail, loc)
        if dropped == ["limit"] and (isinstance(value, bool) or not isinstance(value, int | float)):
            expected += ", or a mapping of limit, on_breach and warn_at"
        rendered = _render(path)
        if rendered not in issues:
            if len(issues) > _MAX_ISSUES:
                break  # enough to list: _capped says there are more
            issues[rendered] = PolicyIssue(
                source=source, path=rendered, value=_short(value), expected=expected
            )
    return list(issues.values())


def _expected(detail: ErrorDetails, loc: tuple[str | int, ...]) -> str:
    kind = detail["type"]
    if kind.startswith(_ERROR):
        return detail["msg"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        if model is None:
            return "no such key"
        return _known_fields(model, loc[-1])
    if kind == "literal_error":
        options = str((detail.get("ctx") or {}).get("expected", ""))
        return "one of " + options.replace(" or ", ", ")
    if kind in ("model_type", "model_attributes_type"):
        model = _model_at(loc)
        if model is not None:
            return "a mapping with keys among: " + ", ".join(_field_keys(model))
    if kind in _PHRASES:
        return _PHRASES[kind]
    message = detail["msg"]
    return message.removeprefix("Input should be ").removeprefix("Value error, ")


def _yaml_path(
    loc: Sequence[str | int], data: Any, missing: bool
) -> tuple[list[str | int], list[str | int]]:
    """The YAML keys and list indexes in a pydantic location, and what was dropped.

    Segments that do not exist in the document (union tags, ``[key]``, the ``limit`` of a
    bare quota number) are dropped, except the last one of a ``missing`` error.
    """
    path: list[str | int] = []
    node = data
    for index, segment in enumerate(loc):
        if isinstance(node, Mapping):
            if segment in node:
                path.append(segment)
                node = node[segment]
            elif missing and index == len(loc) - 1:
                path.append(segment)
        elif isinstance(node, list) and isinstance(segment, int) and 0 <= segment < len(node):
            path.append(segment)
            node = node[segment]
        else:
            return path, list(loc[index:])
    return path, []


def _render(path: Sequence[Any]) -> str:
    text = ""
    for segment in path:
        text = _join(text, segment)
    return text


def _join(text: str, segment: Any) -> str:
    """A rendered path with one more segment: ``.key``, ``[index]`` or ``['odd key']``."""
    if isinstance(segment, int) and not isinstance(segment, bool):
        return f"{text}[{segment}]"
    if isinstance(segment, str) and re.fullmatch(r"[^.\s\[\]\"]+", segment):
        return f"{text}.{segment}" if text else segment
    return f"{text}[{segment!r}]"


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 100 else text[:97] + "..."


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class validating the value at a pydantic location, if any."""
    current: Any = Policy
    for segment in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next(
                (f for n, f in current.model_fields.items() if segment in (n, f.alias)), None
            )
            if field is not None:
                current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _field_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items() if not f.exclude]


def _known_fields(model: type[BaseModel], key: Any) -> str:
    known = _field_keys(model)
    expected = "one of the known fields: " + ", ".join(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    return expected + (f" (did you mean {close[0]!r}?)" if close else "")


def _unknown_key_issue(
    model: type[BaseModel], key: Any, path: tuple[str | int, ...], source: str
) -> PolicyIssue:
    return PolicyIssue(
        source=source, path=_render(path), value=key, expected=_known_fields(model, key)
    )


def _top_level_issue(data: Any, source: str) -> PolicyIssue:
    return PolicyIssue(
        source=source,
        path="",
        value=_short(data),
        expected="a mapping at the top level, with keys among: " + ", ".join(_field_keys(Policy)),
    )


def _in_document_order(issues: list[PolicyIssue], data: Any) -> list[PolicyIssue]:
    """Sort issues by where their path first appears in the document.

    Only the branches leading to an issue are walked (iteratively), so that a large document
    with a few problems costs little, and recursive data ends where the paths do.
    """
    wanted: set[str] = set()
    for issue in issues:
        path = issue.path
        while path not in wanted:
            wanted.add(path)
            path = _parent(path)
    order: dict[str, int] = {}
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        node, rendered = stack.pop()
        order.setdefault(rendered, len(order))
        if isinstance(node, Mapping):
            children: list[tuple[Any, str]] = [
                (value, _join(rendered, key)) for key, value in node.items()
            ]
        elif isinstance(node, list):
            children = [(value, _join(rendered, i)) for i, value in enumerate(node)]
        else:
            continue
        stack += reversed([child for child in children if child[1] in wanted])

    def position(issue: PolicyIssue) -> int:
        path = issue.path
        while path not in order:
            path = _parent(path)
        return order[path]

    return sorted(issues, key=position)


def _parent(path: str) -> str:
    """A rendered path without its last segment (``""`` for the root and its children)."""
    shorter = re.sub(r"(\.[^.\[]*|\[[^\]]*\])$", "", path)
    return "" if shorter == path else shorter


_MAX_ISSUES = 100
"""Most problems one PolicyError lists; a last line says there are more."""


def _capped(issues: list[PolicyIssue], source: str, more: bool = False) -> list[PolicyIssue]:
    """The first :data:`_MAX_ISSUES` issues, and a last one saying if some were left out."""
    if len(issues) <= _MAX_ISSUES and not more:
        return issues
    return [
        *issues[:_MAX_ISSUES],
        PolicyIssue(
            source=source,
            path="",
            value="more problems",
            expected=f"a policy with fewer problems (only the first {_MAX_ISSUES} are listed)",
        ),
    ]


__all__ = [
    "MAX_DURATION_S",
    "MAX_NUMBER",
    "MAX_POLICY_BYTES",
    "MAX_POLICY_DEPTH",
    "MAX_POLICY_VALUES",
    "MAX_SHARDS",
    "PER_TASK_LIMITS",
    "SLOWEST_RATE",
    "AgentPolicy",
    "Defaults",
    "Estimate",
    "GlobalLimits",
    "LimitSpec",
    "LoopDetection",
    "ModelPrice",
    "OnBreach",
    "OnRefusal",
    "Policy",
    "PriorityClass",
    "PrioritySettings",
    "Quotas",
    "SharedQuotas",
    "SharedSettings",
    "TenantPolicy",
    "Throttle",
    "ToolPolicy",
    "Visibility",
]
