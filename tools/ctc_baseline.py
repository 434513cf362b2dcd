"""The constant-guess floor beside a CTC phoneme model: predict, for every recording, the one
training label sequence with the fewest edits to all training targets, and score it on the
same split (PER, digit accuracy) as `seqgraph eval RUN --split test` scores the model.

    python tools/ctc_baseline.py specs/phonemes_ctc.yaml --data ../shared/data/fsdd_digits
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqgraph.train.ctc import baseline  # noqa: E402
from seqgraph.train.loop import prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--data")
    parser.add_argument("--split", choices=["valid", "test"], default="test")
    args = parser.parse_args()
    _, dataset, _ = prepare(args.spec, args.data)
    targets = dataset.test_y if args.split == "test" else dataset.valid_y
    guess, scores = baseline(dataset.y, targets)
    words = " ".join(dataset.labels[i] for i in guess)
    print(json.dumps({"split": args.split, "guess": words, **scores}))


if __name__ == "__main__":
    main()
