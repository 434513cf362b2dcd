"""Parallel text for digit reversal (`specs/reverse_attention.yaml`): `digits<TAB>reversed` a
line, lengths drawn uniformly from [--min, --max], deterministic for --seed.

    python tools/reverse_digits.py --min 5 --max 40 --count 20000 > reverse_digits.tsv
"""

from __future__ import annotations

import argparse

import numpy as np


def pairs(low: int, high: int, count: int, seed: int) -> list[str]:
    """`count` lines `digits<TAB>digits reversed`, each of low..high digits."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(count):
        digits = "".join(map(str, rng.integers(0, 10, size=int(rng.integers(low, high + 1)))))
        lines.append(f"{digits}\t{digits[::-1]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min", type=int, default=5, help="fewest digits (5)")
    parser.add_argument("--max", type=int, default=40, help="most digits (40)")
    parser.add_argument("--count", type=int, default=20000, help="lines (20000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.min <= args.max:
        parser.error("need 1 <= --min <= --max")
    print("\n".join(pairs(args.min, args.max, args.count, args.seed)))


if __name__ == "__main__":
    main()
