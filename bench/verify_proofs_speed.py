"""Solver time of the bounded accounting proofs, per property, for k = 2 .. 6 dispatches.

Each property is checked over every interleaving of k dispatches (2k steps) with
temporal_governor.verify._proofs; a property that takes longer than --budget seconds at
some k is not tried at larger k.

    .venv/bin/python bench/verify_proofs_speed.py [--k-min 2] [--k-max 6] [--budget 120]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from temporal_governor.verify._proofs import PROPERTIES, prove


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k-min", type=int, default=2)
    parser.add_argument("--k-max", type=int, default=6)
    parser.add_argument("--budget", type=float, default=120.0)
    args = parser.parse_args()
    ks = range(args.k_min, args.k_max + 1)
    print(f"{'property':32}" + "".join(f"{f'k={k}':>10}" for k in ks))
    for prop in PROPERTIES:
        print(f"{prop.name:32}", end="", flush=True)
        skip = False
        for k in ks:
            if skip:
                print(f"{'-':>10}", end="")
                continue
            result = prove(prop, k)
            mark = "" if result.proved else f" {result.outcome}"
            skip = result.seconds > args.budget
            cell = f"{result.seconds:.2f}s{mark}{'!' if skip else ''}"
            print(f"{cell:>10}", end="", flush=True)
        print()
    print("(! over the budget: larger k not tried)")


if __name__ == "__main__":
    main()
