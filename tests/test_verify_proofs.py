"""Bounded proofs of the accounting rules (temporal_governor.verify._proofs), no server.

Every property is proved for k = 3 dispatches in every interleaving (about 2 s in all).
A deliberately broken rule, patched into the runtime module, must give a counterexample,
and the counterexample's numbers, replayed through the concrete runtime code with the
same broken rule, must really break the property.
"""

from __future__ import annotations

import json

import pytest

from temporal_governor.core import accounting, book, carving
from temporal_governor.core.accounting import _EPSILON, FLOAT_OPS, Amounts, Limit, Ops, RunLedger
from temporal_governor.core.book import LedgerBook, ReserveRequest, SettleRequest
from temporal_governor.core.scopes import SharedLimit
from temporal_governor.verify._proofs import (
    PROPERTIES,
    Counterexample,
    prove,
    prove_accounting,
)

K = 3
CEILING = "ceiling"


def by_name(name: str) -> type:
    return next(prop for prop in PROPERTIES if prop.name == name)


def test_every_property_is_proved_for_k_3() -> None:
    results = prove_accounting(K)
    assert [r.name for r in results] == [p.name for p in PROPERTIES]
    for result in results:
        assert result.outcome == "proved", result.describe()
        assert result.k == K
        assert result.counterexample is None
        assert "proved for k = 3" in result.describe()


def test_the_proofs_use_the_runtimes_float_tolerance() -> None:
    from temporal_governor.verify import _proofs

    assert _proofs.EPSILON == accounting._EPSILON == book._EPSILON


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError):
        prove_accounting(0)


# -- broken rules ---------------------------------------------------------------------------


def refuses_ignoring_reservations(
    committed: float, reserved: float, estimate: float, ceiling: float, ops: Ops = FLOAT_OPS
) -> bool:
    return ops.either(committed + estimate > ceiling + _EPSILON, committed > ceiling + _EPSILON)


def headroom_ignoring_spend(ceiling: float, committed: float, reserved: float) -> float:
    return ceiling - reserved


def lease_ignoring_reservations(
    wanted: float,
    ceiling: float,
    committed: float,
    reserved: float,
    holders: int,
    max_share: float,
    minimum: float,
    ops: Ops = FLOAT_OPS,
) -> float:
    left = ceiling - committed
    return ops.min(wanted, ops.max(ops.min(left / holders, left * max_share), minimum))


def replay_run_ledger(found: Counterexample, excess_allowed: bool) -> bool:
    """Replay on a real RunLedger; True when committed passes a ceiling beyond the bound."""
    inputs = found.inputs
    ceilings = [inputs["ceiling_1"], inputs["ceiling_2"]]
    ledger = RunLedger(
        limits=[Limit(f"limit_{n}", "tokens", c, "run") for n, c in enumerate(ceilings)],
        committed=Amounts(tokens=inputs["committed_at_start"]),
    )
    excess = 0.0
    for step in found.steps:
        key = f"d{step.dispatch}"
        estimate, actual = inputs[f"estimate_{step.dispatch}"], inputs[f"actual_{step.dispatch}"]
        if step.action == "reserve":
            admitted = ledger.reserve(key, Amounts(tokens=estimate)) is None
            assert admitted == step.admitted
        else:
            excess += max(0.0, actual - estimate)
            ledger.commit(key, Amounts(tokens=actual))
        assert ledger.committed.tokens == pytest.approx(step.committed)
        bound = _EPSILON + (excess if excess_allowed else 0.0)
        if any(ledger.committed.tokens > c + bound for c in ceilings):
            return True
    return False


@pytest.mark.parametrize(
    ("name", "excess_allowed"),
    [("committed_within_ceiling", False), ("overage_bounded_by_excess", True)],
)
def test_a_fit_check_ignoring_reservations_is_caught(
    monkeypatch: pytest.MonkeyPatch, name: str, excess_allowed: bool
) -> None:
    monkeypatch.setattr(accounting, "refuses", refuses_ignoring_reservations)
    result = prove(by_name(name), K)
    assert result.outcome == "counterexample", result.describe()
    assert result.counterexample is not None
    assert replay_run_ledger(result.counterexample, excess_allowed)


def replay_carve(found: Counterexample) -> bool:
    """Replay on a real RunLedger with the carve's rules; True when a carve does not fit."""
    inputs = found.inputs
    ledger = RunLedger(limits=[Limit("allowance", "tokens", inputs[CEILING], "run")])
    for step in found.steps:
        key, estimate = f"d{step.dispatch}", inputs[f"estimate_{step.dispatch}"]
        if step.action == "commit":
            ledger.commit(key, Amounts(tokens=inputs[f"actual_{step.dispatch}"]))
            continue
        amount = estimate
        if step.action == "carve":
            remaining = ledger.remaining("tokens")
            assert remaining is not None
            left = remaining - estimate
            if carving.starved("tokens", left):
                continue
            amount = carving.share(carve_rule(ledger, inputs), "tokens", left, estimate)
            if ledger.check(Amounts(tokens=amount)) is not None:
                return True  # the carve passed the gate, yet asks more than is left
        ledger.reserve(key, Amounts(tokens=amount))
        if ledger.committed.tokens + ledger.reserved.tokens > inputs[CEILING] + _EPSILON:
            return True
    return False


def carve_rule(ledger: RunLedger, inputs: dict[str, float]) -> float | carving.FairShare:
    if not inputs["auto"]:
        return inputs["fraction"]
    running = sum(1 for key in ledger.reservations if inputs[f"child_{key[1:]}"])
    caps = {"tokens": inputs["cap"]} if inputs["capped"] else {}
    return carving.FairShare(running=running, caps=caps)


def test_a_carve_ignoring_the_parents_spend_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounting, "headroom", headroom_ignoring_spend)
    result = prove(by_name("carves_within_parent_ceiling"), K)
    assert result.outcome == "counterexample", result.describe()
    assert result.counterexample is not None
    assert replay_carve(result.counterexample)


def replay_book(found: Counterexample) -> bool:
    """Replay on a real LedgerBook; True when a lease whose minimum fits is refused."""
    inputs = found.inputs
    ledger = LedgerBook()
    limit = SharedLimit(
        name="tenant.max_tokens", scope="tenant:t", resource="tokens", ceiling=inputs[CEILING]
    )
    for step in found.steps:
        n = step.dispatch
        if step.action == "settle":
            ledger.settle(SettleRequest(key=f"d{n}", actual={"tokens": inputs[f"actual_{n}"]}), 0.0)
            continue
        counter = ledger.state.counters.get(limit.counter)
        left = inputs[CEILING] - (counter.committed + counter.reserved if counter else 0.0)
        lease = step.action == "lease"
        request = ReserveRequest(
            key=f"d{n}",
            run="run",
            amounts={"tokens": inputs[f"wanted_{n}"]},
            limits=[limit],
            minimum={"tokens": inputs[f"minimum_{n}"]} if lease else None,
            max_share=inputs["max_share"],
        )
        granted = ledger.reserve(request, 0.0).granted
        assert granted == step.admitted
        if lease and not granted and inputs[f"minimum_{n}"] <= left:
            return True
    return False


def test_a_lease_ignoring_reservations_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(book, "lease_grant", lease_ignoring_reservations)
    result = prove(by_name("lease_grants_within_left"), K)
    assert result.outcome == "counterexample", result.describe()
    assert result.counterexample is not None
    assert replay_book(result.counterexample)


def test_counterexamples_read_as_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accounting, "refuses", refuses_ignoring_reservations)
    result = prove(by_name("committed_within_ceiling"), 2)
    text = result.describe()
    assert "counterexample for k = 2" in text
    assert "reserve #1" in text and "commit #" in text


def test_the_prove_command_prints_every_property_and_exits_by_the_outcome(monkeypatch) -> None:
    from click.testing import CliRunner

    from temporal_governor.cli import main

    proved = CliRunner().invoke(main, ["prove", "--k", "2", "--json"])
    assert proved.exit_code == 0, proved.output
    results = json.loads(proved.output)
    assert [result["name"] for result in results] == [prop.name for prop in PROPERTIES]
    assert {result["outcome"] for result in results} == {"proved"}
    monkeypatch.setattr(accounting, "refuses", refuses_ignoring_reservations)
    broken = CliRunner().invoke(main, ["prove", "--k", "2"])
    assert broken.exit_code == 1
    assert "counterexample" in broken.output


def test_a_solver_timeout_is_unknown_and_not_proved() -> None:
    """L4: ``prove()`` gives up after its timeout: outcome unknown, the reason said."""
    result = prove(by_name("overage_bounded_by_excess"), 3, timeout_s=0.001)
    assert result.outcome == "unknown" and not result.proved
    assert result.reason == "timeout"
    assert "unknown for k = 3" in result.describe() and "timeout" in result.describe()


def test_the_prove_command_caps_k_and_reports_unknown_as_not_proved(monkeypatch) -> None:
    from click.testing import CliRunner

    from temporal_governor import cli

    too_many = CliRunner().invoke(cli.main, ["prove", "--k", "6"])
    assert too_many.exit_code == 2
    assert "6 is not in the range 1<=x<=5" in too_many.output
    slow = [prove(by_name("overage_bounded_by_excess"), 3, timeout_s=0.001)]
    monkeypatch.setattr(cli, "prove_accounting", lambda k: slow)
    result = CliRunner().invoke(cli.main, ["prove", "--k", "2"])
    assert result.exit_code == 1
    assert "unknown for k = 3" in result.output
