"""Activities of the governor itself: what the ledger needs outside workflow code."""

from ._ledger import LEDGER_ACTIVITY, LedgerCall, ledger_call

__all__ = ["LEDGER_ACTIVITY", "LedgerCall", "ledger_call"]
