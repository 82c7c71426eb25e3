"""``verify_policy``: every policy check, run with one solver, into one report."""

from __future__ import annotations

import time

from ..policy import Policy
from ._agents import unreachable_findings
from ._dead import dead_and_override_findings
from ._exposure import fleet_findings, unbounded_findings
from ._findings import VerifyReport, ordered
from ._limits import bounds_of
from ._rules import degrade_findings, tier_findings
from ._solver import Smt


def verify_policy(policy: Policy) -> VerifyReport:
    """Check a policy's limits with the Z3 solver; each finding carries a witness.

    The checks: limits that never bind (dead rules) and ``hard_ceiling`` headroom no
    override can use, child agents no parent can carve, risk tiers and degrade rules that
    loosen instead of tightening, alert-only limits with nothing in ``terminate`` behind
    them (unbounded spend), and concurrent runs at their per-task ceilings against the
    shared budgets per window (fleet exposure). ``docs/verification.md`` explains each.

    Args:
        policy: A loaded policy (``Policy.from_yaml``).

    Returns:
        The findings, errors first, with the time taken and the number of solver queries.

    Raises:
        VerifierUnavailable: The ``z3-solver`` package (extra ``verify``) is missing.

    """
    started = time.perf_counter()
    smt = Smt()
    bounds = bounds_of(policy)
    findings = [
        *dead_and_override_findings(policy, bounds, smt),
        *unreachable_findings(policy, bounds, smt),
        *tier_findings(policy, bounds, smt),
        *degrade_findings(policy, smt),
        *unbounded_findings(policy, bounds, smt),
        *fleet_findings(policy, bounds, smt),
    ]
    return VerifyReport(
        source=policy.source,
        findings=ordered(findings),
        seconds=time.perf_counter() - started,
        solver_queries=smt.queries,
    )
