"""The README's speed table from `tools/bench.py --json` records (one or more files).

    python tools/bench_table.py FILE.json [FILE.json ...]

Prints one Markdown row per config: for each cell, the median ms per step of seqgraph /
torch / jax / hand NumPy, and the ratio seqgraph / fastest peer (bold when <= 1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

IMPLS = ("seqgraph", "torch", "jax", "numpy_hand")
CELLS = ("rnn", "gru", "lstm")
CONFIGS = ("tiny", "small", "medium", "large", "long")


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def table(records: list[dict]) -> str:
    ms = {(r["config"], r["cell"], r["impl"]): r["ms_median"] for r in records}
    names = [c.upper() for c in CELLS]
    head = "| config | " + " | ".join(f"{n}: seqgraph / torch / jax / hand | ratio" for n in names)
    lines = [head + " |", "|---" * (1 + 2 * len(CELLS)) + "|"]
    for config in CONFIGS:
        if not any(key[0] == config for key in ms):
            continue
        cells = []
        for cell in CELLS:
            times = [ms.get((config, cell, impl)) for impl in IMPLS]
            peers = [t for t in times[1:] if t is not None]
            ratio = times[0] / min(peers) if times[0] and peers else None
            text = " / ".join("–" if t is None else _ms(t) for t in times)
            mark = "" if ratio is None else f"{ratio:.2f}"
            cells += [text, f"**{mark}**" if ratio is not None and ratio <= 1 else mark]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    records = [r for name in argv for r in json.loads(Path(name).read_text())]
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
