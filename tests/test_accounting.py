"""The pure budget arithmetic: no Temporal needed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from temporal_governor.core.accounting import Amounts, Limit, RunLedger


def ledger(ceiling: float = 1000, **kw: object) -> RunLedger:
    return RunLedger(limits=[Limit("max_tokens_per_task", "tokens", ceiling, "run a/1", **kw)])  # type: ignore[arg-type]


def test_reserve_refuses_what_would_exceed_the_ceiling() -> None:
    book = ledger()
    assert book.reserve("a", Amounts(tokens=600)) is None
    refusal = book.reserve("b", Amounts(tokens=500))
    assert refusal is not None
    assert (refusal.observed, refusal.ceiling, refusal.committed) == (1100, 1000, 0)
    assert list(book.reservations) == ["a"]


def test_commit_releases_the_rest_and_is_idempotent() -> None:
    book = ledger()
    book.reserve("a", Amounts(tokens=600))
    book.commit("a", Amounts(tokens=250))
    book.commit("a", Amounts(tokens=250))  # a duplicate delivery counts once
    assert book.committed.tokens == 250
    assert book.reserved.tokens == 0
    kinds = [(e.kind, e.amounts.get("tokens")) for e in book.events]
    assert kinds == [("reserve", 600), ("commit", 250), ("release", 350)]


def test_reserving_an_open_key_again_is_a_no_op() -> None:
    book = ledger()
    book.reserve("a", Amounts(tokens=600))
    assert book.reserve("a", Amounts(tokens=600)) is None
    assert book.reserved.tokens == 600


def test_overage_refuses_even_a_zero_estimate() -> None:
    book = ledger()
    book.reserve("a", Amounts(tokens=100))
    book.commit("a", Amounts(tokens=1200))
    assert any(e.kind == "overage" for e in book.events)
    refusal = book.check(Amounts())
    assert refusal is not None and refusal.overage == 200


def test_zero_estimate_fits_exactly_at_the_ceiling() -> None:
    book = ledger()
    book.reserve("a", Amounts(tokens=1000))
    book.commit("a", Amounts(tokens=1000))
    assert book.check(Amounts()) is None
    assert book.check(Amounts(tokens=1)) is not None


def test_alert_limit_never_refuses_and_alerts_once() -> None:
    book = ledger(on_breach="alert")
    for key in "abc":
        assert book.reserve(key, Amounts(tokens=600)) is None
        book.commit(key, Amounts(tokens=600))
    assert [e.kind for e in book.events].count("alert") == 1


def test_warn_at_fires_once_at_the_fraction() -> None:
    book = ledger(warn_at=0.5)
    book.reserve("a", Amounts(tokens=400))
    book.commit("a", Amounts(tokens=400))
    assert not any(e.kind == "warn" for e in book.events)
    book.reserve("b", Amounts(tokens=400))
    book.commit("b", Amounts(tokens=400))
    book.reserve("c", Amounts(tokens=100))
    book.commit("c", Amounts(tokens=100))
    warns = [e for e in book.events if e.kind == "warn"]
    assert len(warns) == 1 and warns[0].observed == 800


def test_remaining_is_the_tightest_terminate_limit() -> None:
    book = RunLedger(
        limits=[
            Limit("own", "tokens", 1000, "run a/1"),
            Limit("allowance", "tokens", 300, "run root/1"),
            Limit("loose", "tokens", 10, "run a/1", on_breach="alert"),
        ]
    )
    assert book.remaining("tokens") == 300
    binding = book.binding_limit("tokens")
    assert binding is not None and binding.name == "allowance"
    assert book.remaining("cost_usd") is None


@given(
    ceiling=st.integers(min_value=0, max_value=10_000),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3_000), st.floats(min_value=0, max_value=1)),
        max_size=60,
    ),
)
def test_upper_bound_estimates_never_overdraw(ceiling: int, steps: list[tuple[int, float]]) -> None:
    """Property: when actuals never exceed estimates, committed never exceeds the ceiling."""
    book = ledger(ceiling)
    for i, (estimate, used_fraction) in enumerate(steps):
        key = f"k{i}"
        if book.reserve(key, Amounts(tokens=estimate)) is None:
            book.commit(key, Amounts(tokens=int(estimate * used_fraction)))
        assert book.committed.tokens + book.reserved.tokens <= ceiling
    assert book.reserved.tokens == 0
