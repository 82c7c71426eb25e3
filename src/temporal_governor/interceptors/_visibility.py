"""What governed runs show in Temporal's visibility store: search attributes and memo."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

TENANT_ATTRIBUTE = SearchAttributeKey.for_keyword("GovernorTenant")
"""Search attribute: the tenant a governed run is attributed to."""
STATE_ATTRIBUTE = SearchAttributeKey.for_keyword("GovernorState")
"""Search attribute: ``running``, ``paused``, ``completed``, ``failed``, ``breached`` or
``killed``."""
MEMO_KEY = "governor"
"""Memo key of a governed run's spend summary."""

__all__ = ["MEMO_KEY", "STATE_ATTRIBUTE", "TENANT_ATTRIBUTE"]
