"""The lease simulation's scenario (what is simulated) and result (what it showed)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..policy import SharedSettings

RESOURCE = "tokens"
"""The one resource the simulated limits are on."""

GLOBAL = "global"
"""The fleet-wide scope."""

STRANDED_GOAL = 0.01
"""Issue #13's goal: budget refused early because it sat in other holders' leases stays
under 1 % of the scope's ceiling."""

ABSOLUTE_SLACK = 1e-6
"""Float slack (tokens) of every check, plus :data:`RELATIVE_SLACK` of the amount: grants
are fair shares, so amounts are not whole numbers and long sums carry rounding."""

RELATIVE_SLACK = 1e-9
"""See :data:`ABSOLUTE_SLACK`."""

_SETTINGS = SharedSettings()


def slack(amount: float) -> float:
    """How far a float sum of about ``amount`` may stray from the exact sum."""
    return ABSOLUTE_SLACK + RELATIVE_SLACK * abs(amount)


class Scenario(BaseModel):
    """What is simulated; the defaults are issue #13's fleet and the policy's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenants: int = Field(default=10_000, ge=1, le=1_000_000)
    """Tenants, each with its own token ceiling."""
    dispatches: int = Field(default=1_000_000, ge=1, le=100_000_000)
    """Dispatches attempted in all (granted or refused)."""
    runs_at_once: int = Field(default=100, ge=1, le=1_000)
    """Runs alive at once; each run that ends is replaced by a new one."""
    seed: int = 13
    """Seed of the random generator: the same scenario gives the same figures."""
    tenant_skew: float = Field(default=1.0, ge=0, le=4)
    """Zipf exponent of the tenants' share of runs (0: all alike)."""
    estimate_min: float = Field(default=200.0, gt=0, le=1e9)
    """Smallest estimate (tokens) of a dispatch; estimates are uniform in min .. max."""
    estimate_max: float = Field(default=2_000.0, gt=0, le=1e9)
    """Largest estimate (tokens) of a dispatch."""
    actual_min_fraction: float = Field(default=0.3, ge=0, le=1)
    """A dispatch's actual is uniform in this fraction of its estimate .. the estimate."""
    dispatches_per_run_max: int = Field(default=1_000, ge=1)
    """A run makes 1 .. this many dispatches (log-uniform)."""
    parallel_max: int = Field(default=4, ge=1, le=64)
    """A run makes 1 .. this many dispatches at a time (uniform)."""
    duration_mean_s: float = Field(default=1.0, gt=0)
    """Mean duration of a dispatch (exponential), simulated seconds."""
    tenant_quota_min: float = Field(default=0.5, gt=0)
    """A tenant's ceiling is its expected demand (what its share of the dispatches would
    spend) times a factor uniform in ``tenant_quota_min .. tenant_quota_max`` (and at
    least one largest estimate)."""
    tenant_quota_max: float = Field(default=3.0, gt=0)
    """See ``tenant_quota_min``."""
    global_share: float = Field(default=1.0, gt=0)
    """The global ceiling as a fraction of what the tenants' ceilings let them spend."""
    lease_dispatches: int = Field(default=_SETTINGS.lease_dispatches, ge=1)
    """``shared.lease_dispatches``: a lease asks for this many dispatches' worth."""
    lease_max_share: float = Field(default=_SETTINGS.lease_max_share, gt=0, le=1)
    """``shared.lease_max_share``: the largest fraction of what is left one lease takes."""
    reservation_ttl: float = Field(default=_SETTINGS.reservation_ttl, gt=0)
    """``shared.reservation_ttl``: leases age out at half of it; runs renew at half of it."""
    continue_as_new_after: int = Field(default=20_000, ge=1)
    """The ledger carries its packed state into a new book after this many updates (the
    policy's default is 2,000; each carry costs about 0.15 s of CPU with 10,000 tenants'
    counters and changes no amount, so the simulation carries less often)."""

    @model_validator(mode="after")
    def _ranges(self) -> Scenario:
        if self.estimate_max < self.estimate_min:
            raise ValueError(
                f"estimate_max ({self.estimate_max:g}) must be at least "
                f"estimate_min ({self.estimate_min:g})"
            )
        if self.tenant_quota_max < self.tenant_quota_min:
            raise ValueError(
                f"tenant_quota_max ({self.tenant_quota_max:g}) must be at least "
                f"tenant_quota_min ({self.tenant_quota_min:g})"
            )
        return self


@dataclass
class ScopeFigures:
    """What the refusals of one kind of scope (the global one, or the tenants') showed."""

    refusals: int = 0
    """Dispatches this kind of scope refused."""
    early: int = 0
    """Refusals of a dispatch that would have fitted but for the budget idle in leases
    (``ceiling - committed - reserved + stranded in every lease >= estimate``)."""
    scopes_refusing: int = 0
    """Scopes of this kind that refused at least once."""
    max_stranded: float = 0.0
    """Largest budget idle in other runs' leases at a refusal, as a fraction of the
    refusing scope's ceiling."""
    max_stranded_scope: str = ""
    """The scope where it happened."""
    max_stranded_ceiling: float = 0.0
    """That scope's ceiling."""
    max_stranded_holders: int = 0
    """Other runs holding a lease on that scope at that refusal."""


@dataclass
class SimulationResult:
    """The figures of one simulation; :meth:`problems` lists every broken invariant."""

    scenario: Scenario
    """What was simulated."""
    global_ceiling: float = 0.0
    """The fleet-wide ceiling (tokens)."""
    runs: int = 0
    """Runs started."""
    runs_halted: int = 0
    """Runs halted by a refusal."""
    dispatches_run: int = 0
    """Dispatches granted (reserved against a lease) and run to the end."""
    dispatches_cancelled: int = 0
    """Dispatches of halted runs cancelled before they reported (charged their estimate)."""
    leases: int = 0
    """Leases granted."""
    leases_aged: int = 0
    """Leases retired because they aged past half the TTL."""
    ledger_updates: int = 0
    """Ledger updates: reserve, settle, release_run, extend."""
    continued_as_new: int = 0
    """Times the ledger carried its packed state into a new book."""
    checks: int = 0
    """Ceiling checks made (one per scope per ledger step, and every counter at the end)."""
    max_excess: float = -math.inf
    """Largest ``committed + reserved - ceiling`` seen by any check (<= 0: never passed)."""
    ceilings_passed: int = 0
    """Checks that found ``committed + reserved`` above the ceiling (beyond its slack)."""
    violations: list[str] = field(default_factory=list)
    """The first few of them."""
    leases_overdrawn: int = 0
    """Leases whose dispatches used more than the ledger reserved for the lease."""
    capacity_refusals: int = 0
    """Refusals for the ledger's own size caps (the scenario is too big for one ledger)."""
    global_figures: ScopeFigures = field(default_factory=ScopeFigures)
    """Refusals by the global scope."""
    tenant_figures: ScopeFigures = field(default_factory=ScopeFigures)
    """Refusals by tenant scopes."""
    global_left_at_end: float = 0.0
    """``ceiling - committed - largest estimate`` of the global scope at the end, as a
    fraction of its ceiling (0 when negative): budget more than one dispatch's worth that
    the fleet was refused and never spent. (A tenant's remainder at the end says little:
    its later runs may have been refused by the global scope, or never come.)"""
    committed: float = 0.0
    """What the global scope committed at the end."""
    charged: float = 0.0
    """What the dispatches were charged: reported actuals and cancelled estimates."""
    max_exactness_error: float = 0.0
    """Largest ``|committed - charged|`` over every scope at the end."""
    inexact_scopes: int = 0
    """Scopes whose committed amount differs from their charges beyond the float slack."""
    totals_error: float = 0.0
    """``|granted - committed - released|`` of the ledger's totals at the end."""
    open_at_end: int = 0
    """Reservations open in the ledger, leases open in runs and counters still reserved,
    at the end (0: nothing stranded)."""
    expired: int = 0
    """Reservations the ledger expired, charged in full (0: every live run renewed)."""
    stranded_drift: float = 0.0
    """Largest gap between the running and a recounted global stranded amount."""

    def problems(self) -> list[str]:
        """Every invariant the simulation broke (empty: the protocol held)."""
        found = []
        if self.ceilings_passed:
            found.append(
                f"{self.ceilings_passed} checks found a ceiling passed: "
                + "; ".join(self.violations)
            )
        if self.leases_overdrawn:
            found.append(f"{self.leases_overdrawn} leases used more than the ledger reserved")
        if self.capacity_refusals:
            found.append(f"{self.capacity_refusals} refusals for the ledger's size caps")
        if self.inexact_scopes:
            found.append(
                f"{self.inexact_scopes} scopes committed other than their charges "
                f"(by up to {self.max_exactness_error:g})"
            )
        if self.totals_error > slack(self.committed):
            found.append(f"committed + released differs from granted by {self.totals_error:g}")
        if self.open_at_end:
            found.append(f"{self.open_at_end} reservations, leases or counters left open")
        if self.expired:
            found.append(f"{self.expired} reservations expired (charged in full)")
        if self.stranded_drift > slack(self.global_ceiling):
            found.append(f"the running stranded amount drifted by {self.stranded_drift:g}")
        return found

    def misses(self) -> list[str]:
        """Goals not met: stranded budget at a refusal of :data:`STRANDED_GOAL` or more."""
        return [
            f"{name}: {figures.max_stranded:.3%} of the ceiling stranded at a refusal"
            for name, figures in (("global", self.global_figures), ("tenant", self.tenant_figures))
            if figures.max_stranded >= STRANDED_GOAL
        ]

    def lines(self) -> list[str]:
        """The figures as the script prints them."""
        s = self.scenario
        refused = self.global_figures.refusals + self.tenant_figures.refusals
        lines = [
            f"scenario: {s.tenants:,} tenants, {s.dispatches:,} dispatches attempted, "
            f"{s.runs_at_once} runs at once (1..{s.parallel_max} dispatches each at a time), "
            f"seed {s.seed}",
            f"  estimates {s.estimate_min:g}..{s.estimate_max:g} tokens, actuals "
            f"{s.actual_min_fraction:g}..1 x the estimate; leases of {s.lease_dispatches} "
            f"dispatches, at most {s.lease_max_share:g} of what is left",
            f"  global ceiling {self.global_ceiling:,.0f} tokens; tenant ceilings "
            f"{s.tenant_quota_min:g}..{s.tenant_quota_max:g} x expected demand (Zipf "
            f"{s.tenant_skew:g})",
            f"runs: {self.runs:,} started, {self.runs_halted:,} halted by a refusal",
            f"dispatches: {self.dispatches_run:,} run, {refused:,} refused, "
            f"{self.dispatches_cancelled:,} cancelled by a halt",
            f"ledger: {self.leases:,} leases ({self.leases_aged:,} renewed for age), "
            f"{self.ledger_updates:,} updates, continued as new {self.continued_as_new} times",
            f"ceiling never passed: {self.checks:,} checks, largest committed + reserved - "
            f"ceiling = {self.max_excess:.3g} tokens; leases used more than reserved: "
            f"{self.leases_overdrawn}",
        ]
        for name, figures in (("global", self.global_figures), ("tenant", self.tenant_figures)):
            where = ""
            if figures.max_stranded_scope:
                where = (
                    f" ({figures.max_stranded_scope}, ceiling {figures.max_stranded_ceiling:,.0f}, "
                    f"{figures.max_stranded_holders} other holders)"
                )
            lines += [
                f"{name} refusals: {figures.refusals:,} by {figures.scopes_refusing:,} "
                f"scope(s), {figures.early:,} early (would have fitted but for leases)",
                f"  stranded in other holders' leases at a refusal: max "
                f"{figures.max_stranded:.4%} of the ceiling{where}",
            ]
            if figures is self.global_figures:
                lines.append(
                    f"  left uncommitted at the end beyond one dispatch: "
                    f"{self.global_left_at_end:.4%} of the ceiling"
                )
        lines.append(
            f"exactness: committed {self.committed:,.1f} = charged {self.charged:,.1f}; "
            f"granted - committed - released = {self.totals_error:.3g}; "
            f"open at the end: {self.open_at_end}; expired: {self.expired}"
        )
        problems, misses = self.problems(), self.misses()
        if problems:
            lines.append("FAILED: " + "; ".join(problems))
        if misses:
            lines.append(f"GOAL MISSED (< {STRANDED_GOAL:.0%}): " + "; ".join(misses))
        if not problems and not misses:
            lines.append(f"OK: no ceiling passed, exact, stranded < {STRANDED_GOAL:.0%}")
        return lines


__all__ = [
    "GLOBAL",
    "RESOURCE",
    "STRANDED_GOAL",
    "Scenario",
    "ScopeFigures",
    "SimulationResult",
    "slack",
]
