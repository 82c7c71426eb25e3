"""The lease protocol simulated at fleet scale on the pure core (issue #13, item 7).

The suite runs issue #13's full fleet (10,000 tenants, 1,000,000 dispatches: about 30 s),
as ``bench/lease_simulation.py`` does with a longer TTL, plus small runs that show each
check fails when the ledger breaks the rule it checks.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from temporal_governor.core.book import (
    ExtendRequest,
    LedgerBook,
    ReleaseRunRequest,
    ReserveRequest,
    ReserveResult,
    SettleRequest,
    SettleResult,
)
from temporal_governor.verify.lease_simulation import (
    STRANDED_GOAL,
    Scenario,
    main,
    simulate,
    slack,
)

FLEET = Scenario(
    tenants=10_000,
    dispatches=1_000_000,
    reservation_ttl=120.0,  # some runs outlive half of it: leases age, runs renew
    continue_as_new_after=5_000,
)
"""Issue #13's fleet: 10,000 tenants, 1,000,000 dispatches."""

SMALL = Scenario(tenants=40, dispatches=6_000, runs_at_once=20, continue_as_new_after=500)
"""A fleet small enough to run many times."""


def test_the_fleet_never_passes_a_ceiling_strands_under_one_percent_and_is_exact() -> None:
    result = simulate(FLEET)
    print("\n".join(result.lines()))
    assert result.problems() == []
    assert result.misses() == []
    # what the assertions above stand on: the fleet ran into both kinds of ceiling ...
    glob, tenants = result.global_figures, result.tenant_figures
    assert glob.refusals > 100 and glob.scopes_refusing == 1
    assert tenants.refusals > 100 and tenants.scopes_refusing > 10
    assert glob.early > 0  # ... and leases did hold budget back at some refusals
    assert 0 < glob.max_stranded < STRANDED_GOAL
    assert 0 < tenants.max_stranded < STRANDED_GOAL
    assert glob.max_stranded_holders > 10
    # every path of the protocol was taken
    assert result.leases > result.runs
    assert result.leases_aged > 0
    assert result.dispatches_cancelled > 0
    assert result.runs_halted == glob.refusals + tenants.refusals
    assert result.continued_as_new == result.ledger_updates // FLEET.continue_as_new_after
    assert result.continued_as_new >= 3
    assert result.checks > result.ledger_updates
    # every dispatch attempted was refused, run to its end or cancelled by a halt
    attempted = (
        result.dispatches_run + glob.refusals + tenants.refusals + result.dispatches_cancelled
    )
    assert attempted == FLEET.dispatches
    # the fleet spent its global budget, and exactly what it was charged
    assert result.committed <= result.global_ceiling + slack(result.global_ceiling)
    assert result.committed > 0.99 * result.global_ceiling
    assert abs(result.committed - result.charged) <= slack(result.committed)
    assert result.open_at_end == 0 and result.expired == 0


def test_the_same_seed_gives_the_same_figures_and_another_seed_others() -> None:
    first, again = simulate(SMALL), simulate(SMALL)
    other = simulate(SMALL.model_copy(update={"seed": SMALL.seed + 1}))
    assert first.lines() == again.lines()
    assert first.committed == again.committed
    assert other.committed != first.committed
    assert first.problems() == [] and other.problems() == []


class _Overgranting(LedgerBook):
    """A broken ledger: it reserves as if every ceiling were twice as high."""

    def reserve(self, req: ReserveRequest, now: float) -> ReserveResult:
        doubled = [limit.model_copy(update={"ceiling": 2 * limit.ceiling}) for limit in req.limits]
        return super().reserve(req.model_copy(update={"limits": doubled}), now)


class _Overstating(LedgerBook):
    """A broken ledger: it tells a lease it was granted twice what it reserved."""

    def reserve(self, req: ReserveRequest, now: float) -> ReserveResult:
        result = super().reserve(req, now)
        doubled = {resource: 2 * value for resource, value in result.amounts.items()}
        return result.model_copy(update={"amounts": doubled})


class _Undercommitting(LedgerBook):
    """A broken ledger: it commits 1 % less than what was used."""

    def settle(self, req: SettleRequest, now: float) -> SettleResult:
        actual = {resource: 0.99 * value for resource, value in req.actual.items()}
        return super().settle(req.model_copy(update={"actual": actual}), now)


class _Forgetful(LedgerBook):
    """A broken ledger: ``release_run`` settles and releases nothing."""

    def release_run(self, req: ReleaseRunRequest, now: float) -> int:
        return 0


class _NotExtending(LedgerBook):
    """A broken ledger: ``extend`` does nothing, so a long run's leases expire."""

    def extend(self, req: ExtendRequest, now: float) -> int:
        return 0


def test_a_ledger_that_grants_past_a_ceiling_is_caught() -> None:
    result = simulate(SMALL, book_type=_Overgranting)
    assert result.ceilings_passed > 0
    assert result.max_excess > 0
    assert any("ceiling passed" in problem for problem in result.problems())
    assert any(line.startswith("FAILED") for line in result.lines())


def test_a_ledger_that_overstates_a_grant_is_caught() -> None:
    result = simulate(SMALL, book_type=_Overstating)
    assert result.leases_overdrawn > 0
    assert any("used more than the ledger reserved" in p for p in result.problems())


def test_a_ledger_that_commits_less_than_was_used_is_caught() -> None:
    result = simulate(SMALL, book_type=_Undercommitting)
    assert result.inexact_scopes > 0
    assert result.committed < result.charged
    assert any("committed other than their charges" in p for p in result.problems())


def test_a_ledger_that_keeps_what_an_ended_run_held_is_caught() -> None:
    result = simulate(SMALL, book_type=_Forgetful)
    assert result.open_at_end > 0
    assert any("left open" in problem for problem in result.problems())


def test_a_ledger_that_lets_a_live_runs_leases_expire_is_caught() -> None:
    # dispatches of 10 s on average hold leases past a TTL of 20 s
    short = SMALL.model_copy(
        update={
            "dispatches": 2_000,
            "reservation_ttl": 20.0,
            "duration_mean_s": 10.0,
            "continue_as_new_after": 200,
        }
    )
    assert simulate(short).problems() == []  # live runs renew every half TTL
    result = simulate(short, book_type=_NotExtending)
    assert result.expired > 0
    assert any("expired" in problem for problem in result.problems())


def test_greedy_leases_strand_budget_and_miss_the_goal() -> None:
    # one lease may take everything that is left: other runs are refused while it idles
    greedy = SMALL.model_copy(update={"lease_dispatches": 1_000, "lease_max_share": 1.0})
    result = simulate(greedy)
    assert result.problems() == []  # still safe and exact: leases are reservations
    assert result.misses() != []
    assert max(result.global_figures.max_stranded, result.tenant_figures.max_stranded) > (
        STRANDED_GOAL
    )
    assert any(line.startswith("GOAL MISSED") for line in result.lines())


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tenants": 0}, "tenants"),
        ({"estimate_min": 500.0, "estimate_max": 100.0}, "estimate_max"),
        ({"tenant_quota_min": 2.0, "tenant_quota_max": 1.0}, "tenant_quota_max"),
        ({"lease_max_share": 1.5}, "lease_max_share"),
        ({"runs": 3}, "runs"),
    ],
)
def test_a_bad_scenario_is_refused_naming_the_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Scenario.model_validate(fields)


def test_the_script_refuses_a_bad_scenario_and_prints_the_figures_of_a_good_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--tenants", "0"]) == 2
    assert "tenants" in capsys.readouterr().err
    assert main(["--tenants", "40", "--dispatches", "3000", "--runs-at-once", "10"]) == 0
    out = capsys.readouterr().out
    assert "ceiling never passed" in out and "stranded in other holders' leases" in out
    assert out.splitlines()[-2].startswith("OK")
