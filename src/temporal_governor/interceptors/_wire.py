"""How actual usage rides on Temporal's own result and failure paths.

Success: the usage is a metadata entry of the result payload, which converters ignore.
Failure: the usage is a trailing marker payload of the ``ApplicationError`` failure,
appended and taken off again by the failure converter the plugin installs, so neither the
exception agent code raised nor the one agent code receives carries it. Between retry
attempts: the same marker is the last heartbeat detail, hidden from activity code.
All three are recorded in the workflow's history, so replay sees the same numbers.
:mod:`._failures` has the marker and the converter.

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

from ..errors import validation_problems
from ..usage import Usage
from ._failures import carried_in_detail, carry_usage, has_carried, take_carried

USAGE_METADATA_KEY = "temporal-governor-usage"
"""Payload metadata key carrying the JSON :class:`Usage` of an activity or child run."""

MAX_USAGE_BYTES = 64 * 1024
"""The largest usage (as JSON) that is read from a payload's metadata; larger is refused."""

_logger = logging.getLogger(__name__)


def attach_usage(payload: Payload, usage: Usage) -> Payload:
    """A copy of ``payload`` with the usage in its metadata."""
    tagged = Payload()
    tagged.CopyFrom(payload)
    tagged.metadata[USAGE_METADATA_KEY] = usage.model_dump_json(exclude_defaults=True).encode()
    return tagged


def read_usage(data: bytes | object, where: str) -> tuple[Usage | None, str | None]:
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


def read_marker(details: Sequence[Any]) -> tuple[Usage | None, tuple[Any, ...], str | None]:
    """Separate a trailing usage marker from other (decoded) details, and check it.

    The details are an activity's heartbeat details, where the marker of the earlier
    attempts' usage is the last one (see :mod:`._failures`).

    Returns:
        ``(usage, the other details, None)``; ``usage`` is ``None`` when there is no
        marker, and also when there is one whose usage is refused (the third item then
        says why).

    """
    items = tuple(details)
    carried = carried_in_detail(items[-1]) if items else None
    if carried is None:
        return None, items, None
    usage, problem = read_usage(carried.data, "in a failure or heartbeat")
    return usage, items[:-1], problem


def has_usage_marker(error: BaseException | None) -> bool:
    """Whether a failure's cause carried a usage marker (believable or not).

    ``error`` is the cause of an ``ActivityError`` or ``ChildWorkflowError``: the
    ``ApplicationError`` or ``TimeoutError`` the governed failure converter built, which
    noted the marker it took off (see :mod:`._failures`).
    """
    return has_carried(error)


def take_failure_usage(error: BaseException | None) -> Usage | None:
    """Take and check the usage the marker of a failure's cause carried.

    ``error`` is the cause of an ``ActivityError`` or ``ChildWorkflowError``. The marker
    itself was taken off before the exception was built (an earlier attempt's marker
    nested as its cause too), so agent code never sees it. A marker whose usage is
    refused reads as unknown (``None``).
    """
    carried = take_carried(error)
    if carried is None:
        return None
    usage, problem = read_usage(carried.data, "in a failure or heartbeat")
    _refused(problem)
    return usage


def carry_failure_usage(error: BaseException, usage: Usage) -> None:
    """Let the failure ``error`` becomes carry ``usage`` to the workflow that receives it.

    ``error`` is left exactly as it is; the governed failure converter appends the marker
    when it converts ``error`` (see :mod:`._failures`).
    """
    carry_usage(error, usage)
