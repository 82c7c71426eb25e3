"""Deprecated alias of :mod:`temporal_governor.ledger` (kept for 0.1 imports)."""

from ..ledger import LEDGER_ACTIVITY, LedgerCall, ledger_call

__all__ = ["LEDGER_ACTIVITY", "LedgerCall", "ledger_call"]
