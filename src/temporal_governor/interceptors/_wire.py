"""How actual usage rides on Temporal's own result and failure paths.

Success: the usage is a metadata entry of the result payload, which converters ignore.
Failure: the usage is a trailing detail (a marker object) of the ``ApplicationError``,
removed again on the workflow side before agent code sees the error. Between retry
attempts: the same marker is the last heartbeat detail, hidden from activity code.
All three are recorded in the workflow's history, so replay sees the same numbers.

Whatever arrives this way is checked before it counts (:class:`Usage` refuses NaN,
infinities, negatives and absurd amounts, and a carried usage is at most
:data:`MAX_USAGE_BYTES`): anyone who can complete an activity task, and any activity or
child workflow code, can put a marker there. Refused usage is never counted as negative
spend; it is read as unknown (``None``), which the workflow charges as it charges any
dispatch whose usage it does not know (a child its whole reservation).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import temporalio.workflow
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.exceptions import ApplicationError, TimeoutError

from ..errors import validation_problems
from ..usage import Usage

USAGE_METADATA_KEY = "temporal-governor-usage"
"""Payload metadata key carrying the JSON :class:`Usage` of an activity or child run."""

USAGE_MARKER_KEY = "__temporal_governor_usage__"
"""Key of the marker object appended to failure and heartbeat details."""

MAX_USAGE_BYTES = 64 * 1024
"""The largest usage (as JSON) that is read from a payload's metadata; larger is refused."""

_logger = logging.getLogger(__name__)


def attach_usage(payload: Payload, usage: Usage) -> Payload:
    """A copy of ``payload`` with the usage in its metadata."""
    tagged = Payload()
    tagged.CopyFrom(payload)
    tagged.metadata[USAGE_METADATA_KEY] = usage.model_dump_json(exclude_defaults=True).encode()
    return tagged


def read_usage(data: bytes | Any, where: str) -> tuple[Usage | None, str | None]:
    """Check usage that arrived over the wire (JSON bytes, or a marker's decoded object).

    Args:
        data: The usage as JSON bytes (payload metadata) or as decoded data (a marker).
        where: Where it was found, for the message (``"on a result"``).

    Returns:
        ``(usage, None)`` when it may count, else ``(None, why it was refused)``.

    """
    try:
        if isinstance(data, bytes):
            if len(data) > MAX_USAGE_BYTES:
                return None, f"usage {where} refused: {len(data)} bytes > {MAX_USAGE_BYTES}"
            return Usage.model_validate_json(data), None
        return Usage.model_validate(data), None
    except ValidationError as error:
        return None, f"usage {where} refused: {validation_problems(error, 'usage')[:500]}"
    except (ValueError, TypeError, RecursionError) as error:
        return None, f"usage {where} refused: {error}"[:600]


def _refused(problem: str | None) -> None:
    """Say that usage was refused (the workflow's logger in workflow code, else the module's)."""
    if problem is None:
        return
    if temporalio.workflow.in_workflow():
        temporalio.workflow.logger.warning("governor: %s; counted as unknown", problem)
    else:
        _logger.warning("governor: %s; counted as unknown", problem)


def take_usage(payload: Payload) -> Usage | None:
    """Remove and return the usage carried in a payload's metadata, if any and valid.

    Usage that is there but refused (see :func:`read_usage`) is removed, logged, and
    returned as ``None``: unknown, never negative.
    """
    raw = payload.metadata.get(USAGE_METADATA_KEY)
    if raw is None:
        return None
    del payload.metadata[USAGE_METADATA_KEY]
    usage, problem = read_usage(raw, "on a result")
    _refused(problem)
    return usage


def usage_marker(usage: Usage) -> dict[str, Any]:
    """The marker object that carries usage as a failure or heartbeat detail."""
    return {USAGE_MARKER_KEY: usage.model_dump(mode="json", exclude_defaults=True)}


def read_marker(details: Sequence[Any]) -> tuple[Usage | None, tuple[Any, ...], str | None]:
    """Separate a trailing usage marker from other details, and check it.

    Returns:
        ``(usage, the other details, None)``; ``usage`` is ``None`` when there is no
        marker, and also when there is one whose usage is refused (the third item then
        says why).

    """
    items = tuple(details)
    if items and isinstance(items[-1], dict) and USAGE_MARKER_KEY in items[-1]:
        usage, problem = read_usage(items[-1][USAGE_MARKER_KEY], "in a failure or heartbeat")
        return usage, items[:-1], problem
    return None, items, None


def split_marker(details: Sequence[Any]) -> tuple[Usage | None, tuple[Any, ...]]:
    """Separate a trailing usage marker from other details (a refused one reads as none)."""
    usage, rest, problem = read_marker(details)
    _refused(problem)
    return usage, rest


def has_usage_marker(error: BaseException | None) -> bool:
    """Whether a failure's cause carries a usage marker (believable or not)."""
    if isinstance(error, ApplicationError):
        details: Sequence[Any] = error.details
    elif isinstance(error, TimeoutError):
        details = error.last_heartbeat_details
    else:
        return False
    return bool(details) and isinstance(details[-1], dict) and USAGE_MARKER_KEY in details[-1]


def take_failure_usage(error: BaseException | None) -> Usage | None:
    """Find, remove and return the usage marker in a failure's cause.

    Looks at the ``ApplicationError`` details or the ``TimeoutError`` last heartbeat
    details of ``error`` (the cause of an ``ActivityError`` or ``ChildWorkflowError``).
    A marker whose usage is refused is removed too, and read as unknown (``None``).
    """
    usage, problem = _strip(error)
    _refused(problem)
    # an earlier attempt's failure nested as the cause (a heartbeat timeout's) carries its
    # own marker: its usage is in the total above already, and the caller must not see it
    nested = error.__cause__ if error is not None else None
    while nested is not None:
        _strip(nested)
        nested = nested.__cause__
    return usage


def _strip(error: BaseException | None) -> tuple[Usage | None, str | None]:
    """Remove the usage marker of one error (Python object and the SDK's stored failure)."""
    if isinstance(error, ApplicationError):
        usage, rest, problem = read_marker(error.details)
        if len(rest) != len(error.details):
            error._details = rest  # the SDK stores details here; agent code must not see ours
            if error.failure is not None:
                _drop_last(error.failure.application_failure_info.details.payloads)
        return usage, problem
    if isinstance(error, TimeoutError):
        usage, rest, problem = read_marker(error.last_heartbeat_details)
        if len(rest) != len(error.last_heartbeat_details):
            error._last_heartbeat_details = rest
            if error.failure is not None:
                _drop_last(error.failure.timeout_failure_info.last_heartbeat_details.payloads)
        return usage, problem
    return None, None


def _drop_last(payloads: Any) -> None:
    """Remove the marker's payload from the failure the SDK keeps with the error.

    An error that agent code lets through is sent on from that stored failure (not from
    the Python object), so the marker must leave it too, or the caller would see it.
    """
    if len(payloads) > 0:
        del payloads[-1]
