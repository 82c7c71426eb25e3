"""Wall-time deadlines of a run: the pure core, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from temporal_governor.context import Deadline
from temporal_governor.core.deadlines import WALL_TIME, deadline_refusal, earliest, overrun

START = datetime(2026, 1, 1, tzinfo=UTC)


def deadline(seconds: float, scope: str = "run a/1", start: datetime = START) -> Deadline:
    return Deadline(
        at=start + timedelta(seconds=seconds),
        limit="max_wall_time_per_task",
        scope=scope,
        seconds=seconds,
    )


def test_the_earlier_deadline_binds_and_a_tie_keeps_the_inherited_one() -> None:
    own, inherited = deadline(10, "run child/2"), deadline(30, "run parent/1")
    assert earliest(own, inherited) is own
    assert earliest(deadline(60, "run child/2"), inherited) is inherited
    assert earliest(None, inherited) is inherited and earliest(own, None) is own
    assert earliest(None, None) is None
    tie = deadline(30, "run child/2")
    assert earliest(tie, inherited) is inherited


def test_a_dispatch_at_or_after_the_deadline_is_refused_with_the_time_elapsed() -> None:
    limit = deadline(10)
    assert deadline_refusal(None, START + timedelta(days=1)) is None
    assert deadline_refusal(limit, START + timedelta(seconds=9.5)) is None
    at = deadline_refusal(limit, START + timedelta(seconds=10))
    assert at is not None and at.observed == 10 and at.ceiling == 10
    late = deadline_refusal(limit, START + timedelta(seconds=12.5))
    assert late is not None
    assert (late.limit, late.resource, late.scope) == (
        "max_wall_time_per_task",
        WALL_TIME,
        "run a/1",
    )
    assert late.observed == late.committed == 12.5 and late.overage == 0


def test_an_inherited_deadline_counts_from_the_ancestor_that_set_it() -> None:
    # the parent set 60 s at its start; the child, started 50 s later, asks at 61 s
    inherited = deadline(60, "run parent/1")
    refusal = deadline_refusal(inherited, START + timedelta(seconds=61))
    assert refusal is not None and refusal.observed == 61 and refusal.scope == "run parent/1"


def test_overrun_reports_only_time_beyond_the_ceiling() -> None:
    assert overrun(START, START + timedelta(seconds=5), 5.0) is None
    assert overrun(START, START + timedelta(seconds=6), 5.0) == 6.0


@given(
    seconds=st.floats(min_value=0, max_value=1e6),
    after=st.floats(min_value=-1e6, max_value=1e6),
)
def test_refused_exactly_when_the_deadline_has_passed(seconds: float, after: float) -> None:
    """Property: refused iff now >= deadline; the refusal never observes less than the ceiling."""
    limit = deadline(seconds)
    now = limit.at + timedelta(seconds=after)
    refusal = deadline_refusal(limit, now)
    assert (refusal is not None) == (now >= limit.at)
    if refusal is not None:
        assert refusal.observed >= refusal.ceiling - 1e-6
