"""The typed results of ``verify_policy``: findings, their severity and the report."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Severity(StrEnum):
    """How much a finding matters; ``--fail-on`` compares against it."""

    ERROR = "error"
    """The policy does not do what it says: spend it claims to stop goes through."""
    WARNING = "warning"
    """A setting that has no effect, or weakens another one."""
    INFO = "info"
    """Worth knowing: a worst case that only the shared ledger stands between."""

    @property
    def rank(self) -> int:
        """A number that grows with the severity (info 0, warning 1, error 2)."""
        return _RANKS[self]

    def at_least(self, threshold: Severity) -> bool:
        """Whether this severity is ``threshold`` or worse."""
        return self.rank >= threshold.rank


_RANKS = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


class FindingKind(StrEnum):
    """What a finding is about (``docs/verification.md`` describes each)."""

    DEAD_RULE = "dead_rule"
    """A limit or rule that can never bind: a tighter one always binds first."""
    UNREACHABLE_AGENT = "unreachable_agent"
    """A child agent whose estimate no parent can carve."""
    LOOSENING_RULE = "loosening_rule"
    """A risk tier or degrade rule that loosens what it should tighten."""
    UNREACHABLE_OVERRIDE = "unreachable_override"
    """A ``hard_ceiling`` an override could raise a limit to, that a tighter limit caps."""
    UNBOUNDED_SPEND = "unbounded_spend"
    """Limits in ``alert`` mode only, with nothing in ``terminate`` behind them."""
    FLEET_EXPOSURE = "fleet_exposure"
    """Concurrency times per-task ceilings above a shared budget: only the ledger holds."""


Number = int | float
WitnessValue = int | float | str | bool


class Finding(BaseModel):
    """One problem found in a policy, with the solver's numbers that show it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FindingKind
    """What kind of problem."""
    severity: Severity
    """How much it matters."""
    path: str
    """Dotted path of the policy field concerned, as ``PolicyError`` names fields."""
    message: str
    """What is wrong, with the witness numbers in words."""
    witness: dict[str, WitnessValue] = Field(default_factory=dict)
    """The solver's concrete counterexample or witness (amounts, counts, names)."""
    related: list[str] = Field(default_factory=list)
    """Other policy fields involved (the tighter limit, the parent agent ...)."""


class VerifyReport(BaseModel):
    """What ``verify_policy`` found in one policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    """Where the policy came from (its file name, ``<text>`` or ``<dict>``)."""
    findings: list[Finding]
    """Every finding, errors first, then by field path."""
    seconds: float
    """Time the checks took, solver included."""
    solver_queries: int
    """How many SMT queries were asked."""

    def count(self, severity: Severity) -> int:
        """How many findings have exactly this severity."""
        return sum(1 for finding in self.findings if finding.severity == severity)

    def failing(self, threshold: Severity) -> list[Finding]:
        """The findings at or above ``threshold`` (those that fail a CI run)."""
        return [f for f in self.findings if f.severity.at_least(threshold)]


def ordered(findings: list[Finding]) -> list[Finding]:
    """Findings errors first, then by path and kind, without repeats."""
    unique = {(f.kind, f.path, f.message): f for f in findings}
    return sorted(unique.values(), key=lambda f: (-f.severity.rank, f.path, f.kind.value))
