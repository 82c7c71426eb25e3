"""Static verification with the Z3 SMT solver (``temporal-governor verify``).

Policy checks (:func:`verify_policy`) encode a policy's limits as SMT constraints and
report findings, each with the solver's concrete witness: limits that never bind, child
agents no parent can carve, risk tiers and degrade rules that loosen, alert-only limits
with nothing behind them, and what a fleet of concurrent runs may spend against the shared
budgets. See ``docs/verification.md``.

The solver is the optional extra ``verify`` (``pip install 'temporal-governor[verify]'``);
it is imported only when a check runs, and :class:`VerifierUnavailable` says so when it is
missing.

Tightening from incidents (:func:`suggest_from_reports`, ``verify --suggest``) finds the tightest
limits under which replayed normal runs pass and an incident halts at its earliest dispatch.
"""

from ._findings import Finding, FindingKind, Severity, VerifyReport
from ._policy import verify_policy
from ._solver import VerifierUnavailable
from ._suggest import Dimension, DispatchPoint, RunTrace, Suggestion, TreeTrace, suggest_limits
from ._traces import suggest_from_reports

# proofs of the accounting core (verify/_proofs.py) add their exports below

__all__ = [
    "Dimension",
    "DispatchPoint",
    "Finding",
    "FindingKind",
    "RunTrace",
    "Severity",
    "Suggestion",
    "TreeTrace",
    "VerifierUnavailable",
    "VerifyReport",
    "suggest_from_reports",
    "suggest_limits",
    "verify_policy",
]
