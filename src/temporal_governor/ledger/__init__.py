"""The shared ledger: one workflow per fleet that holds scopes shared across runs.

Register nothing by hand: :class:`~temporal_governor.GovernorPlugin` adds the ledger
workflow and its activity to every worker. The names here are for operators and tests that
query or drive the ledger directly (:func:`call_ledger`: a call through the same per-process
queue the activity uses, which coalesces calls that ask for it into ``batch`` updates).
"""

from ._activity import LedgerCall, call_ledger, ledger_call
from ._coalescer import CoalescingStats, coalescing_stats
from ._workflow import (
    LEDGER_ACTIVITY,
    LEDGER_WORKFLOW,
    UPDATES,
    BatchReply,
    BatchRequest,
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
    "BatchReply",
    "BatchRequest",
    "CoalescingStats",
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
    "call_ledger",
    "coalescing_stats",
    "ledger_call",
]
