"""The shared ledger: one workflow per fleet that holds scopes shared across runs.

Register nothing by hand: :class:`~temporal_governor.GovernorPlugin` adds the ledger
workflow and its activity to every worker. The names here are for operators and tests that
query or drive the ledger directly.
"""

from ._activity import LEDGER_ACTIVITY, LedgerCall, ledger_call
from ._workflow import (
    LEDGER_WORKFLOW,
    UPDATES,
    GovernorLedger,
    LedgerRefusal,
    LedgerState,
    LedgerUpdate,
    MalformedLedgerReply,
    ReleaseRunRequest,
    ReserveRequest,
    ReserveResult,
    SettleRequest,
    SettleResult,
)

__all__ = [
    "LEDGER_ACTIVITY",
    "LEDGER_WORKFLOW",
    "UPDATES",
    "GovernorLedger",
    "LedgerCall",
    "LedgerRefusal",
    "LedgerState",
    "LedgerUpdate",
    "MalformedLedgerReply",
    "ReleaseRunRequest",
    "ReserveRequest",
    "ReserveResult",
    "SettleRequest",
    "SettleResult",
    "ledger_call",
]
