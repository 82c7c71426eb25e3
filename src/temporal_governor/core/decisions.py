"""The record of one governance decision, and the sinks that receive them.

Every decision a governed run makes (reserve, commit, release, refuse, warn, alert,
overage, breach) becomes a :class:`DecisionRecord` handed to the interceptor's sinks:
OpenTelemetry in a live worker, a collector during incident review. Records are built
from the workflow's deterministic state, so a replay rebuilds the same records; sinks
with side effects must ignore records whose ``replaying`` flag is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from .accounting import EventKind

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


class DecisionRecord(BaseModel):
    """One governance decision of one run, with where and when it was made."""

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
    scope: str = ""
    observed: float = 0.0
    ceiling: float = 0.0


class DecisionSink(Protocol):
    """Receives every decision of every governed run of a worker."""

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
