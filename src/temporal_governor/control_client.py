"""Deprecated alias: import :class:`ControlClient` from :mod:`temporal_governor.control`."""

from .control import ControlClient, ControlError, ControlOutcome, ControlTarget

__all__ = ["ControlClient", "ControlError", "ControlOutcome", "ControlTarget"]
