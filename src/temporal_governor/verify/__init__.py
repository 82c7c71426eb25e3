"""Static verification with the Z3 SMT solver (``temporal-governor verify``).

Policy checks (:func:`verify_policy`) encode a policy's limits as SMT constraints and
report findings, each with the solver's concrete witness: limits that never bind, child
agents no parent can carve, risk tiers and degrade rules that loosen, alert-only limits
with nothing behind them, and what a fleet of concurrent runs may spend against the shared
budgets. See ``docs/verification.md``.

The solver is the optional extra ``verify`` (``pip install 'temporal-governor[verify]'``);
it is imported only when a check runs, and :class:`VerifierUnavailable` says so when it is
missing.
"""

from ._findings import Finding, FindingKind, Severity, VerifyReport
from ._policy import verify_policy
from ._solver import VerifierUnavailable

# proofs of the accounting core (verify/_proofs.py) add their exports below

__all__ = [
    "Finding",
    "FindingKind",
    "Severity",
    "VerifierUnavailable",
    "VerifyReport",
    "verify_policy",
]
