"""Deprecated alias of :mod:`temporal_governor.ledger` (kept for 0.1 imports)."""

from ..ledger import (
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
