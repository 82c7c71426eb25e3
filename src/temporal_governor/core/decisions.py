"""The record of one governance decision, and the sinks that receive them.

Every decision a governed run makes becomes a :class:`DecisionRecord` handed to the
interceptor's sinks: OpenTelemetry in a live worker, a collector during incident review.
Records are built from the workflow's deterministic state, so a replay rebuilds the same
records; sinks with side effects must ignore records whose ``replaying`` flag is set.

Three kinds of decision share the record (its :attr:`~DecisionRecord.category`), each
with its own typed view (:attr:`DecisionRecord.payload`):

- ``budget`` (:class:`BudgetPayload`): reserve, commit, release, refuse, warn, alert,
  overage, breach and wait; the limit, scope, observed spend and ceiling concerned;
- ``control`` (:class:`ControlPayload`): a control message accepted (``control``) or
  rejected (``control_rejected``); its signal, issuer and outcome;
- ``detector`` (:class:`DetectorPayload`): loop, anomaly, throttle and degrade; the
  detector, what it saw, and the number it judged against its threshold.

The record's JSON (what sinks, reports, evidence bundles and their readers see) is the
flat form of version 1, unchanged: control and detector records keep their issuer or
detector in ``limit`` and their outcome or message in ``scope``. Read them through
:attr:`DecisionRecord.payload`, which names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from .accounting import EventKind

Category = Literal["budget", "control", "detector"]
"""What a decision is about: a budget, a control message, or a detector's finding."""

CATEGORY_OF_KIND: dict[str, Category] = {
    "reserve": "budget",
    "commit": "budget",
    "release": "budget",
    "refuse": "budget",
    "warn": "budget",
    "alert": "budget",
    "breach": "budget",
    "overage": "budget",
    "wait": "budget",
    "control": "control",
    "control_rejected": "control",
    "loop": "detector",
    "anomaly": "detector",
    "throttle": "detector",
    "degrade": "detector",
}
"""The category of every decision kind (:data:`~temporal_governor.core.accounting.EventKind`)."""

DispatchKind = Literal["activity", "child"]
"""What a run dispatches: an activity (a tool) or a child workflow (a sub-agent)."""


@dataclass(frozen=True)
class Dispatch:
    """One dispatch of a run, as the governor follows it from interceptor to record.

    The workflow interceptor makes it when agent code asks for an activity or a child
    workflow; the run's guards, ledger and shared scopes judge it under its ``key``, and
    every decision about it is recorded with its ``kind`` and ``target``.
    """

    kind: DispatchKind
    target: str
    """The activity type (tool) or child workflow type (agent)."""
    key: str
    """Its key within the run (reservations, records), e.g. ``activity:3:call_llm``."""

    @property
    def label(self) -> str:
        """How failures name it (``BreachDetails.dispatch``), e.g. ``activity call_llm``."""
        return f"{self.kind} {self.target}"


class BudgetPayload(BaseModel):
    """What a budget decision decided: amounts, and for a limit's verdict, the limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: Literal["budget"] = "budget"
    amounts: dict[str, float] = Field(default_factory=dict)
    """Reserved, committed or released amounts per resource."""
    models: dict[str, int] = Field(default_factory=dict)
    """For commits: tokens per model name."""
    limit: str = ""
    """For warn, alert, refuse, breach, overage and wait: the limit concerned."""
    scope: str = ""
    """Whose budget that limit is, e.g. ``run planner/run-1`` or ``tenant acme``."""
    observed: float = 0.0
    """The spend the limit looked at."""
    ceiling: float = 0.0
    """The limit's ceiling."""


class ControlPayload(BaseModel):
    """A control message the run accepted or rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: Literal["control"] = "control"
    signal: str
    """The signal it came on, e.g. ``governor.kill`` (``temporal-governor``, the header
    key, for claims of the start header the run did not believe)."""
    accepted: bool
    """Whether it was applied."""
    issuer: str
    """Who sent it, as the message says."""
    outcome: str
    """What it changed, or why it was rejected."""


class DetectorPayload(BaseModel):
    """What a detector saw or decided: a loop, a spend anomaly, a throttle, a degradation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: Literal["detector"] = "detector"
    detector: str
    """The detector or rule, e.g. ``repeated_signature``, ``throttle``, ``degrade[0]``."""
    message: str
    """What it saw, e.g. ``activity call_llm held back 0.250 s``."""
    observed: float = 0.0
    """The number it judged."""
    threshold: float = 0.0
    """The threshold it judged against (0 when it has none)."""


DecisionPayload = Annotated[
    BudgetPayload | ControlPayload | DetectorPayload, Field(discriminator="category")
]
"""The typed view of a decision record, by :data:`Category`."""


class DecisionRecord(BaseModel):
    """One governance decision of one run, with where and when it was made.

    The fields are the record's JSON (version 1, flat). :attr:`category` and
    :attr:`payload` give its typed view: a control record's issuer is
    ``record.payload.issuer`` (kept in ``limit`` on the wire).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int
    """Position in the run's decision log, from 1."""
    kind: EventKind
    """What was decided."""
    event_id: int
    """History length when the decision was made: the id of the ``WorkflowTaskStarted``
    event of the workflow task that made it."""
    time: datetime
    """Workflow time of the decision."""
    workflow_id: str
    run_id: str
    agent: str
    """The run's workflow type."""
    depth: int
    """How many runs are above it (0 for the root)."""
    tenant: str
    owner: str | None = None
    dispatch: DispatchKind | Literal[""] = ""
    """Whether the decision concerns an activity or a child workflow ("" for neither)."""
    target: str = ""
    """The activity type (tool) or child workflow type (agent) dispatched."""
    key: str = ""
    """The dispatch's key within the run, e.g. ``activity:3:call_llm``."""
    amounts: dict[str, float] = Field(default_factory=dict)
    """Reserved, committed or released amounts per resource."""
    models: dict[str, int] = Field(default_factory=dict)
    """For commits: tokens per model name."""
    limit: str = ""
    """Budget: the limit concerned. Control: the issuer. Detector: the detector."""
    scope: str = ""
    """Budget: the limit's scope. Control: the outcome. Detector: what it saw."""
    observed: float = 0.0
    """Budget: the spend looked at. Detector: the number judged."""
    ceiling: float = 0.0
    """Budget: the limit's ceiling. Detector: its threshold."""

    @property
    def category(self) -> Category:
        """Whether the decision is about a budget, a control message or a detector."""
        return CATEGORY_OF_KIND.get(self.kind, "budget")

    @property
    def payload(self) -> BudgetPayload | ControlPayload | DetectorPayload:
        """The decision's typed view, its fields named for its :attr:`category`."""
        category = self.category
        if category == "control":
            return ControlPayload(
                signal=self.key,
                accepted=self.kind == "control",
                issuer=self.limit,
                outcome=self.scope,
            )
        if category == "detector":
            return DetectorPayload(
                detector=self.limit,
                message=self.scope,
                observed=self.observed,
                threshold=self.ceiling,
            )
        return BudgetPayload(
            amounts=self.amounts,
            models=self.models,
            limit=self.limit,
            scope=self.scope,
            observed=self.observed,
            ceiling=self.ceiling,
        )


RemainingMode = Literal["always", "live", "never"]
"""When a sink takes :meth:`DecisionSink.remaining` calls (its optional ``takes_remaining``)."""


def takes_remaining(sink: DecisionSink) -> RemainingMode:
    """When ``sink`` wants the remaining budget: its ``takes_remaining``, else ``always``.

    A sink may set the class attribute ``takes_remaining`` to ``"live"`` (only for
    records of a live workflow task) or ``"never"``; the governor then spares computing
    the remaining budget when no sink takes it.
    """
    mode = getattr(sink, "takes_remaining", "always")
    if mode == "live":
        return "live"
    return "never" if mode == "never" else "always"


class DecisionSink(Protocol):
    """Receives every decision of every governed run of a worker.

    A sink may also set a class attribute ``takes_remaining`` (``"always"``, the default,
    ``"live"`` or ``"never"``): when :meth:`remaining` is worth calling.
    """

    def record(self, decision: DecisionRecord, *, replaying: bool) -> None:
        """Take one decision.

        Args:
            decision: The decision.
            replaying: True while the workflow task is replaying history; a sink with side
                effects (telemetry) must do nothing then, so nothing is emitted twice.

        """
        ...

    def remaining(
        self, decision: DecisionRecord, remaining: dict[str, float], *, replaying: bool
    ) -> None:
        """Take the run's remaining budget per resource after a decision.

        Args:
            decision: The decision after which the budget was measured.
            remaining: Headroom per resource under the tightest terminate limit.
            replaying: As for :meth:`record`.

        """
        ...


__all__ = [
    "CATEGORY_OF_KIND",
    "BudgetPayload",
    "Category",
    "ControlPayload",
    "DecisionPayload",
    "DecisionRecord",
    "DecisionSink",
    "DetectorPayload",
    "Dispatch",
    "DispatchKind",
    "RemainingMode",
    "takes_remaining",
]
