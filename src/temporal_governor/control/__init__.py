"""The control plane: signed signals that stop, resume, slow down and re-budget runs.

:class:`ControlClient` sends them (to one run, a tree, a tenant or an agent type); the
message types are what travels; :class:`Keyring` signs and verifies them. A governed run
answers :data:`CONTROL_QUERY` with its
:class:`~temporal_governor.workflow.ControlStatus`.
"""

from ._client import ControlClient, ControlError, ControlOutcome, ControlTarget
from ._messages import (
    BACKPRESSURE_SIGNAL,
    CONTROL_QUERY,
    KILL_SIGNAL,
    MAX_CONTROL_BYTES,
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
    "MAX_CONTROL_BYTES",
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
