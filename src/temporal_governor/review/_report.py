"""The incident report's schema: what ``temporal-governor replay`` rebuilds from history.

An :class:`IncidentReport` is plain data (pydantic, JSON-serialisable); it is produced by
:func:`temporal_governor.review.review` and rendered by :mod:`temporal_governor.review`.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from ..core.decisions import DecisionRecord
from ..errors import BreachDetails

REPORT_SCHEMA_VERSION = 1
"""Bumped whenever a field of :class:`IncidentReport` changes meaning or disappears."""


class RunNode(BaseModel):
    """One workflow run of the reviewed tree."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: str
    run_id: str
    agent: str
    """Workflow type."""
    parent_workflow_id: str | None = None
    parent_run_id: str | None = None
    depth: int = 0
    tenant: str = "default"
    owner: str | None = None
    status: str
    """How the run ended: ``completed``, ``failed``, ``breached``, ``cancelled``,
    ``terminated``, ``timed_out``, ``continued_as_new`` or ``running``."""
    spend: dict[str, float] = Field(default_factory=dict)
    """Committed spend of the run's whole subtree, per resource."""
    own_spend: dict[str, float] = Field(default_factory=dict)
    """Spend of the run's own activities, per resource."""
    history_events: int = 0
    replay_error: str | None = None
    """Why replay failed (e.g. non-determinism after a code change), if it did."""


class SpendRow(BaseModel):
    """Spend of one group (an agent, a tool, a tenant, a depth, or an agent / tool pair)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str
    tokens: float = 0.0
    cost_usd: float = 0.0
    tool_calls: float = 0.0
    dispatches: int = 0


class SpendPoint(BaseModel):
    """Cumulative spend of one resource at one workflow time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: datetime
    cumulative: float
    workflow_id: str = ""
    target: str = ""
    """The tool whose commit moved the curve."""


class SpendSeries(BaseModel):
    """Cumulative spend of a resource over the tree against the ceiling that governed it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resource: str
    ceiling: float | None = None
    limit: str = ""
    scope: str = ""
    points: list[SpendPoint] = Field(default_factory=list)


class CausalChain(BaseModel):
    """What led to one breach: the limit, what consumed its budget, what came just before."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    breach: BreachDetails
    decision: DecisionRecord
    """The ``breach`` decision itself (where and when)."""
    consumers: list[SpendRow] = Field(default_factory=list)
    """Commits that charged the exceeded budget, grouped by ``agent / tool``, largest first."""
    contributing: list[DecisionRecord] = Field(default_factory=list)
    """Those commits in order."""
    last_decisions: list[DecisionRecord] = Field(default_factory=list)
    """The decisions of the tree just before the breach, oldest first."""


class IncidentReport(BaseModel):
    """Everything the governor decided in one workflow tree, rebuilt by replay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = REPORT_SCHEMA_VERSION
    root_workflow_id: str
    root_run_id: str
    source: str
    """``server ADDRESS/NAMESPACE`` or ``files``."""
    runs: list[RunNode]
    """Every run of the tree, parents before children."""
    decisions: list[DecisionRecord]
    """Every decision of every run, in workflow-time order."""
    breaches: list[CausalChain] = Field(default_factory=list)
    spend_by_agent: list[SpendRow] = Field(default_factory=list)
    spend_by_tool: list[SpendRow] = Field(default_factory=list)
    spend_by_tenant: list[SpendRow] = Field(default_factory=list)
    spend_by_depth: list[SpendRow] = Field(default_factory=list)
    series: SpendSeries | None = None
    """Cumulative spend of the breached resource (tokens when nothing breached)."""
    nondeterminism: list[str] = Field(default_factory=list)
    """Replay failures, one line per run: the workflow code changed since the run."""
