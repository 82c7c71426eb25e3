"""The lease protocol at fleet scale, simulated on the pure core (issue #13, item 7).

10,000 tenants, 1,000,000 dispatches with random actuals within their estimates, a
per-tenant and a global token ceiling, runs taking and settling leases as they start and
end. Prints whether a ceiling was ever passed, the budget stranded in other holders'
leases at a refusal (goal: under 1 % of the ceiling), exactness, and the time it took.
See ``temporal_governor.verify.lease_simulation`` for the model and the definitions.

    .venv/bin/python bench/lease_simulation.py [--tenants 10000] [--dispatches 1000000]
        [--runs-at-once 100] [--seed 13] [... every field of Scenario]
"""

from __future__ import annotations

import sys

from temporal_governor.verify.lease_simulation import main

if __name__ == "__main__":
    sys.exit(main())
