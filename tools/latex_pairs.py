"""How often a generated LaTeX sample's \\begin{...}/\\end{...} pairs match, against the same
count on real text.

    python tools/latex_pairs.py runs/latex_lstm --length 20000 [--reference FILE.tex]

An \\end matches when it closes the innermost open \\begin with the same environment name.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqgraph import api  # noqa: E402

PAIR = re.compile(r"\\(begin|end)\{([^}\n]{1,40})\}")


def pair_stats(text: str) -> dict:
    stack, matched, wrong, stray = [], 0, 0, 0
    for kind, name in PAIR.findall(text):
        if kind == "begin":
            stack.append(name)
        elif not stack:
            stray += 1
        elif stack[-1] == name:
            stack.pop()
            matched += 1
        else:
            stack.pop()
            wrong += 1
    ends = matched + wrong + stray
    return {
        "begins": matched + wrong + len(stack),
        "ends": ends,
        "matched": matched,
        "match_rate": matched / ends if ends else float("nan"),
        "unclosed": len(stack),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--length", type=int, default=20000)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--reference", help="real LaTeX to count the same way")
    args = parser.parse_args()
    text = api.sample(
        args.run_dir, length=args.length, temperature=args.temperature, prime="\\begin{"
    )
    print("sample:", pair_stats(text))
    if args.reference:
        real = Path(args.reference).read_text(encoding="utf-8")[-args.length :]
        print("reference:", pair_stats(real))


if __name__ == "__main__":
    main()
