"""What the glue modules see of each other: small protocols instead of an import circle.

``GovernedRun`` (``_run.py``) owns a run's guard (``_guard.py``), shared budget
(``_shared.py``) and control plane (``_control.py``); those need a few things of the run
back. They depend on the protocols here, never on ``_run.py`` itself, so the modules
import in one direction only (``tests/test_import_graph.py`` checks it).
"""

from __future__ import annotations

from typing import Any, Protocol

import temporalio.workflow

from ..context import BudgetContext
from ..core.accounting import Refusal, RunLedger
from ..errors import BreachDetails, BudgetExceeded, ChainLink
from ..policy import Policy


class ControlPort(Protocol):
    """What a run's other parts use of its control plane (``_control.ControlPlane``)."""

    def apply_stored(self, stored: dict[str, Any]) -> None:
        """Apply fleet-wide kills and resumes the ledger keeps for the run's scopes."""
        ...


class RunPort(Protocol):
    """What every part of a run (guard, shared budget) uses of the run it belongs to."""

    @property
    def policy(self) -> Policy:
        """The policy the run is governed by."""
        ...

    @property
    def info(self) -> temporalio.workflow.Info:
        """The run's workflow info (its ids and start time)."""
        ...

    @property
    def agent(self) -> str:
        """The run's workflow type."""
        ...

    @property
    def context(self) -> BudgetContext:
        """The run's budget context (its chain, attribution and carried guard state)."""
        ...

    @property
    def breach(self) -> BudgetExceeded | None:
        """What halted the run, if it is halted."""
        ...

    def details(self, **fields: Any) -> BreachDetails:
        """Breach details of this run: ``fields`` plus its chain, tenant and spend so far."""
        ...

    def refused(self, refusal: Refusal, dispatch: str) -> BreachDetails:
        """Breach details of a refusal of ``dispatch``."""
        ...

    def stop(self, error: BudgetExceeded, *, refused: str | None = None) -> BudgetExceeded:
        """Halt the run with ``error``, the one way to halt it; the error to raise."""
        ...


class GuardHost(RunPort, Protocol):
    """What a run's guard (``_guard.RunGuard``) uses of the run it guards."""

    @property
    def scope(self) -> str:
        """The run's own budget scope, e.g. ``run planner/wf-1``."""
        ...

    @property
    def link(self) -> ChainLink:
        """The run's own link of its attribution chain."""
        ...

    @property
    def ledger(self) -> RunLedger:
        """The run's budget ledger: the guard reads its spend and logs its decisions."""
        ...

    def log_events(self) -> None:
        """Hand the decisions logged since the last call to the sinks and the log."""
        ...


class SharedHost(RunPort, Protocol):
    """What a run's shared budget (``_shared.py``) uses of the run it reserves for."""

    @property
    def control(self) -> ControlPort | None:
        """The run's control plane, once installed: it applies fleet kills the ledger kept."""
        ...

    def raise_if_halted(self, dispatch: str | None = None) -> None:
        """Raise the run's halt again if it is halted."""
        ...

    def release(self, key: str) -> None:
        """Release the run's own reservation of a dispatch that never started."""
        ...

    def note_wait(self, key: str, limit: str, scope: str, observed: float, ceiling: float) -> None:
        """Record that a dispatch waits for a shared scope."""
        ...
