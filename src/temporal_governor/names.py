"""Names a governed run shows outside: its budget query, search attributes and memo."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

TENANT_ATTRIBUTE = SearchAttributeKey.for_keyword("GovernorTenant")
"""Search attribute: the tenant a governed run is attributed to."""
STATE_ATTRIBUTE = SearchAttributeKey.for_keyword("GovernorState")
"""Search attribute: ``running``, ``paused``, ``completed``, ``failed``, ``breached`` or
``killed``."""
BUDGET_QUERY = "governor.budget"
"""Name of the query every governed workflow answers with a budget snapshot."""
MEMO_KEY = "governor"
"""Memo key of a governed run's spend summary."""

__all__ = ["BUDGET_QUERY", "MEMO_KEY", "STATE_ATTRIBUTE", "TENANT_ATTRIBUTE"]
