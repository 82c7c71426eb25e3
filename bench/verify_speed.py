"""How long `temporal-governor verify` takes on each shipped policy (solver included).

Run: .venv/bin/python bench/verify_speed.py [--repeat N] [policy.yaml ...]
Prints, per policy, the median and the slowest of N runs of verify_policy (after loading),
the number of solver queries and findings. The first run of the process also pays for
importing z3; it is timed apart.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from temporal_governor.policy import Policy
from temporal_governor.verify import verify_policy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    paths = args.policies or sorted(EXAMPLES.glob("*.yaml"))
    started = time.perf_counter()
    import z3  # noqa: F401  (timed apart: the first verification pays for it)

    print(f"import z3: {time.perf_counter() - started:.3f} s")
    print(f"{'policy':40} {'median':>9} {'max':>9} {'queries':>8} {'findings':>9}")
    for path in paths:
        policy = Policy.from_yaml(path)
        times = []
        for _ in range(args.repeat):
            report = verify_policy(policy)
            times.append(report.seconds)
        print(
            f"{path.name:40} {statistics.median(times) * 1000:7.1f}ms "
            f"{max(times) * 1000:7.1f}ms {report.solver_queries:8} {len(report.findings):9}"
        )


if __name__ == "__main__":
    main()
