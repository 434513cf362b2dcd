"""Exact match of a `source: dates` run on its held-out test dates, greedy and beam K, overall
and per human format, as a Markdown table and a JSON (`specs/dates_attention.yaml`):

    python tools/dates_table.py runs/dates --beam 5 --out runs/dates/dates_table

The test pairs are regenerated from the run's own data settings and seed (the source is
deterministic), so they are exactly `seqgraph eval RUN --split test`'s: days never seen in
training. A prediction is right when the decoded characters, cut at `<eos>`, are the ISO date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import seqgraph  # noqa: E402
from seqgraph.apps import dates  # noqa: E402
from seqgraph.errors import SeqgraphError  # noqa: E402

LIMIT = 12  # decoder steps: 10 ISO characters and <eos>, with one to spare


def exact_by_format(test: list, outputs: dict[str, list]) -> dict[str, dict]:
    """{format or "all": {"pairs": n, decoding: exact match}} over the test triples."""
    table: dict[str, dict] = {}
    for name in ["all", *dates.FORMATS]:
        chosen = [i for i, row in enumerate(test) if name in ("all", row[2])]
        if not chosen:
            continue
        row = {"pairs": len(chosen)}
        for decoding, output in outputs.items():
            right = sum("".join(output[i]) == test[i][1] for i in chosen)
            row[decoding] = right / len(chosen)
        table[name] = row
    return table


def markdown(table: dict[str, dict], example: dict[str, str]) -> str:
    """A row per format (with how it writes 2026-11-26), exact match per decoding."""
    decodings = [key for key in next(iter(table.values())) if key != "pairs"]
    lines = [
        "| format | e.g. | test pairs | " + " | ".join(decodings) + " |",
        "|---|---|---|" + "---|" * len(decodings),
    ]
    for name, row in table.items():
        cells = [f"`{name}`", example.get(name, ""), str(row["pairs"])]
        cells += [f"{row[key]:.3f}" for key in decodings]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder of a `source: dates` spec")
    parser.add_argument("--beam", type=int, default=5, help="beam width beside greedy (5)")
    parser.add_argument("--out", type=Path, help="OUT.md and OUT.json (default RUN/dates_table)")
    args = parser.parse_args(argv)
    predictor = seqgraph.load(args.run)
    spec = predictor.model.spec
    test = dates.pairs(dict(spec.data), spec.seed)[2]
    sources = [row[0] for row in test]
    outputs = {"greedy": [r["output"] for r in predictor.predict(sources, length=LIMIT)]}
    if args.beam > 1:
        found = predictor.predict(sources, length=LIMIT, beam=args.beam)
        outputs[f"beam {args.beam}"] = [r["output"] for r in found]
    table = exact_by_format(test, outputs)
    day = dt.date(2026, 11, 26)
    text = markdown(table, {name: write(day) for name, write in dates.FORMATS.items()})
    out = args.out or args.run / "dates_table"
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(table, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SeqgraphError as error:  # a bad run folder or file: one line, as the CLI says it
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
