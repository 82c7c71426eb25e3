"""The shared ledger: one workflow per fleet that holds scopes shared across runs.

Register nothing by hand: :class:`~temporal_governor.GovernorPlugin` adds the ledger
workflow and its activity to every worker. The names here are for operators and tests that
query or drive the ledger directly.
"""

from ._activity import LEDGER_ACTIVITY, LedgerCall, ledger_call
from ._workflow import (
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
    "LEDGER_ACTIVITY",
    "LEDGER_WORKFLOW",
    "GovernorLedger",
    "LedgerCall",
    "LedgerRefusal",
    "LedgerState",
    "ReleaseRunRequest",
    "ReserveRequest",
    "ReserveResult",
    "SettleRequest",
    "SettleResult",
    "ledger_call",
]
