"""Workflows of the governor itself: the ledger of scopes shared across runs."""

from ._ledger import (
    LEDGER_WORKFLOW,
    GovernorLedger,
    LedgerRefusal,
    LedgerState,
    ReleaseRunRequest,
    ReserveRequest,
    ReserveResult,
    SettleRequest,
    SettleResult,
)

__all__ = [
    "LEDGER_WORKFLOW",
    "GovernorLedger",
    "LedgerRefusal",
    "LedgerState",
    "ReleaseRunRequest",
    "ReserveRequest",
    "ReserveResult",
    "SettleRequest",
    "SettleResult",
]
