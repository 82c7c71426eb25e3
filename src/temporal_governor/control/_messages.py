"""Control messages (kill, resume, backpressure, override), their signing and their checks.

Every control message is a pydantic model sent as the single argument of a signal to a
governed run. It names who sent it and why, when (``issued_at_ms``), a one-time
``nonce``, and is signed with HMAC-SHA256 over its canonical form: the message as JSON
with sorted keys, no whitespace, UTF-8, without ``signature`` and ``relay``. The run
checks it with :class:`ControlCheck` in workflow code (deterministically: time is the
workflow's, and the nonces seen are workflow state), so a replay reaches the same verdicts
as long as the worker that replays has the same keys.

Keys never live in the policy: :meth:`Keyring.from_policy` reads them from the
environment variable and the file that ``control`` names.

On the wire a message is one ``json/plain`` payload of at most :data:`MAX_CONTROL_BYTES`.
The run decodes it itself (:func:`decode_payload`), so a payload the SDK could not decode
(invalid JSON, an unknown encoding) or one too large is rejected and audited like any other
bad message instead of being dropped unseen.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue

from ..core import book
from ..core.control import (
    BACKPRESSURE_SIGNAL,
    CONTROL_QUERY,
    KILL_SIGNAL,
    MESSAGE_OF_SIGNAL,
    OVERRIDE_SIGNAL,
    RESUME_SIGNAL,
    SIGNAL_OF_ACTION,
    AnyControl,
    BackpressureMessage,
    ControlMessage,
    KillMessage,
    OverrideMessage,
    ResumeMessage,
    Target,
)
from ..errors import GovernorError, validation_problems
from ..policy import PER_TASK_LIMITS, ControlSettings, Policy

MAX_CONTROL_BYTES = book.MAX_CONTROL_BYTES
"""The most a control message may weigh on the wire: the protobuf size of its payload (data
and metadata) as the run receives it, 16 KiB.

A real message is well under 1 KiB. :class:`~temporal_governor.control_client.ControlClient`
and the runs that relay a message refuse to send a heavier one; a run rejects a heavier one
without decoding it (a signal from another client is in history by then all the same).
"""
CONTROL_ENCODING = "json/plain"
"""The payload encoding of a control message (what the SDKs' default JSON converters write)."""
_MAX_DIGITS = 20
"""The most digits of an integer in a control message's JSON (independent of the worker's
``sys.set_int_max_str_digits``, so every worker reaches the same verdict)."""
_MAX_NESTING = 32
"""The deepest nesting of arrays and objects in a control message's JSON (checked before
parsing, so no worker ever parses deep enough to depend on its recursion limit)."""

M = TypeVar("M", bound=ControlMessage)


def canonical(message: ControlMessage) -> bytes:
    """The bytes a message's signature covers: sorted-key compact JSON, UTF-8.

    ``signature`` and ``relay`` are left out; ``action`` is in, so a signed kill cannot be
    replayed as a resume.
    """
    data = message.model_dump(mode="json", exclude={"signature", "relay"})
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_message(message: ControlMessage) -> Payload:
    """A message as the payload the governor sends: ``json/plain``, compact, keys sorted.

    These are the bytes the Python SDK's default JSON converter writes for
    ``message.model_dump(mode="json")`` (ASCII, non-ASCII escaped), so a message weighs the
    same whichever client sends it. The payload is not checked against the cap here (see
    :func:`oversized`).
    """
    data = json.dumps(message.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return Payload(metadata={"encoding": CONTROL_ENCODING.encode()}, data=data.encode())


def oversized(payload: Payload) -> str | None:
    """Why a payload is too large for a control message, or ``None`` when it is not."""
    size = payload.ByteSize()
    if size <= MAX_CONTROL_BYTES:
        return None
    return f"oversized: {size} bytes, above the {MAX_CONTROL_BYTES}-byte cap on control messages"


def decode_payload(payload: Payload) -> tuple[Any, str | None]:
    """Decode a control message's payload as the run received it, deterministically.

    Checked in this order: size (:data:`MAX_CONTROL_BYTES`, before anything is parsed),
    encoding (``json/plain`` only), UTF-8, nesting (at most 32 levels), strict JSON (no
    ``NaN`` or infinite numbers, integers of at most 20 digits). The verdict depends on the
    payload's bytes only, never on the worker's settings.

    Returns:
        ``(value, None)`` with the decoded JSON value, else ``(None, why)`` where ``why``
        starts with ``oversized:`` or ``undecodable:``.

    """
    problem = oversized(payload)
    if problem is not None:
        return None, problem
    encoding = payload.metadata.get("encoding")
    if encoding != CONTROL_ENCODING.encode():
        shown = "none" if encoding is None else repr(encoding.decode("utf-8", "replace")[:100])
        return None, f"undecodable: encoding {shown} (a control message is {CONTROL_ENCODING})"
    try:
        text = payload.data.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"undecodable: not UTF-8 ({error.reason} at byte {error.start})"
    if _too_deep(text):
        return None, f"undecodable: JSON nested deeper than {_MAX_NESTING} levels"
    try:
        value = json.loads(
            text, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite
        )
    except ValueError as error:
        return None, f"undecodable: invalid JSON ({_one_line(str(error))})"
    return value, None


def _too_deep(text: str) -> bool:
    """Whether arrays and objects nest deeper than allowed in JSON ``text`` (strings skipped)."""
    if text.count("[") + text.count("{") <= _MAX_NESTING:
        return False  # it cannot: most messages never reach the loop
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > _MAX_NESTING:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(digits: str) -> float:
    value = float(digits)
    if not math.isfinite(value):
        raise ValueError(f"{digits[:30]} is out of range")
    return value


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_DIGITS:
        raise ValueError(f"an integer of {len(digits.lstrip('-'))} digits (at most {_MAX_DIGITS})")
    return int(digits)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def new_nonce() -> str:
    """A random nonce for a message sent from outside workflow code."""
    return uuid.uuid4().hex


class KeyringError(GovernorError):
    """The control keys could not be read (the message names the file or variable)."""


class Keyring:
    """The HMAC keys a worker verifies control messages with and the CLI signs them with.

    Args:
        keys: Key id -> secret.
        signing_key: The key id to sign with (default: the first).

    """

    def __init__(self, keys: Mapping[str, bytes], signing_key: str | None = None) -> None:
        self.keys = dict(keys)
        if signing_key is not None and signing_key not in self.keys:
            raise KeyringError(
                f"control.signing_key {signing_key!r} is not among the keys found "
                f"({', '.join(sorted(self.keys)) or 'none'})"
            )
        self.signing_key = signing_key or next(iter(self.keys), None)

    @classmethod
    def from_policy(cls, policy: Policy, environ: Mapping[str, str] | None = None) -> Keyring:
        """Read the keys the policy's ``control`` section names.

        Args:
            policy: The policy (``control.keys_env``, ``control.keys_file``).
            environ: The environment (default ``os.environ``).

        Raises:
            KeyringError: The variable or the file is malformed or unreadable.

        """
        return cls.from_settings(policy.control, policy.source, environ)

    @classmethod
    def from_settings(
        cls,
        settings: ControlSettings,
        policy_source: str = "<dict>",
        environ: Mapping[str, str] | None = None,
    ) -> Keyring:
        """Read the keys of a ``control`` section (see :meth:`from_policy`)."""
        env = os.environ if environ is None else environ
        keys: dict[str, bytes] = {}
        text = env.get(settings.keys_env, "").strip()
        for pair in filter(None, (p.strip() for p in text.split(","))):
            key_id, sep, secret = pair.partition("=")
            if not sep or not key_id.strip() or not secret.strip():
                raise KeyringError(
                    f"${settings.keys_env}: expected key-id=secret pairs separated by commas, "
                    f"got an entry without both ({key_id.strip() or '<empty>'}=...)"
                )
            keys[key_id.strip()] = secret.strip().encode()
        if settings.keys_file:
            keys.update(_read_key_file(settings.keys_file, policy_source))
        return cls(keys, settings.signing_key)

    def sign(self, message: M, key_id: str | None = None) -> M:
        """The message with ``key_id`` and ``signature`` set.

        Raises:
            KeyringError: There is no key to sign with.

        """
        kid = key_id or self.signing_key
        if kid is None or kid not in self.keys:
            raise KeyringError(
                "no control key to sign with: set $TEMPORAL_GOVERNOR_KEYS (key-id=secret) or "
                "control.keys_file in the policy"
            )
        unsigned = message.model_copy(update={"key_id": kid, "signature": None})
        digest = hmac.new(self.keys[kid], canonical(unsigned), hashlib.sha256).hexdigest()
        return unsigned.model_copy(update={"signature": digest})

    def signature_problem(self, message: ControlMessage) -> str | None:
        """Why a message's signature is not valid, or ``None`` when it is."""
        if message.signature is None:
            return "unsigned"
        if message.key_id is None or message.key_id not in self.keys:
            return f"unknown key id {message.key_id!r}"
        expected = hmac.new(self.keys[message.key_id], canonical(message), hashlib.sha256)
        if not hmac.compare_digest(expected.hexdigest(), message.signature):
            return "bad signature"
        return None


def _read_key_file(name: str, policy_source: str) -> dict[str, bytes]:
    path = Path(name)
    if not path.is_absolute() and policy_source not in ("<dict>", "<text>"):
        path = Path(policy_source).parent / path
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise KeyringError(f"control.keys_file {path}: cannot read it ({error})") from None
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()
    ):
        raise KeyringError(
            f"control.keys_file {path}: expected a mapping of key id to secret (strings)"
        )
    return {k: v.encode() for k, v in data.items()}


class ControlCheck:
    """Validates and authorises control messages for one run (deterministic).

    Args:
        keyring: The keys to verify signatures with.
        settings: The policy's ``control`` section.

    """

    def __init__(self, keyring: Keyring, settings: ControlSettings) -> None:
        self.keyring = keyring
        self.settings = settings
        self._nonces: dict[str, int] = {}

    def check(
        self,
        signal: str,
        args: tuple[Any, ...],
        now_ms: int,
        *,
        stored: bool = False,
    ) -> tuple[AnyControl | None, str | None]:
        """Parse and authorise one signal's arguments.

        Args:
            signal: The signal name (selects the message model).
            args: The signal's arguments: a :class:`~temporalio.common.RawValue` (the payload
                as received, decoded here with :func:`decode_payload`) or a value already
                decoded (a message the ledger stored).
            now_ms: The run's clock (workflow time), epoch milliseconds.
            stored: The message comes from the ledger (a fleet kill or resume): it must be
                signed, and its nonce is not consumed (the caller deduplicates stored
                messages by identity instead).

        Returns:
            ``(message, None)`` when accepted (its nonce is then remembered), else
            ``(message or None, why it was rejected)``.

        """
        model = MESSAGE_OF_SIGNAL.get(signal)
        if model is None:
            return None, f"unknown control signal {signal!r}"
        if len(args) != 1:
            return None, (
                f"malformed: expected one JSON object as the signal's argument, got {len(args)} "
                "arguments"
            )
        data = args[0]
        if isinstance(data, RawValue):
            data, problem = decode_payload(data.payload)
            if problem is not None:
                return None, problem
        if not isinstance(data, Mapping):
            return None, "malformed: expected one JSON object as the signal's argument"
        try:
            message: AnyControl = model.model_validate(data)  # type: ignore[assignment]
        except ValidationError as error:
            return None, "malformed: " + validation_problems(error)
        problem = self.keyring.signature_problem(message)
        if problem == "unsigned":
            if stored:
                return message, f"unsigned stored {message.action} (a valid signature is required)"
            if not (message.action == "kill" and self.settings.allow_unsigned_kill):
                return message, f"unsigned {message.action} (a valid signature is required)"
        elif problem is not None:
            return message, problem
        skew_ms = self.settings.max_clock_skew * 1000
        age_ms = now_ms - message.issued_at_ms
        if abs(age_ms) > skew_ms:
            return message, (
                f"stale: issued {age_ms / 1000:.1f} s from the run's clock "
                f"(control.max_clock_skew {self.settings.max_clock_skew:g} s)"
            )
        if stored:
            return message, None
        if message.nonce in self._nonces:
            return message, f"replayed nonce {message.nonce}"
        self._forget_old(now_ms, skew_ms)
        self._nonces[message.nonce] = message.issued_at_ms
        return message, None

    def nonces(self) -> dict[str, int]:
        """The nonces seen and not yet forgotten (carried over a continue-as-new)."""
        return dict(self._nonces)

    def remember(self, nonces: dict[str, int]) -> None:
        """Take over the nonces an earlier run of the chain had seen."""
        self._nonces.update(nonces)

    def _forget_old(self, now_ms: int, skew_ms: float) -> None:
        """Drop nonces so old that their messages would be rejected as stale anyway."""
        for nonce in [n for n, at in self._nonces.items() if now_ms - at > 2 * skew_ms]:
            del self._nonces[nonce]


def overridable(limit: str) -> bool:
    """Whether ``limit`` names a per-task quota an override may change."""
    return limit in PER_TASK_LIMITS and limit != "max_wall_time_per_task"


__all__ = [
    "BACKPRESSURE_SIGNAL",
    "CONTROL_ENCODING",
    "CONTROL_QUERY",
    "KILL_SIGNAL",
    "MAX_CONTROL_BYTES",
    "MESSAGE_OF_SIGNAL",
    "OVERRIDE_SIGNAL",
    "RESUME_SIGNAL",
    "SIGNAL_OF_ACTION",
    "AnyControl",
    "BackpressureMessage",
    "ControlCheck",
    "ControlMessage",
    "Keyring",
    "KeyringError",
    "KillMessage",
    "OverrideMessage",
    "ResumeMessage",
    "Target",
    "canonical",
    "decode_payload",
    "encode_message",
    "new_nonce",
    "overridable",
    "oversized",
]
