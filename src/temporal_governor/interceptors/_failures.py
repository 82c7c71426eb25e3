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

A marker is a ``json/plain`` payload (an encoding every payload converter has, the
SDK's default, pydantic's, a JSON-only one) whose metadata says it is the governor's
(:data:`MARKER_METADATA_KEY`): on a failure it is recognised by that tag alone, which no
payload converter writes, so a detail agent code raises is never taken for one. Its JSON,
``{"temporal-governor-marker": "usage", "usage": {...}}``, names it too: heartbeats carry
the marker as a :class:`~temporalio.common.RawValue` (sent as it is), and the next
attempt receives its heartbeat details decoded, the tag gone, as that object.

Read-only compatibility: the marker was briefly a ``binary/protobuf`` payload (a
``temporal.api.common.v1.Payload`` message tagged in both payloads' metadata, which a
converter without the SDK's protobuf converters cannot decode), and releases up to 0.1.x
wrote a trailing JSON detail ``{"__temporal_governor_usage__": {...}}``. Histories (and
retries) that carry either still count it, and it is taken off the same way; nothing
writes them any more.

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
_MARKER_FIELD = "temporal-governor-marker"
"""The key naming the marker inside its JSON (the tag is gone once a heartbeat is decoded)."""
_JSON = b"json/plain"

MAX_MARKER_BYTES = 64 * 1024 + 1024
"""The largest JSON marker that is parsed; a larger one reads as refused (too many bytes)."""

LEGACY_MARKER_KEY = "__temporal_governor_usage__"
"""Key of the JSON marker object releases up to 0.1.x appended (read, never written)."""

_LEGACY_PROBE = LEGACY_MARKER_KEY.encode()

_UNREFERENCED_LIMIT = 4096
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
    """The payload that carries ``usage`` as a failure or heartbeat detail (``json/plain``)."""
    data = b'{"%s":"usage","usage":%s}' % (
        _MARKER_FIELD.encode(),
        usage.model_dump_json(exclude_defaults=True).encode(),
    )
    return Payload(metadata={"encoding": _JSON, MARKER_METADATA_KEY: _MARKER_KIND}, data=data)


def marker_detail(usage: Usage) -> RawValue:
    """``usage`` as a heartbeat detail: its marker payload, sent as it is."""
    return RawValue(marker_payload(usage))


def carried_in_detail(value: object) -> Carried | None:
    """The usage of a decoded heartbeat detail that is a marker, else ``None``.

    The governor's marker decodes to the object that names it (see the module); the
    ``binary/protobuf`` marker to a ``Payload`` message tagged in its metadata; a 0.1.x
    marker to a dict with :data:`LEGACY_MARKER_KEY`.
    """
    if isinstance(value, dict):
        if value.get(_MARKER_FIELD) == "usage" and "usage" in value:
            return Carried(value["usage"])
        if LEGACY_MARKER_KEY in value:
            return Carried(value[LEGACY_MARKER_KEY])
        return None
    if isinstance(value, Payload) and value.metadata.get(MARKER_METADATA_KEY) == _MARKER_KIND:
        return Carried(value.data)  # the binary/protobuf marker
    return None


def carried_in_payload(payload: Payload) -> Carried | None:
    """The usage of an encoded detail that is a marker, else ``None``.

    A marker is recognised by its tag; what it carries is the usage as JSON bytes (empty
    for a malformed marker, whose usage is unknown; it is taken off still).
    """
    if payload.metadata.get(MARKER_METADATA_KEY) == _MARKER_KIND:
        if payload.metadata.get("encoding") == _JSON:
            return _carried_in_json(payload.data)
        inner = Payload()  # the binary/protobuf marker
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


def _carried_in_json(data: bytes) -> Carried:
    """What the JSON of a tagged marker carries: its ``usage``, as JSON bytes."""
    if len(data) > MAX_MARKER_BYTES:
        return Carried(data)  # refused when read, for its size
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return Carried(b"")
    if not isinstance(value, dict) or value.get(_MARKER_FIELD) != "usage" or "usage" not in value:
        return Carried(b"")
    try:
        return Carried(json.dumps(value["usage"]).encode())
    except (ValueError, TypeError, RecursionError):
        return Carried(b"")


# --- exceptions and what they carry ------------------------------------------------------


class _ByIdentity(Generic[_K, _V]):
    """Values attached to objects by identity, without changing or keeping the objects.

    Objects that can be weakly referenced (every SDK exception, every exception class
    written in Python) are forgotten when they die. Built-in exceptions cannot be; they
    are never held either (their traceback would keep every frame's locals alive, prompts
    included): such an entry is keyed by ``id()`` with the object's type and a hash of
    its message, which an object born later at the same address must also match. It
    stays until taken, at most :data:`_UNREFERENCED_LIMIT` of them (the oldest go first).
    """

    def __init__(self) -> None:
        self._weak: dict[int, tuple[weakref.ref[Any], _V]] = {}
        self._unreferenced: OrderedDict[int, tuple[tuple[type, int], _V]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: _K, value: _V) -> None:
        ident = id(key)
        try:
            ref = weakref.ref(key, self._forgetter(ident))
        except TypeError:
            fingerprint = _fingerprint(key)  # outside the lock: it may run user code
            with self._lock:
                self._unreferenced[ident] = (fingerprint, value)
                self._unreferenced.move_to_end(ident)
                while len(self._unreferenced) > _UNREFERENCED_LIMIT:
                    self._unreferenced.popitem(last=False)
            return
        self._weak[ident] = (ref, value)

    def has(self, key: _K) -> bool:
        ident = id(key)
        weak = self._weak.get(ident)
        if weak is not None:
            return weak[0]() is key
        with self._lock:
            entry = self._unreferenced.get(ident)
        return entry is not None and entry[0] == _fingerprint(key)

    def pop(self, key: _K) -> _V | None:
        ident = id(key)
        weak = self._weak.get(ident)
        if weak is not None and weak[0]() is key:
            self._weak.pop(ident, None)
            return weak[1]
        with self._lock:
            entry = self._unreferenced.get(ident)
        if entry is None or entry[0] != _fingerprint(key):
            return None
        with self._lock:
            if self._unreferenced.get(ident) is not entry:
                return None  # taken meanwhile
            del self._unreferenced[ident]
        return entry[1]

    def _forgetter(self, ident: int) -> Callable[[weakref.ref[Any]], None]:
        def forget(ref: weakref.ref[Any]) -> None:
            item = self._weak.get(ident)
            if item is not None and item[0] is ref:
                self._weak.pop(ident, None)

        return forget


def _fingerprint(value: object) -> tuple[type, int]:
    """What an object that cannot be weakly referenced is matched on besides its ``id()``."""
    try:
        text = str(value)
    except Exception:  # a user object among the exception's arguments
        text = ""
    return type(value), hash(text)


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
