"""Wall-time limits of a run: which deadline binds, and whether it has passed. Pure.

A run's deadline is an absolute workflow time: its own ``max_wall_time_s`` (from its
start) or the one it inherited from its parent, whichever comes first. A dispatch asked
for at or after the deadline is refused; an ``alert`` wall-time limit is only reported.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, TypeVar

from .accounting import Refusal

WALL_TIME = "wall_time_s"
"""The resource a deadline limits."""


class DeadlineLike(Protocol):
    """A deadline as the run's context carries it (``context.Deadline``)."""

    @property
    def at(self) -> datetime:
        """When it passes (workflow time)."""
        ...

    @property
    def limit(self) -> str:
        """The limit's name, e.g. ``max_wall_time_s``."""
        ...

    @property
    def scope(self) -> str:
        """Whose limit it is."""
        ...

    @property
    def seconds(self) -> float:
        """The ceiling in seconds."""
        ...


_D = TypeVar("_D", bound=DeadlineLike)


def earliest(own: _D | None, inherited: _D | None) -> _D | None:
    """The deadline that binds: the earlier of the run's own and the inherited one.

    The inherited one when both fall at the same time (or when the run has none).
    """
    if own is None:
        return inherited
    return own if inherited is None or own.at < inherited.at else inherited


def deadline_refusal(deadline: DeadlineLike | None, now: datetime) -> Refusal | None:
    """The refusal of a dispatch asked for at ``now``, if ``deadline`` has passed.

    Args:
        deadline: The run's binding deadline, if any.
        now: Workflow time.

    Returns:
        The refusal (observed: the seconds elapsed, counted from the deadline's start), or
        ``None`` while the deadline is ahead.
    """
    if deadline is None or now < deadline.at:
        return None
    elapsed = deadline.seconds + (now - deadline.at).total_seconds()
    return Refusal(
        limit=deadline.limit,
        resource=WALL_TIME,
        scope=deadline.scope,
        observed=elapsed,
        ceiling=deadline.seconds,
        committed=elapsed,
        overage=0.0,
    )


def overrun(started: datetime, now: datetime, ceiling_s: float) -> float | None:
    """Seconds a run has lasted, when that is more than ``ceiling_s`` (an alert limit)."""
    elapsed = (now - started).total_seconds()
    return elapsed if elapsed > ceiling_s else None


__all__ = ["WALL_TIME", "DeadlineLike", "deadline_refusal", "earliest", "overrun"]
