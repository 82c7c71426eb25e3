"""The control plane: signed signals that stop, resume, slow down and re-budget runs.

:class:`ControlClient` sends them (to one run, a tree, a tenant or an agent type); the
message types are what travels; :class:`Keyring` signs and verifies them.
"""

from ._client import ControlClient, ControlError, ControlOutcome, ControlTarget
from ._messages import (
    BACKPRESSURE_SIGNAL,
    CONTROL_QUERY,
    KILL_SIGNAL,
    OVERRIDE_SIGNAL,
    RESUME_SIGNAL,
    AnyControl,
    BackpressureMessage,
    ControlMessage,
    Keyring,
    KeyringError,
    KillMessage,
    OverrideMessage,
    ResumeMessage,
    Target,
    decode_payload,
    encode_message,
)

__all__ = [
    "BACKPRESSURE_SIGNAL",
    "CONTROL_QUERY",
    "KILL_SIGNAL",
    "OVERRIDE_SIGNAL",
    "RESUME_SIGNAL",
    "AnyControl",
    "BackpressureMessage",
    "ControlClient",
    "ControlError",
    "ControlMessage",
    "ControlOutcome",
    "ControlTarget",
    "Keyring",
    "KeyringError",
    "KillMessage",
    "OverrideMessage",
    "ResumeMessage",
    "Target",
    "decode_payload",
    "encode_message",
]
