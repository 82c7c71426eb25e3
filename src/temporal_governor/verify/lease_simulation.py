"""A pure, fast simulation of the shared-budget lease protocol at fleet scale (issue #13).

Thousands of tenants' runs share one ledger: a fleet-wide token ceiling (scope ``global``,
limit ``global.max_tokens``) and one token ceiling per tenant (``tenant:<t>``,
``tenants.<t>.quotas.max_tokens``). The simulation drives the runtime's own pure core,
not a model of it: the ledger is a :class:`~temporal_governor.core.book.LedgerBook`
(``reserve`` with ``minimum``/``max_share``, i.e. a lease's fair-share grant; ``settle``;
``release_run``; ``extend``; ``expire``; continue-as-new through ``pack``), each run's
side is a :class:`~temporal_governor.core.leases.Holdings`, and every step is the one
``interceptors/_shared.py`` takes, in its order: ``issue``, ``wanted_of``, ``fitting``,
``retire`` (settled when drained), ``reservation`` (the lease request), ``take``,
``hold``; when a dispatch ends ``record``, ``dispatch_settlement``, ``lease_done``,
``forget``, ``close``; when a run ends ``end``, cut by ``chunks`` into ``release_run``
updates. ``split`` and ``signature_of`` are computed once per tenant (the runtime
computes them per dispatch from the run's cached limits: the same values).

**The fleet.** ``runs_at_once`` runs live at a time; a run that ends (all its dispatches
done, or halted by a refusal under ``on_refusal: terminate``) is replaced at once by a
run of a tenant drawn from a Zipf law (a few hot tenants, a long tail), until
``dispatches`` dispatches have been attempted. A run makes 1 to ``dispatches_per_run_max``
dispatches (log-uniform), 1 to ``parallel_max`` at a time; each reserves an estimate
uniform in ``estimate_min .. estimate_max`` and reports an actual uniform in
``actual_min_fraction .. 1`` times it, after an exponential duration. A halted run's
dispatches still running are cancelled: their outcome is never learnt, so they are
charged what they reserved, as at runtime. A tenant's ceiling is its expected demand times
a factor uniform in ``tenant_quota_min .. tenant_quota_max`` (so some tenants run out);
the global ceiling is ``global_share`` times what the tenants' ceilings let them spend
(so the fleet runs out near the end). Time is simulated with an event queue (seeded,
deterministic): leases age past half the TTL and are renewed, live runs extend their
reservations every half TTL (``extend``), and the ledger continues as new every
``continue_as_new_after`` updates, after expiring what is due (nothing: every run renews).

**What is checked** (:meth:`SimulationResult.problems`, :meth:`SimulationResult.misses`):

- *The ceiling is never passed*: after every ledger step that changes amounts, for the
  global scope and the run's tenant, ``committed + reserved <= ceiling``; at the end, for
  every scope; and every lease, when it is settled, used no more than the ledger reserved
  for it (what runs spend locally stays inside the reservations the ledger counts).
  Floats are compared with a slack of 1e-6 tokens plus 1e-9 of the amount (:func:`slack`):
  grants are fair shares, not whole numbers.
- *Budget refused early because it sat in other holders' leases* (**stranded**): at each
  refusal of a dispatch by a scope, the sum, over the open leases of every *other* run
  on that scope (current and retired ones), of ``granted - used - held``: budget the
  ledger counts as reserved that no finished dispatch of theirs used and no running one
  holds. Reported as the largest fraction of the refusing scope's ceiling over all
  refusals, for the global scope and over all tenant scopes; issue #13's goal is under
  1 % (:data:`STRANDED_GOAL`). Also reported: *early* refusals (the dispatch would have
  fitted in ``ceiling - committed - reserved`` plus the idle budget of every lease, its
  own run's included), and what the global scope has left uncommitted at the end beyond
  one dispatch's worth (``ceiling - committed - estimate_max``), as a fraction of its
  ceiling: budget the fleet was refused and never spent.
- *Exactness*: every scope's committed amount equals the sum of its dispatches' charges
  (the reported actual, or the estimate of a dispatch cancelled before it reported), the
  ledger's totals keep ``committed + released == granted``, and nothing is open at the
  end: no reservation in the ledger, no lease in a run, no counter reserved, nothing
  expired.

Run it::

    .venv/bin/python bench/lease_simulation.py [--tenants 10000] [--dispatches 1000000]
        [--runs-at-once 100] [--seed 13] [... every field of Scenario]

It prints the figures and exits 1 when an invariant broke or the goal was missed.
"""

from __future__ import annotations

import argparse
import sys
import time

from pydantic import ValidationError

from ..core.book import LedgerBook
from ._lease_figures import STRANDED_GOAL, Scenario, ScopeFigures, SimulationResult, slack
from ._lease_fleet import Fleet


def simulate(
    scenario: Scenario | None = None, book_type: type[LedgerBook] = LedgerBook
) -> SimulationResult:
    """Simulate ``scenario`` (issue #13's fleet by default).

    Deterministic: the same scenario, seed included, gives the same result.

    Args:
        scenario: What to simulate.
        book_type: The ledger's book; a subclass only to show that the checks catch a
            ledger that breaks the rules.
    """
    return Fleet(scenario or Scenario(), book_type).run()


def main(argv: list[str] | None = None) -> int:
    """Run the simulation from the command line; print the figures.

    Returns:
        0 when every invariant held and the goal was met, 1 otherwise, 2 on bad input.
    """
    parser = argparse.ArgumentParser(
        description="Simulate the shared-budget lease protocol (issue #13)."
    )
    for name, info in Scenario.model_fields.items():
        kind = type(info.default)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=info.default)
    args = parser.parse_args(argv)
    try:
        scenario = Scenario.model_validate(vars(args))
    except ValidationError as error:
        print(f"bad scenario: {error}", file=sys.stderr)
        return 2
    wall, cpu = time.perf_counter(), time.process_time()
    result = simulate(scenario)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print("\n".join(result.lines()))
    print(f"time: {wall:.1f} s wall, {cpu:.1f} s CPU")
    return 1 if result.problems() or result.misses() else 0


__all__ = [
    "STRANDED_GOAL",
    "Scenario",
    "ScopeFigures",
    "SimulationResult",
    "main",
    "simulate",
    "slack",
]

if __name__ == "__main__":
    sys.exit(main())
