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

Bounded proofs of the accounting (:func:`prove_accounting`, ``temporal-governor prove``)
check the reserve/commit/release, carving and lease rules the runtime itself calls, for
every interleaving of ``k`` dispatches.
"""

from ._findings import Finding, FindingKind, Severity, VerifyReport
from ._policy import verify_policy
from ._proofs import (
    MAX_PROOF_K,
    PROOF_TIMEOUT_S,
    Counterexample,
    ProofResult,
    Step,
    prove_accounting,
)
from ._solver import VerifierUnavailable
from ._suggest import Dimension, DispatchPoint, RunTrace, Suggestion, TreeTrace, suggest_limits
from ._traces import suggest_from_reports

__all__ = [
    "MAX_PROOF_K",
    "PROOF_TIMEOUT_S",
    "Counterexample",
    "Dimension",
    "DispatchPoint",
    "Finding",
    "FindingKind",
    "ProofResult",
    "RunTrace",
    "Severity",
    "Step",
    "Suggestion",
    "TreeTrace",
    "VerifierUnavailable",
    "VerifyReport",
    "prove_accounting",
    "suggest_from_reports",
    "suggest_limits",
    "verify_policy",
]
