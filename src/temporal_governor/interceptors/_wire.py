"""How actual usage rides on Temporal's own result and failure paths.

Success: the usage is a metadata entry of the result payload, which converters ignore.
Failure: the usage is a trailing detail (a marker object) of the ``ApplicationError``,
removed again on the workflow side before agent code sees the error. Between retry
attempts: the same marker is the last heartbeat detail, hidden from activity code.
All three are recorded in the workflow's history, so replay sees the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.exceptions import ApplicationError, TimeoutError

from ..usage import Usage

USAGE_METADATA_KEY = "temporal-governor-usage"
"""Payload metadata key carrying the JSON :class:`Usage` of an activity or child run."""

USAGE_MARKER_KEY = "__temporal_governor_usage__"
"""Key of the marker object appended to failure and heartbeat details."""


def attach_usage(payload: Payload, usage: Usage) -> Payload:
    """A copy of ``payload`` with the usage in its metadata."""
    tagged = Payload()
    tagged.CopyFrom(payload)
    tagged.metadata[USAGE_METADATA_KEY] = usage.model_dump_json(exclude_defaults=True).encode()
    return tagged


def take_usage(payload: Payload) -> Usage | None:
    """Remove and return the usage carried in a payload's metadata, if any."""
    raw = payload.metadata.get(USAGE_METADATA_KEY)
    if raw is None:
        return None
    del payload.metadata[USAGE_METADATA_KEY]
    try:
        return Usage.model_validate_json(raw)
    except ValueError:
        return None


def usage_marker(usage: Usage) -> dict[str, Any]:
    """The marker object that carries usage as a failure or heartbeat detail."""
    return {USAGE_MARKER_KEY: usage.model_dump(mode="json", exclude_defaults=True)}


def split_marker(details: Sequence[Any]) -> tuple[Usage | None, tuple[Any, ...]]:
    """Separate a trailing usage marker from other details."""
    items = tuple(details)
    if items and isinstance(items[-1], dict) and USAGE_MARKER_KEY in items[-1]:
        try:
            return Usage.model_validate(items[-1][USAGE_MARKER_KEY]), items[:-1]
        except ValueError:
            return None, items[:-1]
    return None, items


def take_failure_usage(error: BaseException | None) -> Usage | None:
    """Find, remove and return the usage marker in a failure's cause.

    Looks at the ``ApplicationError`` details or the ``TimeoutError`` last heartbeat
    details of ``error`` (the cause of an ``ActivityError`` or ``ChildWorkflowError``).
    """
    if isinstance(error, ApplicationError):
        usage, rest = split_marker(error.details)
        if usage is not None:
            error._details = rest  # the SDK stores details here; agent code must not see ours
        return usage
    if isinstance(error, TimeoutError):
        usage, rest = split_marker(error.last_heartbeat_details)
        if usage is not None:
            error._last_heartbeat_details = rest
        return usage
    return None
