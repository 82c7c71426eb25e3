"""Usage on failures and between retry attempts, through the SDK's public converters only.

The plugin installs a failure converter (:func:`governed_data_converter`): a subclass of
whatever failure converter class the data converter already had, so that a user's own
conversion still applies. It does two things around the inherited conversion:

- ``to_failure`` appends the governor's usage marker to the ``ApplicationError`` failure
  of an exception the governor registered with :func:`carry_usage` (an activity attempt
  that spent, a child run towards its governed parent). The exception itself is never
  changed; an exception nobody registered is converted exactly as without the governor.
- ``from_failure`` takes the markers out of a copy of the failure (the details of an
  application failure, the last heartbeat details of a timeout, through every cause)
  *before* the inherited conversion builds the exception, so agent code, and any
  failure that agent code lets through, never carry them. What a marker held is kept
  for the built exception, unchecked, until the workflow interceptor takes it
  (:func:`take_carried`).

A marker is a payload whose metadata says so (:data:`MARKER_METADATA_KEY`), never a
value agent code could write by accident: the usage JSON in a ``temporal.api.common.v1.
Payload`` message (``binary/protobuf``, which every converter built from the SDK's
default converters decodes) tagged in both payloads' metadata. Heartbeats carry the
same marker as a :class:`~temporalio.common.RawValue`, which needs no converter at all;
the next attempt finds it, decoded as a ``Payload`` message, among its heartbeat details.

Read-only compatibility: releases up to 0.1.x wrote the marker as a trailing JSON detail
``{"__temporal_governor_usage__": {...}}``. Histories (and retries) that carry one still
count it, and it is taken off the same way; nothing writes it any more.

Everything here runs in workflow code too (the failure converter converts every failure
a run receives, on replay as well): it depends only on the failure it is given, and it
keeps no state but the registries keyed by exception identity below.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, MutableSequence
from typing import Any, Generic, TypeVar

from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.common import RawValue
from temporalio.converter import DataConverter, FailureConverter, PayloadConverter

from ..usage import Usage

MARKER_METADATA_KEY = "temporal-governor-marker"
"""Payload metadata key that tags the governor's usage marker (value ``usage``)."""

_MARKER_KIND = b"usage"
_PROTO_MESSAGE = b"temporal.api.common.v1.Payload"

LEGACY_MARKER_KEY = "__temporal_governor_usage__"
"""Key of the JSON marker object releases up to 0.1.x appended (read, never written)."""

_LEGACY_PROBE = LEGACY_MARKER_KEY.encode()

_STRONG_LIMIT = 4096
"""At most this many exceptions that cannot be weakly referenced are remembered at once."""

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclasses.dataclass(frozen=True)
class Carried:
    """Usage found in a marker, not yet checked.

    ``data`` is the usage as JSON bytes (the governor's marker) or as the decoded object
    of a marker written by 0.1.x.
    """

    data: bytes | object


# --- the marker --------------------------------------------------------------------------


def marker_payload(usage: Usage) -> Payload:
    """The payload that carries ``usage`` as a failure or heartbeat detail."""
    inner = Payload(
        metadata={MARKER_METADATA_KEY: _MARKER_KIND},
        data=usage.model_dump_json(exclude_defaults=True).encode(),
    )
    return Payload(
        metadata={
            "encoding": b"binary/protobuf",
            "messageType": _PROTO_MESSAGE,
            MARKER_METADATA_KEY: _MARKER_KIND,
        },
        data=inner.SerializeToString(),
    )


def marker_detail(usage: Usage) -> RawValue:
    """``usage`` as a heartbeat detail: its marker payload, sent as it is."""
    return RawValue(marker_payload(usage))


def carried_in_detail(value: object) -> Carried | None:
    """The usage of a decoded heartbeat detail that is a marker, else ``None``.

    The governor's marker decodes to a ``Payload`` message tagged in its metadata; a
    0.1.x marker to a dict with :data:`LEGACY_MARKER_KEY`.
    """
    if isinstance(value, Payload):
        if value.metadata.get(MARKER_METADATA_KEY) == _MARKER_KIND:
            return Carried(value.data)
        return None
    if isinstance(value, dict) and LEGACY_MARKER_KEY in value:
        return Carried(value[LEGACY_MARKER_KEY])
    return None


def carried_in_payload(payload: Payload) -> Carried | None:
    """The usage of an encoded detail that is a marker, else ``None``."""
    if payload.metadata.get(MARKER_METADATA_KEY) == _MARKER_KIND:
        inner = Payload()
        try:
            inner.ParseFromString(payload.data)
        except DecodeError:  # a malformed marker: its usage is unknown; it is taken off still
            return Carried(b"")
        return Carried(inner.data)
    if payload.metadata.get("encoding") == b"json/plain" and _LEGACY_PROBE in payload.data:
        try:
            value = json.loads(payload.data)
        except (ValueError, RecursionError):
            return None
        if isinstance(value, dict) and LEGACY_MARKER_KEY in value:
            return Carried(value[LEGACY_MARKER_KEY])
    return None


# --- exceptions and what they carry ------------------------------------------------------


class _ByIdentity(Generic[_K, _V]):
    """Values attached to objects by identity, without changing or keeping the objects.

    Objects that can be weakly referenced (every SDK exception, every exception class
    written in Python) are forgotten when they die. Built-in exceptions cannot be; they
    are held until taken, at most :data:`_STRONG_LIMIT` of them (the oldest go first).
    """

    def __init__(self) -> None:
        self._weak: dict[int, tuple[weakref.ref[Any], _V]] = {}
        self._strong: OrderedDict[int, tuple[object, _V]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: _K, value: _V) -> None:
        ident = id(key)
        try:
            ref = weakref.ref(key, self._forgetter(ident))
        except TypeError:
            with self._lock:
                self._strong[ident] = (key, value)
                self._strong.move_to_end(ident)
                while len(self._strong) > _STRONG_LIMIT:
                    self._strong.popitem(last=False)
            return
        self._weak[ident] = (ref, value)

    def has(self, key: _K) -> bool:
        ident = id(key)
        weak = self._weak.get(ident)
        if weak is not None:
            return weak[0]() is key
        with self._lock:
            strong = self._strong.get(ident)
        return strong is not None and strong[0] is key

    def pop(self, key: _K) -> _V | None:
        ident = id(key)
        weak = self._weak.get(ident)
        if weak is not None and weak[0]() is key:
            self._weak.pop(ident, None)
            return weak[1]
        with self._lock:
            strong = self._strong.get(ident)
            if strong is not None and strong[0] is key:
                del self._strong[ident]
                return strong[1]
        return None

    def _forgetter(self, ident: int) -> Callable[[weakref.ref[Any]], None]:
        def forget(ref: weakref.ref[Any]) -> None:
            item = self._weak.get(ident)
            if item is not None and item[0] is ref:
                self._weak.pop(ident, None)

        return forget


_outgoing: _ByIdentity[BaseException, Usage] = _ByIdentity()
"""Usage to append to the failure an exception becomes (see :func:`carry_usage`)."""

_received: _ByIdentity[BaseException, Carried] = _ByIdentity()
"""What the marker of a received failure carried, by the exception built from it."""


def carry_usage(error: BaseException, usage: Usage) -> None:
    """Let the failure ``error`` is converted to carry ``usage`` (``error`` is not changed).

    Only an ``Exception`` that converts to an application failure carries it; the
    governed failure converter appends the marker when it converts ``error``.
    """
    if isinstance(error, Exception):
        _outgoing.put(error, usage)


def has_carried(error: BaseException | None) -> bool:
    """Whether the failure that ``error`` was built from had a marker (believable or not)."""
    return error is not None and _received.has(error)


def take_carried(error: BaseException | None) -> Carried | None:
    """Take what the marker of the failure ``error`` was built from carried, if any."""
    return None if error is None else _received.pop(error)


# --- the converters ----------------------------------------------------------------------


def _detail_payloads(failure: Failure) -> MutableSequence[Payload] | None:
    """The payloads a marker may trail: application details, a timeout's heartbeat."""
    which = failure.WhichOneof("failure_info")
    if which == "application_failure_info":
        return failure.application_failure_info.details.payloads
    if which == "timeout_failure_info":
        return failure.timeout_failure_info.last_heartbeat_details.payloads
    return None


def _has_marker(failure: Failure) -> bool:
    """Whether the failure or any of its causes ends its details with a marker."""
    node: Failure | None = failure
    while node is not None:
        payloads = _detail_payloads(node)
        if payloads and carried_in_payload(payloads[-1]) is not None:
            return True
        node = node.cause if node.HasField("cause") else None
    return False


def _strip(failure: Failure) -> list[Carried | None]:
    """Take the trailing marker off every failure of the chain; what each carried."""
    found: list[Carried | None] = []
    node: Failure | None = failure
    while node is not None:
        payloads = _detail_payloads(node)
        carried = carried_in_payload(payloads[-1]) if payloads else None
        if payloads and carried is not None:
            del payloads[-1]
        found.append(carried)
        node = node.cause if node.HasField("cause") else None
    return found


class GovernedFailureConverter(FailureConverter):
    """Carries the governor's usage marker on failures; never shows it to agent code.

    Not used directly: :func:`governed_data_converter` builds a subclass of this and of
    the data converter's own failure converter class.
    """

    def to_failure(
        self,
        exception: BaseException,
        payload_converter: PayloadConverter,
        failure: Failure,
    ) -> None:
        """Convert as the inherited converter does, then append a registered usage."""
        super().to_failure(exception, payload_converter, failure)  # type: ignore[safe-super]
        usage = _outgoing.pop(exception)
        if usage is not None and failure.WhichOneof("failure_info") == "application_failure_info":
            failure.application_failure_info.details.payloads.append(marker_payload(usage))

    def from_failure(self, failure: Failure, payload_converter: PayloadConverter) -> BaseException:
        """Convert a copy of ``failure`` without markers; remember what they carried."""
        if not _has_marker(failure):
            return super().from_failure(failure, payload_converter)  # type: ignore[safe-super]
        clean = Failure()
        clean.CopyFrom(failure)  # the input must not change
        found = _strip(clean)
        error: BaseException = super().from_failure(clean, payload_converter)  # type: ignore[safe-super]
        node: BaseException | None = error
        for carried in found:  # the inherited conversion builds one exception per cause
            if node is None:
                break
            if carried is not None:
                _received.put(node, carried)
            node = node.__cause__
        return error


@functools.cache
def _governed_class(base: type[FailureConverter]) -> type[FailureConverter]:
    """``base`` with the governor's marker handling around its conversion (one per base)."""
    name = f"Governed{base.__name__}"
    namespace = {"__module__": __name__, "__qualname__": name, "__doc__": base.__doc__}
    return type(name, (GovernedFailureConverter, base), namespace)


def governed_data_converter(converter: DataConverter | None = None) -> DataConverter:
    """``converter`` (default: the SDK's) with the governor's failure converter.

    The failure converter class becomes a subclass of the one ``converter`` had, so its
    own conversion still applies; payload converter, codec and storage are kept. A
    converter that is governed already is returned as it is.
    """
    converter = converter or DataConverter.default
    if issubclass(converter.failure_converter_class, GovernedFailureConverter):
        return converter
    governed = _governed_class(converter.failure_converter_class)
    return dataclasses.replace(converter, failure_converter_class=governed)


def is_governed(converter: DataConverter) -> bool:
    """Whether ``converter`` carries the governor's usage on failures."""
    return isinstance(converter.failure_converter, GovernedFailureConverter)
